"""BYOL on ImageNet: ResNet-50, global batch 4096, LARS, 300 epochs (Grill et al. 2020).

    ssl-jax pretrain --config configs/byol_imagenet.py --workdir runs/byol_imagenet

The paper's recipe (appendix C): LARS lr 0.2 x batch/256 = 3.2, weight decay 1.5e-6, tau
0.996 -> 1, 10 warmup epochs, projector and predictor 4096 -> 256, bfloat16 compute. The host
resizes and centre-crops images to 256 px; the random resized crop to 224 happens on the device.
Needs imagenet2012 prepared for TFDS (manual download) in the data dir.
"""

from ssl_jax.config import base_config
from ssl_jax.recipe_blocks import imagenet

VARIANTS: dict[str, str] = {}  # none


def get_config(arg: str | None = None):
    c = imagenet(base_config(), arg, epochs=300)
    c.method = "byol"
    c.augment = "byol"
    c.model.projector_hidden, c.model.projector_dim = 4096, 256
    c.model.predictor_hidden = 4096
    c.byol.base_tau = 0.996
    c.base_lr, c.weight_decay = 0.2, 1.5e-6
    return c
