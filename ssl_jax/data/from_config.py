"""The data source a run's config names, for training, evaluation or embedding: written once.

check_dataset(config)                                   # config.validate calls it: spec, folder
source = source_from_config(config)                    # the training split
test = source_from_config(config, config.eval_split)   # another split (unreadable files raise)
check_source(source, config)                            # channels and size fit the config
line = no_labels_message(config, source)               # None, or why nothing is scored

The checks report the real problem first: a dataset that is no data source (``cifar10`` for
``tfds:cifar10``), a folder that does not exist, a recipe whose settings are for other images
(Fashion-MNIST's 28x28 grayscale read into memory) with the recipe or the overrides that fit,
and colour photos on a grayscale recipe: never a silent conversion to gray.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ssl_jax.data.registry import _NEEDS_ARG, SOURCES, SPEC_FORMS, get_source
from ssl_jax.data.sources import Source

FOLDER = "folder:"  # the folder recipe's dataset until --config.dataset=folder:DIR names one
# TFDS datasets a recipe may be pointed at by name: (side, channels, the recipes' suffix).
KNOWN_DATASETS = {
    "cifar10": (32, 3, "cifar10"),
    "cifar100": (32, 3, None),
    "stl10": (96, 3, None),
    "svhn_cropped": (32, 3, None),
    "mnist": (28, 1, None),
    "imagenet2012": (224, 3, "imagenet"),
}
_COLOUR_PROBES = 8  # files of a folder looked at for colour when the config is grayscale


def check_dataset(config: Any) -> None:
    """A ValueError of one line naming the fix when ``config.dataset`` is not a data source,
    is a known dataset whose images the config's size and channels do not fit, or is a folder
    the config cannot read (``data_in_memory``; a missing folder is reported first). Reads no
    data; :func:`source_from_config` reports the rest when the data is opened."""
    spec = config.dataset
    kind, colon, arg = spec.partition(":")
    if spec == FOLDER:
        return  # the folder recipe before its folder is given: said when the data is opened
    if kind not in SOURCES or (kind in _NEEDS_ARG) != bool(arg) or (colon and not arg):
        raise ValueError(_not_a_source(config, spec))
    if kind == "tfds" and arg in KNOWN_DATASETS:
        size, channels, _ = KNOWN_DATASETS[arg]
        if channels != config.image_channels:
            raise ValueError(
                f"config.dataset={spec!r} has {size}x{size} {_kind(channels)} images, but this "
                f"recipe's settings are for {_setup(config)}: {_fix(config, arg)}."
            )
    if kind == "folder" and config.data_in_memory:
        if missing := _missing_folder(arg):
            raise ValueError(missing)
        raise ValueError(
            f"config.data_in_memory=True (this recipe reads {_setup(config)} into memory) "
            f"does not fit {spec!r}: for your own images use --config folder "
            f"--config.dataset={spec}, or add --config.data_in_memory=False."
        )


def _not_a_source(config: Any, spec: str) -> str:
    if spec in KNOWN_DATASETS:
        size, channels, _ = KNOWN_DATASETS[spec]
        head = f"config.dataset={spec!r} is no data source (TFDS datasets are 'tfds:{spec}')"
        if channels == config.image_channels:
            return f"{head}: use --config.dataset=tfds:{spec}."
        return f"{head}, and this recipe's settings are for {_setup(config)}: {_fix(config, spec)}."
    if spec and os.path.isdir(os.path.expanduser(spec)):
        return f"config.dataset={spec!r} is a folder: write --config.dataset=folder:{spec}."
    return f"Unknown data source spec {spec!r}. Accepted forms: " + "; ".join(SPEC_FORMS) + "."


def _kind(channels: int) -> str:
    return "RGB" if channels == 3 else "grayscale"


def _setup(config: Any) -> str:
    """What the config's images are: 'Fashion-MNIST's 28x28 grayscale images' (the demo
    recipes), or their size and kind."""
    size, channels = config.image_size, config.image_channels
    whose = "Fashion-MNIST's " if (size, channels) == (28, 1) else ""
    return f"{whose}{size}x{size} {_kind(channels)} images"


def _fix(config: Any, name: str) -> str:
    """'use --config RECIPE, or ... the overrides' that make the config fit dataset ``name``."""
    size, channels, suffix = KNOWN_DATASETS[name]
    recipe = f"{config.method}_{suffix}" if suffix else None
    overrides = f"--config.dataset=tfds:{name} --config.image_size={size} "
    overrides += f"--config.image_channels={channels}"
    if channels == 3 and config.augment == "grayscale":
        overrides += " --config.augment=" + ("simclr_cifar" if size <= 32 else "simclr_imagenet")
    elif channels == 1:
        overrides += " --config.augment=grayscale"
    if recipe and _shipped_recipe(recipe):
        return f"use a recipe made for it, --config {recipe}, or add {overrides}"
    return f"add {overrides}"


def _shipped_recipe(name: str) -> bool:
    """Whether a recipe ``name`` ships with ssl_jax (ssl_jax.recipes finds them the same way; it
    is not imported here: it imports ssl_jax.config, which calls check_dataset)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return any(
        os.path.isfile(os.path.join(folder, name + ".py"))
        for folder in (os.path.join(package, "configs"), os.path.join(package, "..", "configs"))
    )


