"""SimSiam on CIFAR-10: ResNet-18 with the CIFAR stem, global batch 512, SGD, 800 epochs.

    ssl-jax pretrain --config configs/simsiam_cifar10.py --workdir runs/simsiam_cifar10

The paper's CIFAR recipe (Chen & He 2021, appendix D): SGD momentum 0.9, lr 0.03 x B/256, weight
decay 5e-4, no warm-up, 800 epochs; projector 2048-2048 with BatchNorm on its output; predictor
2048 -> 512 -> 2048. Views: SimCLR's CIFAR preset (the paper's crop scale is 0.2-1; ours 0.08-1).
Needs CIFAR-10 prepared for TFDS in the data dir.
"""

from ssl_jax.config import base_config
from ssl_jax.recipe_blocks import cifar10

VARIANTS: dict[str, str] = {}  # none


def get_config(arg: str | None = None):
    c = cifar10(base_config(), arg, epochs=800, batch_size=512)
    c.method = "simsiam"
    c.augment = "simclr_cifar"
    c.model.projector_hidden, c.model.projector_dim = 2048, 2048
    c.model.projector_last_bn = True
    c.model.predictor_hidden = 512
    c.optimizer, c.base_lr, c.momentum = "sgd", 0.03, 0.9
    c.weight_decay, c.warmup_steps = 5e-4, 0
    return c
