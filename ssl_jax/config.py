"""The config schema: every knob a recipe can turn, its default, and fail-fast validation.

Recipes in ``configs/`` start from :func:`base_config` and override fields; the command line
overrides them again (``--config.batch_size=512``). A field a recipe does not know is an error
that names the closest known field.
"""

from __future__ import annotations

import difflib
from typing import Any

import ml_collections
from ml_collections import config_dict


def base_config() -> ml_collections.ConfigDict:
    """All fields with defaults (a SimCLR convnet on Fashion-MNIST, sized for a CPU)."""
    c = ml_collections.ConfigDict()
    c.method = "simclr"  # simclr | byol
    c.seed = 0  # model init, data order and augmentation all derive from it

    # Data.
    c.dataset = "fashion_mnist"  # fashion_mnist | tfds:NAME | folder:/path | synthetic
    c.data_dir = config_dict.placeholder(str)  # TFDS data dir (None: TFDS's default)
    c.train_split = "train"
    c.eval_split = "test"  # labelled split the kNN monitor scores (imagenet: validation)
    c.image_size = 28  # side of the augmented views fed to the encoder
    c.image_channels = 1  # 1 (grayscale) or 3 (RGB)
    c.data_image_size = config_dict.placeholder(int)  # host resize+centre-crop (None: native)
    c.num_workers = 0  # grain worker processes decoding on the host (0: in-process)
    c.data_in_memory = False  # fashion_mnist / tfds: read the split into RAM once (small data)
    c.synthetic_examples = 2048  # dataset=synthetic: number of images
    c.synthetic_classes = 10  # dataset=synthetic: number of classes

    # Steps and output.
    c.batch_size = 256  # GLOBAL batch over all devices and processes
    c.total_steps = 1000
    c.log_every = 50  # console line + metrics.jsonl + TensorBoard every N steps
    c.checkpoint_every = 500  # 0: only at the end
    c.eval_every = 1000  # kNN monitor (knn_top1 in the metrics) every N steps; 0: off
    c.keep_checkpoints = 3
    c.num_devices = config_dict.placeholder(int)  # None: all devices
    c.eval_at_end = True  # `ssl-jax pretrain` runs `ssl-jax evaluate` when training ends
    # the label fractions that evaluation at the end fine-tunes at (None: 1% and 10%)
    c.eval_finetune_fractions = config_dict.placeholder(tuple)

    # Augmentation: a preset of ssl_jax.augment.get_views.
    c.augment = "grayscale"  # simclr_imagenet | simclr_cifar | byol | grayscale

    # Model.
    c.model = ml_collections.ConfigDict()
    c.model.encoder = "convnet"  # convnet | resnet18 | resnet34 | resnet50
    c.model.stem = "cifar"  # resnets: imagenet (7x7/2 + max-pool) | cifar (3x3/1)
    c.model.width = 1  # resnets: channel multiplier
    c.model.convnet_features = (32, 64, 128, 256)  # convnet: channels of its conv layers
    c.model.convnet_grid = 1  # convnet: average-pool the last map to GxG, flatten (1: global)
    c.model.head_pools = False  # convnet_grid > 1: the projection head averages the GxG cells
    # auto (winograd on CPU, the library convolution elsewhere) | xla | im2col | winograd
    c.model.conv_impl = "auto"
    c.model.projector_hidden = 512
    c.model.projector_dim = 128
    c.model.projector_layers = 2  # 2 (SimCLR v1, BYOL) or 3 (SimCLR v2)
    c.model.projector_last_bn = False  # BatchNorm after the last projector layer (SimCLR v2)
    c.model.predictor_hidden = 512  # BYOL predictor hidden width
    c.model.compute_dtype = "float32"  # float32 | bfloat16 (parameters stay float32)

    # Method hyper-parameters.
    c.temperature = 0.2  # SimCLR NT-Xent temperature
    # SimCLR: stream NT-Xent over candidate blocks of this many columns (exact; memory per device
    # O(rows x block), not O(rows x 2N)); None: the direct [2N, 2N] formula. Set it for 2N > ~16k.
    c.loss_block_size = config_dict.placeholder(int)
    c.base_tau = 0.996  # BYOL target EMA rate at step 0 (rises to 1)

    # Optimizer.
    c.optimizer = "lars"  # lars | sgd | adamw
    c.base_lr = 0.3  # peak lr = base_lr scaled by lr_scaling
    c.lr_scaling = "linear"  # linear (x B/256) | sqrt (x sqrt(B)) | none
    c.warmup_steps = 100
    c.weight_decay = 1e-6
    c.momentum = 0.9  # lars, sgd
    c.lars_trust_coefficient = 0.001
    c.adam_b1 = 0.9
    c.adam_b2 = 0.999
    return c


