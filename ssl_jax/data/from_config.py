"""The data source a run's config names, for training, evaluation or embedding: written once.

source = source_from_config(config)                    # the training split
test = source_from_config(config, config.eval_split)   # another split (unreadable files raise)
check_source(source, config)                            # channels and size fit the config
"""

from __future__ import annotations

from typing import Any

from ssl_jax.data.registry import get_source
from ssl_jax.data.sources import Source


def source_from_config(
    config: Any, split: str | None = None, *, unreadable: str | None = None
) -> Source:
    """The configured data source (for training, or another split for evaluation).

    For a ``folder:`` dataset, images load with ``config.image_channels`` channels, and
    ``unreadable`` says what an undecodable file does: 'substitute' (the next readable file,
    with a warning) or 'raise' (an error naming it). By default the training split substitutes
    (a shuffled stream) and every other split raises (evaluation must score the right images).
    """
    split = split or config.train_split
    kwargs: dict[str, Any] = {}
    if config.data_in_memory:
        kwargs["in_memory"] = True
    if config.dataset.startswith("folder:"):
        kwargs["channels"] = config.image_channels
        default = "substitute" if split == config.train_split else "raise"
        kwargs["unreadable"] = unreadable or default
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
        image_size=config.data_image_size,
        seed=config.seed,
        **kwargs,
    )


def check_source(source: Source, config: Any) -> None:
    """A ValueError naming the fix when the source's images do not fit the config (channels,
    or smaller than the views)."""
    h, w, c = source.image_shape
    if c != config.image_channels:
        raise ValueError(
            f"The dataset {config.dataset!r} has {c}-channel images but "
            f"config.image_channels={config.image_channels}: set --config.image_channels={c}."
        )
    if min(h, w) < config.image_size:
        raise ValueError(
            f"The dataset's images are {h}x{w} but config.image_size={config.image_size} asks "
            f"for larger views: set --config.image_size to at most {min(h, w)} (or set "
            "config.data_image_size to upsample on the host)."
        )
