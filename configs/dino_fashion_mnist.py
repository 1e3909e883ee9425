"""DINO on Fashion-MNIST with a ViT-Tiny, sized for a 2-core CPU (~80 minutes there).

    ssl-jax pretrain --config configs/dino_fashion_mnist.py --workdir runs/dino_fmnist

A ViT-Tiny (12 blocks, width 192) on 7x7 patches of the 28 px images, 2 global crops (scale
0.4-1) and 2 local crops of 14 px (scale 0.05-0.4) made on the device; DINO's head with
BatchNorm (the official ``--use_bn_in_head``) and 1,024 prototypes; AdamW at 5e-4 x B/256 with
weight decay 0.04 -> 0.4, teacher temperature 0.04, momentum 0.99 -> 1, the last layer frozen for
the first 100 steps; 2,000 steps of batch 128 (4.3 epochs). Watch ``teacher_entropy`` (per image)
and ``teacher_batch_entropy``: both should stay well between 0 and ln 1024 = 6.9.

Measured (benchmarks/RESULTS.md): the kNN monitor rose from the random ViT's 62.2% to 78.6% by
step 1,400 (still rising; linear probe 76.1 / 82.3 / 85.1 at 1 / 10 / 100% of the labels). The
earlier version of this recipe (4,096 prototypes, no head BatchNorm, 4 local crops, 600 steps)
and its variants did not learn: their monitor fell from 60 to 54-57%. Variants: ``:quick`` (a
20-step smoke test), ``:convnet`` (the demo convnet instead of the ViT, LARS, 10 epochs in ~30
minutes: its monitor rose from 73.6 to 78.5%) and ``:full`` (GPU-sized: patch 4, 6 local crops
of 12 px, batch 512, 100 epochs; not measured yet).
"""

from ssl_jax.config import base_config
from ssl_jax.recipe_blocks import fashion_mnist

VARIANTS = {
    "quick": "a 20-step smoke test (batch 64)",
    "convnet": "the demo convnet instead of the ViT: learns on a 2-core CPU (10 epochs, ~30 min)",
    "full": "GPU-sized: patch 4, 6 local crops of 12 px, batch 512, 100 epochs",
}


def get_config(arg: str | None = None):
    c = fashion_mnist(base_config(), None if arg == "convnet" else arg)
    c.method = "dino"
    c.model.encoder = "vit_tiny"
    c.model.vit.patch_size, c.model.vit.image_size = 7, 28
    c.multi_crop.local_crops, c.multi_crop.local_size = 2, 14
    c.dino.out_dim, c.dino.head_hidden, c.dino.head_bottleneck = 1024, 1024, 256
    c.dino.head_batch_norm = True  # with K = 1,024, what made the ViT learn here (RESULTS)
    c.dino.teacher_temperature = c.dino.warmup_teacher_temperature = 0.04
    c.dino.base_momentum, c.dino.freeze_last_layer_steps = 0.99, 100
    c.optimizer, c.base_lr, c.lr_scaling = "adamw", 5e-4, "linear"
    c.weight_decay, c.weight_decay_end = 0.04, 0.4
    if arg is None:
        c.batch_size, c.total_steps, c.warmup_steps = 128, 2000, 100
        c.log_every, c.checkpoint_every, c.eval_every = 20, 200, 100
    elif arg == "quick":
        c.batch_size, c.dino.freeze_last_layer_steps = 64, 5
    elif arg == "convnet":
        # The demo convnet with its global pool (the 4x4 grid needs >= 25 px; the local crops
        # are 14), LARS as the other convnet recipes; measured in benchmarks/RESULTS.md.
        c.model.encoder = "convnet"
        c.model.convnet.grid, c.model.convnet.head_pools = 1, False
        c.optimizer, c.base_lr, c.lr_scaling = "lars", 0.3, "linear"
        c.weight_decay, c.weight_decay_end = 1e-6, None
        c.batch_size, c.total_steps, c.warmup_steps = 256, 2400, 100
        c.dino.freeze_last_layer_steps = 100
        c.log_every, c.checkpoint_every, c.eval_every = 50, 300, 100
    elif arg == "full":
        c.model.vit.patch_size = 4
        c.multi_crop.local_crops, c.multi_crop.local_size = 6, 12
        c.total_steps, c.warmup_steps = 100 * 60_000 // 512, 10 * 60_000 // 512
        c.dino.freeze_last_layer_steps = 60_000 // 512
    return c
