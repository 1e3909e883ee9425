"""SimSiam on ImageNet: ResNet-50, global batch 512, SGD, 100 epochs (Chen & He 2021).

    ssl-jax pretrain --config configs/simsiam_imagenet.py --workdir runs/simsiam_imagenet

The paper's recipe (sec. 4, appendix A): SGD momentum 0.9, lr 0.05 x B/256, weight decay 1e-4,
cosine schedule, no warm-up; a 3-layer 2048-wide projector with BatchNorm on its output, the
predictor 2048 -> 512 -> 2048, its lr fixed at the peak (the official code's ``--fix-pred-lr``,
``config.simsiam.fix_predictor_lr``). bfloat16 compute. Needs imagenet2012 for TFDS.
"""

from ssl_jax.config import base_config
from ssl_jax.recipe_blocks import imagenet

VARIANTS: dict[str, str] = {}  # none


def get_config(arg: str | None = None):
    c = imagenet(base_config(), arg, epochs=100, batch_size=512)
    c.method = "simsiam"
    c.augment = "simclr_imagenet"
    c.model.projector_hidden, c.model.projector_dim, c.model.projector_layers = 2048, 2048, 3
    c.model.projector_last_bn = True
    c.model.predictor_hidden = 512
    c.simsiam.fix_predictor_lr = True
    c.optimizer, c.base_lr, c.momentum = "sgd", 0.05, 0.9
    c.weight_decay, c.warmup_steps = 1e-4, 0
    return c
