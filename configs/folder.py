"""SimCLR on a folder of your own photos (RGB, labels optional), sized for a first run on a CPU.

    ssl-jax pretrain --config configs/folder.py --config.dataset=folder:DIR --workdir runs/mine

``--config folder`` names the same recipe from anywhere; DIR is your folder of JPEG/PNG files,
with class sub-folders (DIR/<class>/*.jpg) or without (no labels: training works, the kNN
monitor and the evaluation say they are skipped), with split folders (DIR/train/<class>/ and
DIR/test/<class>/: the held-out split the evaluation scores) or without. Grayscale files are read
as RGB (no loss); for a folder of grayscale images only, add ``--config.image_channels=1
--config.augment=grayscale``.

The choices, for photos on a CPU: 64 x 64 views (each image resized and centre-cropped to 64 px on
the host, then random-resized-cropped on the device), SimCLR's ImageNet augmentation (crop scale
0.08-1, colour jitter 0.8, grayscale, blur), and the 4-layer convnet with global pooling: at 64 px
it trained 2-3x faster than a ResNet-18 on a 2-core CPU (33 vs 12-16 images/s, busy machine) and
compiled in 22 s instead of 72 s, so 500 steps of 128 (64,000 images) take 15-30 minutes there.
The GPU-sized run (ResNet-18 at 96 px): ``--config configs/folder.py:full``; a smoke test:
``--config configs/folder.py:quick``.
"""

from ssl_jax.config import base_config

VARIANTS = {
    "quick": "a 20-step smoke test at 32 px, no evaluation at the end",
    "full": "GPU-sized: ResNet-18 at 96 px (STL-10 scale), batch 256, 200 epochs",
}


def get_config(arg: str | None = None):
    c = base_config()
    # No default folder: the data source says what to pass (--config.dataset=folder:DIR).
    c.dataset = "folder:"
    c.image_size = c.data_image_size = 64
    c.image_channels = 3
    c.augment = "simclr_imagenet"  # colour jitter, grayscale and blur: a photo's invariances
    c.model.encoder = "convnet"  # global average pooling (objects anywhere in a photo)
    c.method = "simclr"
    c.simclr.temperature = 0.2
    c.model.projector_hidden, c.model.projector_dim = 512, 128
    c.optimizer, c.base_lr, c.lr_scaling = "lars", 0.075, "sqrt"  # SimCLR, small batches
    c.weight_decay = 1e-5
    c.batch_size = 128  # a folder of a few hundred photos still makes batches
    c.total_steps, c.warmup_steps = 500, 50
    c.log_every, c.checkpoint_every, c.eval_every = 10, 100, 250
    c.eval_finetune_fractions = (0.01,)  # fine-tuning at 10% too takes minutes on a CPU
    if arg == "quick":
        c.image_size = c.data_image_size = 32
        c.batch_size, c.total_steps, c.warmup_steps = 32, 20, 5
        c.log_every, c.checkpoint_every, c.eval_every = 5, 10, 10
        c.eval_at_end = False
    elif arg == "full":
        c.image_size = c.data_image_size = 96
        c.model.encoder, c.model.resnet.stem = "resnet18", "imagenet"
        c.model.projector_hidden, c.model.projector_dim = 2048, 256
        c.batch_size, c.lr_scaling, c.base_lr = 256, "linear", 0.3
        c.total_epochs, c.warmup_steps = 200, 100  # the length in epochs of your folder
        c.log_every, c.checkpoint_every, c.eval_every = 50, 2000, 2000
        c.eval_finetune_fractions = None  # 1% and 10%
        c.num_workers = 8  # decoding photos: the host keeps up with a GPU
    elif arg is not None:
        raise ValueError(f"unknown variant {arg!r}: use :quick, :full or none")
    return c
