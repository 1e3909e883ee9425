"""The config schema: every knob a recipe can turn, its default, and fail-fast validation.

Recipes in ``configs/`` start from :func:`base_config` and override fields; the command line
overrides them again (``--config.batch_size=512``). A field a recipe does not know is an error
that names the closest known field.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Collection
from typing import Any

import ml_collections
from ml_collections import config_dict

from ssl_jax import augment, methods, models


def base_config() -> ml_collections.ConfigDict:
    """All fields with defaults (a SimCLR convnet on Fashion-MNIST, sized for a CPU).

    Besides the fields below, every registered method has a block ``config.<method>`` of its
    own settings (``config.simclr.temperature``, ``config.byol.base_tau``; the defaults and
    comments of its ``Hparams``), and every encoder family a block ``config.model.<family>``
    (``config.model.convnet.features``, ``config.model.resnet.stem``).
    """
    c = ml_collections.ConfigDict()
    c.method = "simclr"  # a method of ssl_jax.methods: simclr | byol
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
    c.total_epochs = config_dict.placeholder(int)  # if set: the length in epochs, not total_steps
    c.log_every = 50  # console line + metrics.jsonl + TensorBoard every N steps
    c.checkpoint_every = 500  # 0: only at the end
    c.eval_every = 1000  # kNN monitor (knn_top1 in the metrics) every N steps; 0: off
    c.keep_checkpoints = 3
    c.num_devices = config_dict.placeholder(int)  # None: all devices
    c.eval_at_end = True  # `ssl-jax pretrain` runs `ssl-jax evaluate` when training ends
    # the label fractions that evaluation at the end fine-tunes at (None: 1% and 10%)
    c.eval_finetune_fractions = config_dict.placeholder(tuple)

    # Augmentation: a view preset of ssl_jax.augment.VIEW_PRESETS.
    c.augment = "grayscale"  # simclr_imagenet | simclr_cifar | byol | grayscale
    # Multi-crop: local crops besides the two global views (methods with MULTI_CROP, e.g. dino).
    c.multi_crop = _block(augment.MultiCrop())

    # Model.
    c.model = ml_collections.ConfigDict()
    c.model.encoder = (
        "convnet"  # an encoder of ssl_jax.models: convnet | resnet18 | resnet34 | resnet50
    )
    # auto (winograd on CPU, the library convolution elsewhere) | xla | im2col | winograd
    c.model.conv_impl = "auto"
    c.model.projector_hidden = 512
    c.model.projector_dim = 128
    c.model.projector_layers = 2  # 2 (SimCLR v1, BYOL) or 3 (SimCLR v2)
    c.model.projector_last_bn = False  # BatchNorm after the last projector layer (SimCLR v2)
    c.model.predictor_hidden = 512  # BYOL predictor hidden width
    c.model.compute_dtype = "float32"  # float32 | bfloat16 (parameters stay float32)
    for family, settings in models.settings_blocks().items():
        c.model[family] = _block(settings())

    # Method hyper-parameters: one block per method.
    for name in methods.METHODS:
        c[name] = _block(methods.get_method(name).Hparams())

    # Optimizer.
    c.optimizer = "lars"  # lars | sgd | adamw
    c.base_lr = 0.3  # peak lr = base_lr scaled by lr_scaling
    c.lr_scaling = "linear"  # linear (x B/256) | sqrt (x sqrt(B)) | none
    c.warmup_steps = 100
    c.weight_decay = 1e-6
    # adamw | sgd: weight decay on a cosine from weight_decay to this (DINO: 0.04 -> 0.4)
    c.weight_decay_end = config_dict.placeholder(float)
    c.momentum = 0.9  # lars, sgd
    c.lars_trust_coefficient = 0.001
    c.adam_b1 = 0.9
    c.adam_b2 = 0.999
    return c


# Fields renamed when methods and encoders got blocks of their own (issue 14): old -> new.
# Old runs' config.json files are read through this table; an old name on the command line or in
# a recipe is an error that names the new one.
RENAMED = {
    "temperature": "simclr.temperature",
    "loss_block_size": "simclr.loss_block_size",
    "base_tau": "byol.base_tau",
    "model.convnet_features": "model.convnet.features",
    "model.convnet_grid": "model.convnet.grid",
    "model.head_pools": "model.convnet.head_pools",
    "model.stem": "model.resnet.stem",
    "model.width": "model.resnet.width",
}


def _block(settings: Any) -> ml_collections.ConfigDict:
    """A settings dataclass instance as a config block; a None default becomes a placeholder of
    the annotated type (``int | None`` -> an int field that is None), so overrides parse."""
    block = ml_collections.ConfigDict()
    types = {"int": int, "float": float, "str": str, "tuple": tuple, "bool": bool}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if value is None:
            name = str(field.type).split("|")[0].strip()
            value = config_dict.placeholder(types.get(name, object))
        block[field.name] = value
    return block


def field_names(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every leaf field as a dotted path, e.g. ``['method', ..., 'model.encoder', ...]``."""
    names = []
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            names += field_names(value, f"{prefix}{key}.")
        else:
            names.append(prefix + key)
    return names


