"""MoCo v3 on ImageNet: ResNet-50, global batch 4096, LARS, 100 epochs (Chen, Xie & He 2021).

    ssl-jax pretrain --config configs/moco_v3_imagenet.py --workdir runs/moco_v3_imagenet

The paper's ResNet-50 recipe (its official repository's 100-epoch command): LARS, lr 0.6 x
B/256, weight decay 1e-6, 10 warm-up epochs, temperature 1.0, momentum 0.99 -> 1, BN-ended
projector 4096 x 3 -> 256 and predictor 4096 -> 256; BYOL's asymmetric views; bfloat16 compute.
Needs imagenet2012 prepared for TFDS in the data dir. (The ViT recipe comes with the ViT encoder.)
"""

from ssl_jax.config import base_config
from ssl_jax.recipe_blocks import imagenet

VARIANTS: dict[str, str] = {}  # none


def get_config(arg: str | None = None):
    c = imagenet(base_config(), arg, epochs=100, batch_size=4096)
    c.method = "moco_v3"
    c.augment = "byol"
    c.moco_v3.temperature, c.moco_v3.base_momentum = 1.0, 0.99
    c.model.projector_hidden, c.model.projector_dim, c.model.projector_layers = 4096, 256, 3
    c.model.projector_last_bn = True
    c.model.predictor_hidden = 4096
    c.base_lr, c.weight_decay = 0.6, 1e-6
    return c
