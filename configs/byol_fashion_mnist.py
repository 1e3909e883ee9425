"""BYOL on Fashion-MNIST, sized for a 2-core CPU (a useful run in about 10 minutes).

    ssl-jax pretrain --config configs/byol_fashion_mnist.py --workdir runs/byol_fmnist

Same encoder and augmentation as the SimCLR recipe; the target network is an EMA of the online
one with tau rising from 0.99 (shorter runs need a faster-moving target) to 1.
Quick variant for a smoke test: ``--config configs/byol_fashion_mnist.py:quick``; the GPU-sized
run (batch 512, 150 epochs, twice the channels): ``--config configs/byol_fashion_mnist.py:full``.
"""

from ssl_jax.config import base_config
from ssl_jax.recipe_blocks import FASHION_MNIST_VARIANTS, fashion_mnist

VARIANTS = FASHION_MNIST_VARIANTS  # :quick, :full


def get_config(arg: str | None = None):
    c = fashion_mnist(base_config(), arg)
    c.method = "byol"
    c.byol.base_tau = 0.99
    c.model.projector_hidden, c.model.projector_dim = 1024, 128
    c.model.predictor_hidden = 1024
    c.base_lr, c.lr_scaling = 1.0, "linear"  # solo-learn's BYOL CIFAR rate
    c.weight_decay = 1e-5
    return c
