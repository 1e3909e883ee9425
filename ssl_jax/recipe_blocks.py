"""Blocks that recipes share (``configs/*.py``): a dataset with its encoder and schedule, so that
a recipe is a short file of what its method changes (big_vision's configs/common.py).

    c = fashion_mnist(base_config(), arg)     # data, convnet, steps and the :quick/:full variants
    c.method = "simclr"; c.simclr.temperature = 0.2; ...
"""

from __future__ import annotations

from typing import Any

CIFAR10_TRAIN_IMAGES = 50_000
IMAGENET_TRAIN_IMAGES = 1_281_167

# The variants of the recipes built on fashion_mnist() ({name: what it is}): a recipe declares
# its own as VARIANTS, which `ssl-jax recipes` lists and `--config NAME:VARIANT` is checked
# against (ssl_jax.recipes).
FASHION_MNIST_VARIANTS = {
    "quick": "a 20-step smoke test, the kNN monitor its only evaluation",
    "full": "GPU-sized: batch 512, 150 epochs, twice the channels",
}


def fashion_mnist(c: Any, arg: str | None) -> Any:
    """Fashion-MNIST on a small convnet, sized for a 2-core CPU (1,200 steps of 256, ~5 epochs),
    with the variants ``quick`` (a 20-step smoke test) and ``full`` (GPU-sized: batch 512, 150
    epochs, twice the channels)."""
    c.dataset = "fashion_mnist"
    c.image_size, c.image_channels = 28, 1
    c.data_in_memory = True  # 47 MB: batches straight from RAM, no per-record decoding
    c.augment = "grayscale"
    c.model.encoder = "convnet"
    # Keep the 4x4 map (4,096 features) for downstream tasks; the head pools it, so the loss sees
    # the usual globally pooled feature (see ssl_jax/models/convnet.py).
    c.model.convnet.grid, c.model.convnet.head_pools = 4, True
    c.batch_size = 256
    c.total_steps = 1200  # ~5 epochs of 60k images
    c.optimizer = "lars"
    c.warmup_steps = 100
    c.log_every, c.checkpoint_every, c.eval_every = 50, 300, 300
    # The evaluation at the end fine-tunes at 1% only (10% adds ~2 min on a 2-core CPU;
    # `ssl-jax evaluate --workdir DIR` evaluates again with both).
    c.eval_finetune_fractions = (0.01,)
    if arg == "quick":
        c.total_steps, c.log_every, c.checkpoint_every, c.warmup_steps = 20, 5, 10, 5
        c.eval_every = 10  # the kNN monitor is the smoke test's evaluation: the whole one
        c.eval_at_end = False  # (fine-tuning, t-SNE) takes minutes on a CPU
    elif arg == "full":  # GPU-sized: batch 512, 150 epochs (17,578 steps), 10 warm-up epochs
        c.batch_size = 512
        # Twice the channels (8,192 features): as fast on an H100 (the small net is launch-bound
        # there), and +0.5 to +2.1 points at 10% and 100% of the labels (benchmarks/RESULTS.md).
        c.model.convnet.features = (64, 128, 256, 512)
        c.eval_finetune_fractions = None  # 1% and 10%
        c.total_steps, c.warmup_steps = 150 * 60_000 // 512, 10 * 60_000 // 512
        c.log_every, c.checkpoint_every, c.eval_every = 500, 2000, 2000
    elif arg is not None:
        raise ValueError(
            f"unknown variant {arg!r} of this recipe: use "
            + ", ".join(f"':{v}'" for v in FASHION_MNIST_VARIANTS)
            + " or none"
        )
    return c


def cifar10(c: Any, arg: str | None, *, epochs: int = 1000, batch_size: int = 512) -> Any:
    """CIFAR-10 (TFDS) on a ResNet-18 with the CIFAR stem, global batch 512 unless given,
    LARS, 10 warm-up epochs (solo-learn's recipes). No variants."""
    _no_variant(arg)
    c.dataset = "tfds:cifar10"
    c.image_size, c.image_channels = 32, 3
    c.model.encoder, c.model.resnet.stem = "resnet18", "cifar"
    _epochs(c, batch_size=batch_size, epochs=epochs, train_images=CIFAR10_TRAIN_IMAGES)
    c.optimizer, c.lr_scaling = "lars", "linear"
    c.log_every, c.checkpoint_every, c.eval_every = 100, 5000, 5000
    c.num_workers = 4
    return c


def imagenet(c: Any, arg: str | None, *, epochs: int, batch_size: int = 4096) -> Any:
    """ImageNet (TFDS imagenet2012) on a ResNet-50, global batch 4096 unless given, LARS,
    bfloat16 compute, 10 warm-up epochs; the host resizes to 256 px, the device crops 224. No
    variants."""
    _no_variant(arg)
    c.dataset = "tfds:imagenet2012"
    c.image_size, c.image_channels, c.data_image_size = 224, 3, 256
    c.model.encoder, c.model.resnet.stem = "resnet50", "imagenet"
    c.model.compute_dtype = "bfloat16"
    _epochs(c, batch_size=batch_size, epochs=epochs, train_images=IMAGENET_TRAIN_IMAGES)
    c.optimizer, c.lr_scaling = "lars", "linear"
    c.log_every, c.checkpoint_every, c.eval_every = 100, 2500, 2500
    c.eval_split = "validation"  # ImageNet's test split has no labels
    c.num_workers = 16
    return c


def _epochs(c: Any, *, batch_size: int, epochs: int, train_images: int) -> None:
    c.batch_size = batch_size
    steps_per_epoch = train_images // batch_size
    c.total_steps = epochs * steps_per_epoch
    c.warmup_steps = 10 * steps_per_epoch


def _no_variant(arg: str | None) -> None:
    if arg is not None:
        raise ValueError(f"unknown variant {arg!r} of this recipe: it has none")
