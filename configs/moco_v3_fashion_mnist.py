"""MoCo v3 on Fashion-MNIST, sized for a 2-core CPU (the demo's encoder, steps and views).

    ssl-jax pretrain --config configs/moco_v3_fashion_mnist.py --workdir runs/moco_v3_fmnist

solo-learn's CIFAR recipe scaled down: LARS, lr 0.3 x B/256, weight decay 1e-5, temperature 0.2,
momentum 0.99 -> 1; BN-ended 3-layer projector and 2-layer predictor, 1024 wide, 256 out.
Variants ``:quick`` and ``:full``.
"""

from ssl_jax.config import base_config
from ssl_jax.recipe_blocks import FASHION_MNIST_VARIANTS, fashion_mnist

VARIANTS = FASHION_MNIST_VARIANTS  # :quick, :full


def get_config(arg: str | None = None):
    c = fashion_mnist(base_config(), arg)
    c.method = "moco_v3"
    c.moco_v3.temperature, c.moco_v3.base_momentum = 0.2, 0.99
    c.model.projector_hidden, c.model.projector_dim, c.model.projector_layers = 1024, 256, 3
    c.model.projector_last_bn = True
    c.model.predictor_hidden = 1024
    c.base_lr, c.lr_scaling = 0.3, "linear"
    c.weight_decay = 1e-5
    return c