def field_names(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every leaf field as a dotted path, e.g. ``['method', ..., 'model.encoder', ...]``."""
    names = []
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            names += field_names(value, f"{prefix}{key}.")
        else:
            names.append(prefix + key)
    return names


def describe_fields() -> str:
    """One line per field of :func:`base_config`: ``name = default  # what it is``, the comment
    taken from the one beside (or the comment lines just above) its assignment in this file."""
    import inspect
    import re

    comments: dict[str, str] = {}
    above: list[str] = []
    for line in inspect.getsource(base_config).splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# ").strip())
            continue
        match = re.match(r"c\.([\w.]+) = .*?(?:  # (.*))?$", stripped)
        if match and not match.group(1).endswith("model"):
            text = match.group(2) or " ".join(above)
            if text:
                comments[match.group(1)] = text
        above = []
    config = base_config()
    lines = []
    for name in field_names(config):
        value = config
        for part in name.split("."):
            value = value[part]
        comment = comments.get(name)
        lines.append(f"  {name} = {value!r}" + (f"  # {comment}" if comment else ""))
    return "\n".join(lines)


def closest_field(path: str) -> str | None:
    """The schema field most like a misspelt dotted path, or None."""
    close = difflib.get_close_matches(path, field_names(base_config()), n=1)
    return close[0] if close else None


def check_known_fields(config: ml_collections.ConfigDict) -> None:
    """Raise ValueError naming any field the schema does not have (and the closest one)."""
    problems = []

    def walk(cfg, ref, prefix):
        for key in cfg.keys():
            path = f"{prefix}{key}"
            if key not in ref:
                close = closest_field(path)
                hint = f" (did you mean '{close}'?)" if close else ""
                problems.append(f"unknown config field '{path}'{hint}")
            elif isinstance(ref[key], ml_collections.ConfigDict):
                if isinstance(cfg[key], ml_collections.ConfigDict):
                    walk(cfg[key], ref[key], path + ".")
                else:
                    problems.append(f"config field '{path}' must be a group of fields")

    walk(config, base_config(), "")
    if problems:
        raise ValueError("; ".join(problems) + ". See ssl_jax/config.py for every field.")


def _require(ok: bool, field: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ValueError(f"config.{field}={value!r} is invalid: {allowed}.")


def validate(config: ml_collections.ConfigDict) -> None:
    """Fail fast on fields that are unknown or out of range, naming the field and the range."""
    check_known_fields(config)
    c = config
    _require(c.method in ("simclr", "byol"), "method", c.method, "use simclr or byol")
    _require(c.batch_size >= 2, "batch_size", c.batch_size, "must be >= 2")
    _require(c.total_steps >= 1, "total_steps", c.total_steps, "must be >= 1")
    _require(c.log_every >= 1, "log_every", c.log_every, "must be >= 1")
    _require(c.checkpoint_every >= 0, "checkpoint_every", c.checkpoint_every, "must be >= 0")
    _require(c.eval_every >= 0, "eval_every", c.eval_every, "must be >= 0 (0 turns it off)")
    _require(c.keep_checkpoints >= 1, "keep_checkpoints", c.keep_checkpoints, "must be >= 1")
    _require(c.image_size >= 8, "image_size", c.image_size, "must be >= 8 pixels")
    _require(c.image_channels in (1, 3), "image_channels", c.image_channels, "must be 1 or 3")
    _require(c.num_workers >= 0, "num_workers", c.num_workers, "must be >= 0")
    _require(
        not c.data_in_memory
        or c.dataset in ("fashion_mnist", "synthetic")  # synthetic images are made in memory
        or c.dataset.startswith("tfds:"),
        "data_in_memory",
        c.data_in_memory,
        f"only fashion_mnist and tfds: datasets can be read into memory, not {c.dataset!r}",
    )
    fractions = c.eval_finetune_fractions
    _require(
        fractions is None or (len(fractions) > 0 and all(f in (0.01, 0.1) for f in fractions)),
        "eval_finetune_fractions",
        fractions,
        "must be None or a non-empty tuple of 0.01 and/or 0.1 (the label fractions below 100% "
        "that `pretrain` evaluates)",
    )
    _require(c.temperature > 0, "temperature", c.temperature, "must be > 0")
    _require(
        c.loss_block_size is None or c.loss_block_size >= 1,
        "loss_block_size",
        c.loss_block_size,
        "must be None (direct) or >= 1",
    )
    _require(0.0 <= c.base_tau <= 1.0, "base_tau", c.base_tau, "must be in [0, 1]")
    _require(c.model.convnet_grid >= 1, "model.convnet_grid", c.model.convnet_grid, "must be >= 1")
    _require(
        c.model.projector_layers >= 1, "model.projector_layers", c.model.projector_layers, ">= 1"
    )
    for name in ("projector_hidden", "projector_dim", "predictor_hidden"):
        _require(c.model[name] >= 1, f"model.{name}", c.model[name], "must be >= 1")
    _require(c.model.width > 0, "model.width", c.model.width, "must be > 0")
    features = tuple(c.model.convnet_features)
    _require(
        len(features) > 0 and all(f >= 1 for f in features),
        "model.convnet_features",
        features,
        "must be a non-empty tuple of channel counts >= 1",
    )
    _require(
        c.num_devices is None or c.num_devices >= 1,
        "num_devices",
        c.num_devices,
        "must be None (all devices) or >= 1",
    )
