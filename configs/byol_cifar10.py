"""BYOL on CIFAR-10: ResNet-18 with the CIFAR stem, global batch 512, LARS, 1000 epochs.

    ssl-jax pretrain --config configs/byol_cifar10.py --workdir runs/byol_cifar10

Hyper-parameters follow solo-learn's BYOL CIFAR recipe: LARS lr 1.0 x batch/256, weight decay
1e-5, projector and predictor 4096 -> 256, tau 0.99 -> 1, 10 warmup epochs. Needs CIFAR-10
prepared for TFDS in the data dir.
"""

from ssl_jax.config import base_config

EPOCHS, TRAIN_IMAGES = 1000, 50_000


def get_config(arg: str | None = None):
    c = base_config()
    c.method = "byol"
    c.dataset = "tfds:cifar10"
    c.image_size, c.image_channels = 32, 3
    c.augment = "byol"
    c.model.encoder, c.model.stem = "resnet18", "cifar"
    c.model.projector_hidden, c.model.projector_dim = 4096, 256
    c.model.predictor_hidden = 4096

    c.batch_size = 512
    steps_per_epoch = TRAIN_IMAGES // c.batch_size
    c.total_steps = EPOCHS * steps_per_epoch
    c.warmup_steps = 10 * steps_per_epoch
    c.base_tau = 0.99
    c.optimizer, c.base_lr, c.lr_scaling = "lars", 1.0, "linear"
    c.weight_decay = 1e-5
    c.log_every, c.checkpoint_every, c.eval_every = 100, 5000, 5000
    c.num_workers = 4
    if arg is not None:
        raise ValueError(f"unknown variant {arg!r} of this recipe: it has none")
    return c
