"""SupCon on CIFAR-10: ResNet-18 with the CIFAR stem, global batch 1024, SGD, 1000 epochs.

    ssl-jax pretrain --config configs/supcon_cifar10.py --workdir runs/supcon_cifar10

The official code's CIFAR command (Khosla et al. 2020, github.com/HobbitLong/SupContrast): SGD
momentum 0.9, lr 0.5 at batch 1024 (0.125 x B/256), weight decay 1e-4, cosine schedule with a
10-epoch warm-up, temperature 0.1, projector 2048 -> 128 (their ResNet-50 is a ResNet-18 here).
Trains on the labels. Needs CIFAR-10 prepared for TFDS in the data dir.
"""

from ssl_jax.config import base_config
from ssl_jax.recipe_blocks import cifar10

VARIANTS: dict[str, str] = {}  # none


def get_config(arg: str | None = None):
    c = cifar10(base_config(), arg, epochs=1000, batch_size=1024)
    c.method = "supcon"
    c.augment = "simclr_cifar"
    c.model.projector_hidden, c.model.projector_dim = 2048, 128
    c.supcon.temperature = 0.1
    c.optimizer, c.base_lr, c.momentum = "sgd", 0.125, 0.9
    c.weight_decay = 1e-4
    return c