def _source_comments(obj: Any, prefix: str = "") -> dict[str, str]:
    """``{field: comment}`` from the source of ``obj``: the comment beside (or the comment lines
    just above) ``c.FIELD = ...`` (base_config) or ``FIELD: TYPE = ...`` (a settings class)."""
    import inspect
    import re

    comments: dict[str, str] = {}
    above: list[str] = []
    for line in inspect.getsource(obj).splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# ").strip())
            continue
        match = re.match(r"(?:c\.([\w.]+)|(\w+): [^=]+?) = .*?(?:  # (.*))?$", stripped)
        if match:
            text = match.group(3) or " ".join(above)
            name = match.group(1) or match.group(2)
            if text and not name.endswith("model"):
                comments[prefix + name] = text
        above = []
    return comments


def describe_fields(config: ml_collections.ConfigDict | None = None) -> str:
    """One line per field: ``name = value  # what it is``, the values of ``config`` (default:
    :func:`base_config`) and the comments of base_config and of the method and encoder settings
    classes that declare the blocks."""
    comments = _source_comments(base_config)
    for name in methods.METHODS:
        comments.update(_source_comments(methods.get_method(name).Hparams, f"{name}."))
    for family, settings in models.settings_blocks().items():
        comments.update(_source_comments(settings, f"model.{family}."))
    config = base_config() if config is None else config
    lines = []
    for name in field_names(config):
        value = config
        for part in name.split("."):
            value = value[part]
        comment = comments.get(name)
        lines.append(f"  {name} = {value!r}" + (f"  # {comment}" if comment else ""))
    return "\n".join(lines)


def closest_field(path: str) -> str | None:
    """The schema field a misspelt or renamed dotted path stands for, or None."""
    if path in RENAMED:
        return RENAMED[path]
    close = difflib.get_close_matches(path, field_names(base_config()), n=1)
    return close[0] if close else None


def unknown_field_message(path: str) -> str:
    """'unknown config field X (did you mean Y?)', or for a renamed field, its new name."""
    if path in RENAMED:
        return f"config field '{path}' is now '{RENAMED[path]}'"
    close = closest_field(path)
    hint = f" (did you mean '{close}'?)" if close else ""
    return f"unknown config field '{path}'{hint}"


def check_known_fields(config: ml_collections.ConfigDict) -> None:
    """Raise ValueError naming any field the schema does not have (and the closest one)."""
    problems = []

    def walk(cfg, ref, prefix):
        for key in cfg.keys():
            path = f"{prefix}{key}"
            if key not in ref:
                problems.append(unknown_field_message(path))
            elif isinstance(ref[key], ml_collections.ConfigDict):
                if isinstance(cfg[key], ml_collections.ConfigDict):
                    walk(cfg[key], ref[key], path + ".")
                else:
                    problems.append(f"config field '{path}' must be a group of fields")

    walk(config, base_config(), "")
    if problems:
        raise ValueError("; ".join(problems) + ". See ssl_jax/config.py for every field.")


