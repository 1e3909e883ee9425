"""BYOL on Fashion-MNIST, sized for a 2-core CPU (a useful run in about 10 minutes).

    ssl-jax pretrain --config configs/byol_fashion_mnist.py --workdir runs/byol_fmnist

Same encoder and augmentation as the SimCLR recipe; the target network is an EMA of the online
one with tau rising from 0.99 (shorter runs need a faster-moving target) to 1.
Quick variant for a smoke test: ``--config configs/byol_fashion_mnist.py:quick``; the GPU-sized
run (batch 512, 150 epochs, twice the channels): ``--config configs/byol_fashion_mnist.py:full``.
"""

from ssl_jax.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.method = "byol"
    c.dataset = "fashion_mnist"
    c.image_size, c.image_channels = 28, 1
    c.data_in_memory = True  # 47 MB: batches straight from RAM, no per-record decoding
    c.augment = "grayscale"
    c.model.encoder = "convnet"
    # Keep the 4x4 map (4,096 features) for downstream tasks; the head pools it, so the loss sees
    # the usual globally pooled feature (see ssl_jax/models/convnet.py).
    c.model.convnet_grid, c.model.head_pools = 4, True
    c.model.projector_hidden, c.model.projector_dim = 1024, 128
    c.model.predictor_hidden = 1024

    c.batch_size = 256
    c.total_steps = 1200
    c.base_tau = 0.99
    c.optimizer = "lars"
    c.base_lr, c.lr_scaling = 1.0, "linear"  # solo-learn's BYOL CIFAR rate
    c.weight_decay = 1e-5
    c.warmup_steps = 100
    c.log_every, c.checkpoint_every, c.eval_every = 50, 300, 300
    c.eval_finetune_fractions = (0.01,)  # as the SimCLR recipe: 10% adds ~2 min on 2 cores

    if arg == "quick":
        c.total_steps, c.log_every, c.checkpoint_every, c.warmup_steps = 20, 5, 10, 5
        c.eval_every = 10
    elif arg == "full":  # GPU-sized: batch 512, 150 epochs (17,578 steps), 10 warm-up epochs
        c.batch_size = 512
        # Twice the channels (8,192 features): as fast on an H100 (the small net is launch-bound
        # there), and +0.5 to +2.1 points at 10% and 100% of the labels (benchmarks/RESULTS.md).
        c.model.convnet_features = (64, 128, 256, 512)
        c.eval_finetune_fractions = None  # 1% and 10%
        c.total_steps, c.warmup_steps = 150 * 60_000 // 512, 10 * 60_000 // 512
        c.log_every, c.checkpoint_every, c.eval_every = 500, 2000, 2000
    elif arg is not None:
        raise ValueError(f"unknown variant {arg!r} of this recipe: use ':quick', ':full' or none")
    return c
