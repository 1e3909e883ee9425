"""VICReg on Fashion-MNIST, sized for a 2-core CPU (the demo's encoder, steps and views).

    ssl-jax pretrain --config configs/vicreg_fashion_mnist.py --workdir runs/vicreg_fmnist

solo-learn's CIFAR recipe scaled down: LARS, lr 0.3 x B/256, weight decay 1e-4, coefficients
25 / 25 / 1; a 3-layer 1024-wide expander. Variants ``:quick`` and ``:full``.
"""

from ssl_jax.config import base_config
from ssl_jax.recipe_blocks import FASHION_MNIST_VARIANTS, fashion_mnist

VARIANTS = FASHION_MNIST_VARIANTS  # :quick, :full


def get_config(arg: str | None = None):
    c = fashion_mnist(base_config(), arg)
    c.method = "vicreg"
    c.model.projector_hidden, c.model.projector_dim, c.model.projector_layers = 1024, 1024, 3
    c.base_lr, c.lr_scaling = 0.3, "linear"
    c.weight_decay = 1e-4
    return c