def _pass_a_folder() -> str:
    return (
        "pass --config.dataset=folder:/path/to/images (JPEG/PNG files; sub-folders "
        "DIR/<class>/ give labels, DIR/train/ and DIR/test/ a held-out split)"
    )


def _missing_folder(path: str) -> str | None:
    """The line saying that ``path`` is no folder, or None when it is one."""
    folder = os.path.expanduser(path)
    if os.path.isdir(folder):
        return None
    what = "is not a folder" if os.path.exists(folder) else "does not exist"
    return (
        f"folder {path} {what}: config.dataset=folder:{path} needs a folder of images "
        "(JPEG/PNG; DIR/<class>/ sub-folders give labels)."
    )


def source_from_config(
    config: Any, split: str | None = None, *, unreadable: str | None = None
) -> Source:
    """The configured data source (for training, or another split for evaluation).

    For a ``folder:`` dataset, images load with ``config.image_channels`` channels at
    ``config.data_image_size`` (default: ``config.image_size``), and ``unreadable`` says what an
    undecodable file does: 'substitute' (the next readable file, with a warning) or 'raise' (an
    error naming it). By default the training split substitutes (a shuffled stream) and every
    other split raises (evaluation must score the right images).
    """
    split = split or config.train_split
    kwargs: dict[str, Any] = {}
    image_size = config.data_image_size
    if config.data_in_memory:
        kwargs["in_memory"] = True
    if config.dataset.startswith(FOLDER):
        if config.dataset == FOLDER:
            raise ValueError(f"config.dataset is not set: {_pass_a_folder()}.")
        if missing := _missing_folder(config.dataset[len(FOLDER) :]):
            raise FileNotFoundError(missing)
        kwargs["channels"] = config.image_channels
        default = "substitute" if split == config.train_split else "raise"
        kwargs["unreadable"] = unreadable or default
        image_size = image_size or config.image_size
    if config.dataset == "synthetic":
        shape = (config.image_size, config.image_size, config.image_channels)
        kwargs = dict(
            image_shape=shape,
            num_examples=config.synthetic_examples,
            num_classes=config.synthetic_classes,
        )
    return get_source(
        config.dataset,
        split=split,
        data_dir=config.data_dir,
        image_size=image_size,
        seed=config.seed,
        **kwargs,
    )


def check_source(source: Source, config: Any) -> None:
    """A ValueError naming the fix when the source's images do not fit the config: channels
    (colour files in a folder read as grayscale included), or smaller than the views."""
    h, w, c = source.image_shape
    if c != config.image_channels:
        raise ValueError(
            f"The dataset {config.dataset!r} has {c}-channel images but "
            f"config.image_channels={config.image_channels}: set --config.image_channels={c}."
        )
    if c == 1 and (colour := _colour_file(source)):
        raise ValueError(
            f"{config.dataset} holds colour images ({colour}), but config.image_channels=1 "
            "would train on grayscale conversions of them: use --config folder (a recipe for "
            "RGB photos), or add --config.image_channels=3 --config.augment=simclr_imagenet."
        )
    if min(h, w) < config.image_size:
        raise ValueError(
            f"The dataset's images are {h}x{w} but config.image_size={config.image_size} asks "
            f"for larger views: set --config.image_size to at most {min(h, w)} (or set "
            "config.data_image_size to upsample on the host)."
        )


def _colour_file(source: Source) -> str | None:
    """The first of a few files spread over an image folder that has colour (channels that
    differ visibly, not a gray image stored as RGB), or None (also for other sources)."""
    files, root = getattr(source, "files", None), getattr(source, "root", None)
    if not files or root is None:
        return None
    from ssl_jax.data.image_file import decode_image, max_image_pixels

    n = len(files)
    for i in np.unique(np.linspace(0, n - 1, min(n, _COLOUR_PROBES)).round().astype(int)):
        try:
            rgb = decode_image(
                os.path.join(root, files[i]),
                image_size=32,
                mode="RGB",
                max_pixels=getattr(source, "max_pixels", None) or max_image_pixels(),
            ).astype(np.int16)
        except Exception:  # noqa: BLE001 - an unreadable file is the source's to report
            continue
        spread = rgb.max(axis=-1) - rgb.min(axis=-1)
        if np.mean(spread > 16) > 0.01:
            return files[i]
    return None


def no_labels_message(config: Any, source: Source, what: str = "are skipped") -> str | None:
    """One line saying that the training split ``source`` has no labels, so that the kNN
    monitor and the linear/kNN evaluation ``what`` (e.g. 'are skipped'), and how to get labels;
    None when it has labels."""
    if source.num_classes:
        return None
    line = f"no labels in {config.dataset}"
    root = getattr(source, "root", None)
    if root is not None:
        line += f" (no class subfolders): the kNN monitor and the linear/kNN evaluation {what}"
        return f"{line}; put images in {root}/<class>/ to get them"
    return f"{line}: the kNN monitor and the linear/kNN evaluation {what}"