def check_types(config: ml_collections.ConfigDict) -> None:
    """Raise ValueError naming a tuple field whose items are not of the default's item type
    (``--config.model.convnet.features=abc`` parses as ``('abc',)``); ml_collections itself
    checks the scalar fields."""
    reference = base_config()
    for name in field_names(reference):
        default, value = _get(reference, name), _get(config, name)
        if not (isinstance(default, tuple) and default and isinstance(value, tuple)):
            continue
        kinds = {type(item) for item in default}
        if kinds == {int, float}:
            kinds = {float}
        if len(kinds) != 1:
            continue
        wanted = kinds.pop()
        accepted = (int, float) if wanted is float else (wanted,)
        ok = all(
            isinstance(item, accepted) and (wanted is bool or not isinstance(item, bool))
            for item in value
        )
        example = ",".join(str(item) for item in default)
        _require(ok, name, value, f"must be a tuple of {wanted.__name__}, e.g. ({example})")


def _get(config: ml_collections.ConfigDict, name: str) -> Any:
    for part in name.split("."):
        config = config[part] if part in config else None
        if config is None:
            return None
    return config


def differences(
    reference: ml_collections.ConfigDict, config: ml_collections.ConfigDict
) -> list[tuple[str, Any]]:
    """``(dotted name, value)`` of every field of ``config`` whose value differs from
    ``reference`` (e.g. what a recipe changes in :func:`base_config`)."""
    return [
        (name, _get(config, name))
        for name in field_names(config)
        if _get(reference, name) != _get(config, name)
    ]


def settle_duration(config: ml_collections.ConfigDict, given: Collection[str]) -> None:
    """Make the fields ``given`` on the command line (or as overrides) decide the run's length:
    both ``total_steps`` and ``total_epochs`` is a ValueError; ``total_steps`` alone clears a
    recipe's ``total_epochs``."""
    if {"total_steps", "total_epochs"} <= set(given):
        raise ValueError(
            "config.total_steps and config.total_epochs are both given: set one of them (an "
            "epoch count is turned into steps with the dataset's size)."
        )
    if "total_steps" in given:
        config.total_epochs = None


def resolve_total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> None:
    """Set ``config.total_steps`` from ``config.total_epochs`` (when set) and the training
    split's ``steps_per_epoch``; training calls this once the dataset is open."""
    if config.total_epochs is not None:
        config.total_steps = int(config.total_epochs) * max(int(steps_per_epoch), 1)


