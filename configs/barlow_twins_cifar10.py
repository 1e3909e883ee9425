"""Barlow Twins on CIFAR-10: ResNet-18 with the CIFAR stem, global batch 256, LARS, 1000 epochs.

    ssl-jax pretrain --config configs/barlow_twins_cifar10.py --workdir runs/barlow_cifar10

solo-learn's CIFAR recipe: LARS lr 0.3 x B/256, weight decay 1e-4, 10 warm-up epochs, projector
2048 x 3, lambda 0.0051, loss scaled by 0.1. Needs CIFAR-10 prepared for TFDS in the data dir.
"""

from ssl_jax.config import base_config
from ssl_jax.recipe_blocks import cifar10

VARIANTS: dict[str, str] = {}  # none


def get_config(arg: str | None = None):
    c = cifar10(base_config(), arg, epochs=1000, batch_size=256)
    c.method = "barlow_twins"
    c.augment = "byol"
    c.barlow_twins.lambda_, c.barlow_twins.scale_loss = 0.0051, 0.1
    c.model.projector_hidden, c.model.projector_dim, c.model.projector_layers = 2048, 2048, 3
    c.base_lr, c.weight_decay = 0.3, 1e-4
    return c
