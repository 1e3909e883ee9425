"""DINO on CIFAR-10: ViT-Tiny on 4x4 patches, 2 x 32 px + 6 x 16 px crops, batch 512, 300 epochs.

    ssl-jax pretrain --config configs/dino_cifar10.py --workdir runs/dino_cifar10

The ImageNet recipe's settings scaled to 32 px (not a published CIFAR recipe): AdamW at 5e-4 x
B/256 with 10 warm-up epochs, weight decay 0.04 -> 0.4, 65,536 prototypes, teacher temperature
0.04 -> 0.07 over 30 epochs, momentum 0.996 -> 1, the last layer frozen for 1 epoch, per-tensor
gradient clipping at 3; BYOL's asymmetric global views (DINO's). Needs CIFAR-10 for TFDS.
"""

from ssl_jax.config import base_config
from ssl_jax.recipe_blocks import CIFAR10_TRAIN_IMAGES, cifar10

VARIANTS: dict[str, str] = {}  # none


def get_config(arg: str | None = None):
    c = cifar10(base_config(), arg, epochs=300, batch_size=512)
    epoch = CIFAR10_TRAIN_IMAGES // c.batch_size
    c.method = "dino"
    c.augment = "byol"
    c.model.encoder = "vit_tiny"
    c.model.vit.patch_size, c.model.vit.image_size = 4, 32
    c.multi_crop.local_crops, c.multi_crop.local_size = 6, 16
    c.dino.teacher_temperature, c.dino.warmup_teacher_steps = 0.07, 30 * epoch
    c.dino.freeze_last_layer_steps = epoch
    c.optimizer, c.base_lr = "adamw", 5e-4
    c.weight_decay, c.weight_decay_end = 0.04, 0.4
    return c
