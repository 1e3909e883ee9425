"""VICReg on ImageNet: ResNet-50, global batch 2048, LARS, 1000 epochs (Bardes et al. 2022).

    ssl-jax pretrain --config configs/vicreg_imagenet.py --workdir runs/vicreg_imagenet

The paper's recipe (sec. 4.1, appendix C): LARS, base lr 0.2 x B/256, weight decay 1e-6, 10
warm-up epochs, a 3-layer 8192-wide expander, coefficients 25 / 25 / 1; BYOL's views; bfloat16
compute. Needs imagenet2012 prepared for TFDS in the data dir.
"""

from ssl_jax.config import base_config
from ssl_jax.recipe_blocks import imagenet

VARIANTS: dict[str, str] = {}  # none


def get_config(arg: str | None = None):
    c = imagenet(base_config(), arg, epochs=1000, batch_size=2048)
    c.method = "vicreg"
    c.augment = "byol"
    c.model.projector_hidden, c.model.projector_dim, c.model.projector_layers = 8192, 8192, 3
    c.base_lr, c.weight_decay = 0.2, 1e-6
    return c
