"""SupCon on ImageNet: ResNet-50, global batch 4096, LARS, 100 epochs.

    ssl-jax pretrain --config configs/supcon_imagenet.py --workdir runs/supcon_imagenet

Khosla et al. 2020's loss settings (temperature 0.1, projector 2048 -> 128) on SimCLR's ImageNet
optimizer (LARS, lr 0.3 x B/256, weight decay 1e-6, 10 warm-up epochs) and views; the paper's
own runs are longer, with larger batches and AutoAugment views, which are not reproduced here.
Trains on the labels. bfloat16 compute. Needs imagenet2012 prepared for TFDS in the data dir.
"""

from ssl_jax.config import base_config
from ssl_jax.recipe_blocks import imagenet

VARIANTS: dict[str, str] = {}  # none


def get_config(arg: str | None = None):
    c = imagenet(base_config(), arg, epochs=100)
    c.method = "supcon"
    c.augment = "simclr_imagenet"
    c.model.projector_hidden, c.model.projector_dim = 2048, 128
    c.supcon.temperature = 0.1
    c.base_lr, c.weight_decay = 0.3, 1e-6
    return c
