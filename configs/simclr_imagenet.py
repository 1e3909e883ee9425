"""SimCLR on ImageNet: ResNet-50, global batch 4096, LARS, 100 epochs (Chen et al. 2020).

    ssl-jax pretrain --config configs/simclr_imagenet.py --workdir runs/simclr_imagenet

The paper's recipe (appendix B.1): LARS lr 0.3 x batch/256 = 4.8, weight decay 1e-6,
temperature 0.1, 10 warmup epochs, projector 2048 -> 128, bfloat16 compute. The host resizes
and centre-crops images to 256 px; the random resized crop to 224 happens on the device.
Needs imagenet2012 prepared for TFDS (manual download) in the data dir.
"""

from ssl_jax.config import base_config
from ssl_jax.recipe_blocks import imagenet

VARIANTS: dict[str, str] = {}  # none


def get_config(arg: str | None = None):
    c = imagenet(base_config(), arg, epochs=100)
    c.method = "simclr"
    c.augment = "simclr_imagenet"
    c.model.projector_hidden, c.model.projector_dim = 2048, 128
    c.simclr.temperature = 0.1
    c.base_lr, c.weight_decay = 0.3, 1e-6
    return c
