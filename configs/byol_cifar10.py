"""BYOL on CIFAR-10: ResNet-18 with the CIFAR stem, global batch 512, LARS, 1000 epochs.

    ssl-jax pretrain --config configs/byol_cifar10.py --workdir runs/byol_cifar10

Hyper-parameters follow solo-learn's BYOL CIFAR recipe: LARS lr 1.0 x batch/256, weight decay
1e-5, projector and predictor 4096 -> 256, tau 0.99 -> 1, 10 warmup epochs. Needs CIFAR-10
prepared for TFDS in the data dir.
"""

from ssl_jax.config import base_config
from ssl_jax.recipe_blocks import cifar10

VARIANTS: dict[str, str] = {}  # none


def get_config(arg: str | None = None):
    c = cifar10(base_config(), arg, epochs=1000)
    c.method = "byol"
    c.augment = "byol"
    c.model.projector_hidden, c.model.projector_dim = 4096, 256
    c.model.predictor_hidden = 4096
    c.byol.base_tau = 0.99
    c.base_lr, c.weight_decay = 1.0, 1e-5
    return c
