"""DINO on Fashion-MNIST with a ViT-Tiny, sized for a 2-core CPU (30-60 minutes there).

    ssl-jax pretrain --config configs/dino_fashion_mnist.py --workdir runs/dino_fmnist

A ViT-Tiny (12 blocks, width 192) on 7x7 patches of the 28 px images, 2 global crops (scale
0.4-1) and 4 local crops of 14 px (scale 0.05-0.4) made on the device; DINO's head with 4,096
prototypes; AdamW at 5e-4 x B/256 with weight decay 0.04 -> 0.4, teacher temperature 0.04,
momentum 0.99 -> 1, the last layer frozen for the first 100 steps; 600 steps of batch 128 (1.3
epochs: a ViT is ~15x slower than the demo convnet on a CPU). Watch ``teacher_entropy``: it
should stay well between 0 and log 4096 = 8.3. Measured so far (benchmarks/RESULTS.md): after
300 of the 600 steps no collapse but no learning yet (kNN monitor 60 -> 57%, below raw pixels),
and the same in shorter tries with a higher learning rate, 1,024 prototypes or no local crops:
as DINO's authors say of small datasets, it needs tens of epochs (the ``:full`` variant on a
GPU). This recipe is a CPU-sized smoke of the whole method, not yet a result. Variants: ``:quick``
(a 20-step smoke test) and ``:full`` (GPU-sized: patch 4, 6 local crops of 12 px, batch 512,
100 epochs).
"""

from ssl_jax.config import base_config
from ssl_jax.recipe_blocks import fashion_mnist

VARIANTS = {
    "quick": "a 20-step smoke test (batch 64)",
    "full": "GPU-sized: patch 4, 6 local crops of 12 px, batch 512, 100 epochs",
}


def get_config(arg: str | None = None):
    c = fashion_mnist(base_config(), arg)
    c.method = "dino"
    c.model.encoder = "vit_tiny"
    c.model.vit.patch_size, c.model.vit.image_size = 7, 28
    c.multi_crop.local_crops, c.multi_crop.local_size = 4, 14
    c.dino.out_dim, c.dino.head_hidden, c.dino.head_bottleneck = 4096, 1024, 256
    c.dino.teacher_temperature = c.dino.warmup_teacher_temperature = 0.04
    c.dino.base_momentum, c.dino.freeze_last_layer_steps = 0.99, 100
    c.optimizer, c.base_lr, c.lr_scaling = "adamw", 5e-4, "linear"
    c.weight_decay, c.weight_decay_end = 0.04, 0.4
    if arg is None:
        c.batch_size, c.total_steps, c.warmup_steps = 128, 600, 60
        c.log_every, c.checkpoint_every, c.eval_every = 20, 100, 100
    elif arg == "quick":
        c.batch_size, c.dino.freeze_last_layer_steps = 64, 5
    elif arg == "full":
        c.model.vit.patch_size = 4
        c.multi_crop.local_crops, c.multi_crop.local_size = 6, 12
        c.total_steps, c.warmup_steps = 100 * 60_000 // 512, 10 * 60_000 // 512
        c.dino.freeze_last_layer_steps = 60_000 // 512
    return c
