"""SimCLR on Fashion-MNIST, sized for a 2-core CPU (a useful run in about 10 minutes).

    ssl-jax pretrain --config configs/simclr_fashion_mnist.py --workdir runs/simclr_fmnist

A small 4-layer convnet on 28x28x1 images with grayscale-safe augmentation (crop, flip,
brightness/contrast); LARS with SimCLR's square-root learning-rate rule for small batches.
Quick variant for a smoke test: ``--config configs/simclr_fashion_mnist.py:quick``; the GPU-sized
run (batch 512, 150 epochs, twice the channels): ``--config configs/simclr_fashion_mnist.py:full``.
"""

from ssl_jax.config import base_config
from ssl_jax.recipe_blocks import FASHION_MNIST_VARIANTS, fashion_mnist

VARIANTS = FASHION_MNIST_VARIANTS  # :quick, :full


def get_config(arg: str | None = None):
    c = fashion_mnist(base_config(), arg)
    c.method = "simclr"
    c.simclr.temperature = 0.2
    c.model.projector_hidden, c.model.projector_dim = 512, 128
    c.base_lr, c.lr_scaling = 0.075, "sqrt"  # 0.075 * sqrt(256) = 1.2 (SimCLR appendix B.1)
    c.weight_decay = 1e-6
    return c
