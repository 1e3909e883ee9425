"""SupCon on Fashion-MNIST, sized for a 2-core CPU (the demo's encoder, steps and views).

    ssl-jax pretrain --config configs/supcon_fashion_mnist.py --workdir runs/supcon_fmnist

Supervised: it trains on ALL 60,000 labels, so its row in a label-efficiency table is a
reference for what labels buy, not a self-supervised result. SimCLR's demo settings (LARS with
the square-root lr rule, projector 512 -> 128) with SupCon's temperature 0.1 (Khosla et al.
2020). Variants ``:quick`` and ``:full`` as the SimCLR recipe.
"""

from ssl_jax.config import base_config
from ssl_jax.recipe_blocks import FASHION_MNIST_VARIANTS, fashion_mnist

VARIANTS = FASHION_MNIST_VARIANTS  # :quick, :full


def get_config(arg: str | None = None):
    c = fashion_mnist(base_config(), arg)
    c.method = "supcon"
    c.supcon.temperature = 0.1
    c.model.projector_hidden, c.model.projector_dim = 512, 128
    c.base_lr, c.lr_scaling = 0.075, "sqrt"
    c.weight_decay = 1e-6
    return c
