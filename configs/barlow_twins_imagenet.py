"""Barlow Twins on ImageNet: ResNet-50, global batch 2048, LARS, 1000 epochs (Zbontar et al.
2021).

    ssl-jax pretrain --config configs/barlow_twins_imagenet.py --workdir runs/barlow_imagenet

The paper's recipe (sec. 4): LARS, lr 0.2 x B/256 for the weights and 0.0048 x B/256 for the
biases and BatchNorm parameters (``config.barlow_twins.bias_lr_scale`` = 0.0048 / 0.2), weight
decay 1.5e-6, 10 warm-up epochs, a 3-layer 8192-wide projector, lambda 0.0051; BYOL's asymmetric
views; bfloat16 compute. Needs imagenet2012 for TFDS.
"""

from ssl_jax.config import base_config
from ssl_jax.recipe_blocks import imagenet

VARIANTS: dict[str, str] = {}  # none


def get_config(arg: str | None = None):
    c = imagenet(base_config(), arg, epochs=1000, batch_size=2048)
    c.method = "barlow_twins"
    c.augment = "byol"
    c.barlow_twins.lambda_ = 0.0051
    c.barlow_twins.bias_lr_scale = 0.0048 / 0.2
    c.model.projector_hidden, c.model.projector_dim, c.model.projector_layers = 8192, 8192, 3
    c.base_lr, c.weight_decay = 0.2, 1.5e-6
    return c
