"""MoCo v3 on ImageNet with a ViT-S/16: global batch 4096, AdamW, 300 epochs (Chen, Xie & He
2021).

    ssl-jax pretrain --config configs/moco_v3_vit_imagenet.py --workdir runs/moco_v3_vit_imagenet

The paper's ViT setting (sec. 4 and appendix; the official ViT-Small command): AdamW at 1.5e-4 x
B/256 with 40 warm-up epochs, weight decay 0.1, temperature 0.2, momentum 0.99 -> 1, BN-ended
projector 4096 x 3 -> 256 and predictor 4096 -> 256; BYOL's asymmetric views; bfloat16 compute;
the paper's stability trick, a frozen random patch projection
(``moco_v3.freeze_patch_embed``). Not here: its sin-cos position embeddings (this ViT learns
them). Needs imagenet2012 prepared for TFDS.
"""

from ssl_jax.config import base_config
from ssl_jax.recipe_blocks import IMAGENET_TRAIN_IMAGES, imagenet

VARIANTS: dict[str, str] = {}  # none


def get_config(arg: str | None = None):
    c = imagenet(base_config(), arg, epochs=300, batch_size=4096)
    c.method = "moco_v3"
    c.augment = "byol"
    c.model.encoder = "vit_small"
    c.model.vit.patch_size, c.model.vit.image_size = 16, 224
    c.moco_v3.temperature, c.moco_v3.base_momentum = 0.2, 0.99
    c.moco_v3.freeze_patch_embed = True
    c.model.projector_hidden, c.model.projector_dim, c.model.projector_layers = 4096, 256, 3
    c.model.projector_last_bn = True
    c.model.predictor_hidden = 4096
    c.optimizer, c.base_lr, c.weight_decay = "adamw", 1.5e-4, 0.1
    c.warmup_steps = 40 * (IMAGENET_TRAIN_IMAGES // c.batch_size)
    return c
