"""Barlow Twins on Fashion-MNIST, sized for a 2-core CPU (the demo's encoder, steps and views).

    ssl-jax pretrain --config configs/barlow_twins_fashion_mnist.py --workdir runs/barlow_fmnist

solo-learn's CIFAR recipe scaled down: LARS, lr 0.3 x B/256, weight decay 1e-4, lambda 0.0051,
loss scaled by 0.1; a 3-layer 1024-wide projector. Variants ``:quick`` and ``:full``.
"""

from ssl_jax.config import base_config
from ssl_jax.recipe_blocks import FASHION_MNIST_VARIANTS, fashion_mnist

VARIANTS = FASHION_MNIST_VARIANTS  # :quick, :full


def get_config(arg: str | None = None):
    c = fashion_mnist(base_config(), arg)
    c.method = "barlow_twins"
    c.barlow_twins.lambda_, c.barlow_twins.scale_loss = 0.0051, 0.1
    c.model.projector_hidden, c.model.projector_dim, c.model.projector_layers = 1024, 1024, 3
    c.base_lr, c.lr_scaling = 0.3, "linear"
    c.weight_decay = 1e-4
    return c
