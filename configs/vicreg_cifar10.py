"""VICReg on CIFAR-10: ResNet-18 with the CIFAR stem, global batch 256, LARS, 1000 epochs.

    ssl-jax pretrain --config configs/vicreg_cifar10.py --workdir runs/vicreg_cifar10

solo-learn's CIFAR recipe: LARS lr 0.3 x B/256, weight decay 1e-4, 10 warm-up epochs, expander
2048 x 3, coefficients 25 / 25 / 1. Needs CIFAR-10 prepared for TFDS in the data dir.
"""

from ssl_jax.config import base_config
from ssl_jax.recipe_blocks import cifar10

VARIANTS: dict[str, str] = {}  # none


def get_config(arg: str | None = None):
    c = cifar10(base_config(), arg, epochs=1000, batch_size=256)
    c.method = "vicreg"
    c.augment = "byol"
    c.model.projector_hidden, c.model.projector_dim, c.model.projector_layers = 2048, 2048, 3
    c.base_lr, c.weight_decay = 0.3, 1e-4
    return c
