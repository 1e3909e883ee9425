"""MoCo v3 on CIFAR-10: ResNet-18 with the CIFAR stem, global batch 256, LARS, 1000 epochs.

    ssl-jax pretrain --config configs/moco_v3_cifar10.py --workdir runs/moco_v3_cifar10

solo-learn's CIFAR recipe: LARS lr 0.3 x B/256, weight decay 1e-5, 10 warm-up epochs,
temperature 0.2, momentum 0.99 -> 1, BN-ended projector 4096 x 3 -> 256 and predictor 4096 ->
256; BYOL's asymmetric views. Needs CIFAR-10 prepared for TFDS in the data dir.
"""

from ssl_jax.config import base_config
from ssl_jax.recipe_blocks import cifar10

VARIANTS: dict[str, str] = {}  # none


def get_config(arg: str | None = None):
    c = cifar10(base_config(), arg, epochs=1000, batch_size=256)
    c.method = "moco_v3"
    c.augment = "byol"
    c.moco_v3.temperature, c.moco_v3.base_momentum = 0.2, 0.99
    c.model.projector_hidden, c.model.projector_dim, c.model.projector_layers = 4096, 256, 3
    c.model.projector_last_bn = True
    c.model.predictor_hidden = 4096
    c.base_lr, c.weight_decay = 0.3, 1e-5
    return c
