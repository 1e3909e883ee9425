"""SimCLR on ImageNet: ResNet-50, global batch 4096, LARS, 100 epochs (Chen et al. 2020).

    ssl-jax pretrain --config configs/simclr_imagenet.py --workdir runs/simclr_imagenet

The paper's recipe (appendix B.1): LARS lr 0.3 x batch/256 = 4.8, weight decay 1e-6,
temperature 0.1, 10 warmup epochs, projector 2048 -> 128, bfloat16 compute. The host resizes
and centre-crops images to 256 px; the random resized crop to 224 happens on the device.
Needs imagenet2012 prepared for TFDS (manual download) in the data dir.
"""

from ssl_jax.config import base_config

EPOCHS, TRAIN_IMAGES = 100, 1_281_167


def get_config(arg: str | None = None):
    c = base_config()
    c.method = "simclr"
    c.dataset = "tfds:imagenet2012"
    c.image_size, c.image_channels, c.data_image_size = 224, 3, 256
    c.augment = "simclr_imagenet"
    c.model.encoder, c.model.stem = "resnet50", "imagenet"
    c.model.projector_hidden, c.model.projector_dim = 2048, 128
    c.model.compute_dtype = "bfloat16"

    c.batch_size = 4096
    steps_per_epoch = TRAIN_IMAGES // c.batch_size
    c.total_steps = EPOCHS * steps_per_epoch
    c.warmup_steps = 10 * steps_per_epoch
    c.temperature = 0.1
    c.optimizer, c.base_lr, c.lr_scaling = "lars", 0.3, "linear"
    c.weight_decay = 1e-6
    c.log_every, c.checkpoint_every, c.eval_every = 100, 2500, 2500
    c.eval_split = "validation"  # ImageNet's test split has no labels
    c.num_workers = 16
    if arg is not None:
        raise ValueError(f"unknown variant {arg!r} of this recipe: it has none")
    return c
