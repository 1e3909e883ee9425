"""DINO on ImageNet: ViT-S/16, global batch 1024, AdamW, 100 epochs (Caron et al. 2021).

    ssl-jax pretrain --config configs/dino_imagenet.py --workdir runs/dino_imagenet

The paper's ViT-S/16 setting (sec. 4 and appendix; official main_dino.py): AdamW at 5e-4 x
B/256 with 10 warm-up epochs, weight decay 0.04 -> 0.4 on a cosine, 65,536 prototypes (head
2048 -> 256, last layer weight-normalised and frozen during the first epoch), student
temperature 0.1, teacher temperature 0.04 -> 0.07 over the first 30 epochs, teacher momentum
0.996 -> 1, centre momentum 0.9, gradient clipping at 3; 2 global crops of 224 px (scale
0.4-1, BYOL's asymmetric colour views) and 10 local crops of 96 px (scale 0.05-0.4);
bfloat16 compute; drop-path 0.1 in the student. Needs imagenet2012 for TFDS.
"""

from ssl_jax.config import base_config
from ssl_jax.recipe_blocks import IMAGENET_TRAIN_IMAGES, imagenet

VARIANTS: dict[str, str] = {}  # none


def get_config(arg: str | None = None):
    c = imagenet(base_config(), arg, epochs=100, batch_size=1024)
    epoch = IMAGENET_TRAIN_IMAGES // c.batch_size
    c.method = "dino"
    c.augment = "byol"
    c.model.encoder = "vit_small"
    c.model.vit.patch_size, c.model.vit.image_size = 16, 224
    c.model.vit.drop_path = 0.1  # the student's (main_dino.py's default); the teacher has none
    c.multi_crop.local_crops, c.multi_crop.local_size = 10, 96
    c.dino.teacher_temperature, c.dino.warmup_teacher_steps = 0.07, 30 * epoch
    c.dino.freeze_last_layer_steps = epoch
    c.optimizer, c.base_lr = "adamw", 5e-4
    c.weight_decay, c.weight_decay_end = 0.04, 0.4
    return c