def _require(ok: bool, field: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ValueError(f"config.{field}={value!r} is invalid: {allowed}.")


def validate(config: ml_collections.ConfigDict) -> None:
    """Fail fast on fields that are unknown or out of range, naming the field and the range.
    The method's and the encoder's blocks are checked by their own settings classes."""
    check_known_fields(config)
    check_types(config)
    c = config
    _require(
        c.method in methods.METHODS, "method", c.method, f"use one of {methods.METHODS.names()}"
    )
    _require(c.batch_size >= 2, "batch_size", c.batch_size, "must be >= 2")
    _require(c.total_steps >= 1, "total_steps", c.total_steps, "must be >= 1")
    _require(
        c.total_epochs is None or c.total_epochs >= 1,
        "total_epochs",
        c.total_epochs,
        "must be None (total_steps sets the length) or >= 1",
    )
    _require(c.log_every >= 1, "log_every", c.log_every, "must be >= 1")
    _require(c.checkpoint_every >= 0, "checkpoint_every", c.checkpoint_every, "must be >= 0")
    _require(c.eval_every >= 0, "eval_every", c.eval_every, "must be >= 0 (0 turns it off)")
    _require(c.keep_checkpoints >= 1, "keep_checkpoints", c.keep_checkpoints, "must be >= 1")
    _require(c.image_size >= 8, "image_size", c.image_size, "must be >= 8 pixels")
    _require(c.image_channels in (1, 3), "image_channels", c.image_channels, "must be 1 or 3")
    _require(c.num_workers >= 0, "num_workers", c.num_workers, "must be >= 0")
    for name in ("train_split", "eval_split"):  # a sub-folder of an image folder: not a path
        split = c[name]
        ok = split.strip(". ") != "" and not {"/", "\\"} & set(split)
        _require(ok, name, split, "must be a split name such as 'train' or 'test', not a path")
    # The dataset spec, a missing folder, and a recipe set up for other images (data_in_memory,
    # channels) before anything else about the data: the real problem first, with its fix.
    from ssl_jax.data.from_config import check_dataset

    check_dataset(c)
    fractions = c.eval_finetune_fractions
    _require(
        fractions is None or (len(fractions) > 0 and all(f in (0.01, 0.1) for f in fractions)),
        "eval_finetune_fractions",
        fractions,
        "must be None or a non-empty tuple of 0.01 and/or 0.1 (the label fractions below 100% "
        "that `pretrain` evaluates)",
    )
    augment.VIEW_PRESETS.get(c.augment)  # a ValueError naming config.augment and the presets
    methods.validate_hparams(c)
    crops = augment.MultiCrop(**c.multi_crop)  # a ValueError naming the field
    multi = [n for n, m in methods.METHODS.items() if getattr(m, "MULTI_CROP", False)]
    _require(
        not crops.local_crops or c.method in multi,
        "multi_crop.local_crops",
        crops.local_crops,
        f"method {c.method!r} does not use local crops ({', '.join(multi)} do): set it to 0",
    )
    _require(0 <= c.momentum < 1, "momentum", c.momentum, "must be in [0, 1) (0.9 is usual)")
    _require(
        c.weight_decay_end is None or (c.weight_decay_end >= 0 and c.optimizer != "lars"),
        "weight_decay_end",
        c.weight_decay_end,
        "a weight-decay schedule needs optimizer adamw or sgd and a value >= 0 (None: constant)",
    )
    models.validate_encoder_config(c.model)
    _require(
        c.model.projector_layers >= 1, "model.projector_layers", c.model.projector_layers, ">= 1"
    )
    for name in ("projector_hidden", "projector_dim", "predictor_hidden"):
        _require(c.model[name] >= 1, f"model.{name}", c.model[name], "must be >= 1")
    _require(
        c.num_devices is None or c.num_devices >= 1,
        "num_devices",
        c.num_devices,
        "must be None (all devices) or >= 1",
    )


# ----------------------------------------------------------------------------- persistence


def migrate(saved: dict) -> dict:
    """A saved config (nested dicts, as in config.json) with renamed fields under their new
    names (:data:`RENAMED`), so that runs written by older versions load."""
    saved = json.loads(json.dumps(saved))  # a deep copy
    for old, new in RENAMED.items():
        *parents, leaf = old.split(".")
        node = saved
        for p in parents:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if not isinstance(node, dict) or leaf not in node:
            continue
        value = node.pop(leaf)
        *new_parents, new_leaf = new.split(".")
        target = saved
        for p in new_parents:
            target = target.setdefault(p, {})
        target[new_leaf] = value
    return saved


def from_dict(saved: dict) -> ml_collections.ConfigDict:
    """The schema's config with the values of ``saved`` (migrated); fields the schema gained
    since take their defaults, so older runs still load."""
    config = base_config()

    def merge(target, values):
        for key, value in values.items():
            if isinstance(value, dict) and key in target and hasattr(target[key], "items"):
                merge(target[key], value)
            else:
                with target.ignore_type():
                    target[key] = tuple(value) if isinstance(value, list) else value

    merge(config, migrate(saved))
    return config


def to_json(config: ml_collections.ConfigDict) -> str:
    """The config as the JSON a run saves (``config.json``)."""
    return config.to_json_best_effort(indent=2, sort_keys=True)


def changes(saved: dict | None, config: ml_collections.ConfigDict) -> list[str]:
    """``'key: saved -> now'`` for each field of ``config`` whose value differs from ``saved``
    (a run's config.json, migrated; fields it lacks, added to the schema since, are not
    changes). Empty when ``saved`` is None."""
    if saved is None:
        return []
    saved = flatten(migrate(saved))
    now = flatten(json.loads(config.to_json_best_effort()))
    return [
        f"{key}: {saved[key]!r} -> {now.get(key, '(absent)')!r}"
        for key in sorted(saved)
        if key not in now or now[key] != saved[key]
    ]


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{'a': {'b': 1}} -> {'a.b': 1}``: nested dicts as dotted names."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def read_saved(path: str) -> dict | None:
    """The JSON object in ``path`` (a run's config.json), or None if missing or unreadable."""
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    return saved if isinstance(saved, dict) else None
