"""SimCLR on CIFAR-10: ResNet-18 with the CIFAR stem, global batch 512, LARS, 1000 epochs.

    ssl-jax pretrain --config configs/simclr_cifar10.py --workdir runs/simclr_cifar10

Hyper-parameters follow solo-learn's SimCLR CIFAR recipe (da Costa et al. 2022): LARS lr 0.4 x
batch/256, weight decay 1e-5, temperature 0.2, projector 2048 -> 256, 10 warmup epochs. Needs
CIFAR-10 prepared for TFDS in the data dir (`tfds build cifar10` where there is internet).
"""

from ssl_jax.config import base_config
from ssl_jax.recipe_blocks import cifar10

VARIANTS: dict[str, str] = {}  # none


def get_config(arg: str | None = None):
    c = cifar10(base_config(), arg, epochs=1000)
    c.method = "simclr"
    c.augment = "simclr_cifar"
    c.model.projector_hidden, c.model.projector_dim = 2048, 256
    c.simclr.temperature = 0.2
    c.base_lr, c.weight_decay = 0.4, 1e-5
    return c
