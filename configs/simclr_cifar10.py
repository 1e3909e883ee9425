"""SimCLR on CIFAR-10: ResNet-18 with the CIFAR stem, global batch 512, LARS, 1000 epochs.

    ssl-jax pretrain --config configs/simclr_cifar10.py --workdir runs/simclr_cifar10

Hyper-parameters follow solo-learn's SimCLR CIFAR recipe (da Costa et al. 2022): LARS lr 0.4 x
batch/256, weight decay 1e-5, temperature 0.2, projector 2048 -> 256, 10 warmup epochs. Needs
CIFAR-10 prepared for TFDS in the data dir (`tfds build cifar10` where there is internet).
"""

from ssl_jax.config import base_config

EPOCHS, TRAIN_IMAGES = 1000, 50_000


def get_config(arg: str | None = None):
    c = base_config()
    c.method = "simclr"
    c.dataset = "tfds:cifar10"
    c.image_size, c.image_channels = 32, 3
    c.augment = "simclr_cifar"
    c.model.encoder, c.model.stem = "resnet18", "cifar"
    c.model.projector_hidden, c.model.projector_dim = 2048, 256

    c.batch_size = 512
    steps_per_epoch = TRAIN_IMAGES // c.batch_size
    c.total_steps = EPOCHS * steps_per_epoch
    c.warmup_steps = 10 * steps_per_epoch
    c.temperature = 0.2
    c.optimizer, c.base_lr, c.lr_scaling = "lars", 0.4, "linear"
    c.weight_decay = 1e-5
    c.log_every, c.checkpoint_every, c.eval_every = 100, 5000, 5000
    c.num_workers = 4
    if arg is not None:
        raise ValueError(f"unknown variant {arg!r} of this recipe: it has none")
    return c
