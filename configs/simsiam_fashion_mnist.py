"""SimSiam on Fashion-MNIST, sized for a 2-core CPU (the demo's encoder, steps and views).

    ssl-jax pretrain --config configs/simsiam_fashion_mnist.py --workdir runs/simsiam_fmnist

SGD with momentum 0.9 at lr 0.5 x B/256, weight decay 1e-5 and 100 warm-up steps; a 2-layer
projector with BatchNorm on its output and a bottleneck predictor (a quarter of the projection's
width). The paper's CIFAR settings (lr 0.03 x B/256, weight decay 5e-4, no warm-up) plateaued
from step 300 in this 5-epoch run: +0.6 points over raw pixels with 1% of the labels, against
+3.1 with these (one measured run each, benchmarks/RESULTS.md). Variants ``:quick`` and
``:full`` as the SimCLR recipe.
"""

from ssl_jax.config import base_config
from ssl_jax.recipe_blocks import FASHION_MNIST_VARIANTS, fashion_mnist

VARIANTS = FASHION_MNIST_VARIANTS  # :quick, :full


def get_config(arg: str | None = None):
    c = fashion_mnist(base_config(), arg)
    c.method = "simsiam"
    c.model.projector_hidden, c.model.projector_dim = 512, 512
    c.model.projector_last_bn = True
    c.model.predictor_hidden = 128
    c.optimizer, c.base_lr, c.lr_scaling, c.momentum = "sgd", 0.5, "linear", 0.9
    c.weight_decay = 1e-5  # warm-up: the block's 100 steps
    return c
