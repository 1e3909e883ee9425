"""Encoders by name, each owning its settings: ``config.model.encoder`` names one and
``config.model.<block>`` holds the settings of its family (``config.model.convnet.features``,
``config.model.resnet.stem``).

An encoder file registers its names here, with a frozen dataclass of settings (defaults, one
comment per field, ``validate()``, ``kwargs()`` for the constructor and, optionally,
``head_cells``: how many cells the projection head should average, see
:class:`ssl_jax.methods.network.SSLNetwork`)::

    ENCODERS.add("convnet", EncoderEntry("convnet", settings=ConvNetSettings, constructor=ConvNet))

The config schema, validation and the methods' network builder read this registry; none of them
knows one encoder from another.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from flax import nnx

from ssl_jax.registry import Registry


@dataclasses.dataclass(frozen=True)
class EncoderEntry:
    """One registered encoder: its settings block, settings class and constructor."""

    block: str  # the settings live in config.model.<block>
    settings: type  # a frozen dataclass: defaults, validate(), kwargs()
    constructor: Callable[..., nnx.Module]  # constructor(**settings.kwargs(), in_channels=,
    # dtype=, conv_impl=, rngs=)


ENCODERS: Registry[EncoderEntry] = Registry("encoder", field="config.model.encoder")


def settings_blocks() -> dict[str, type]:
    """``{block: settings class}`` of every registered encoder family."""
    return {entry.block: entry.settings for _, entry in ENCODERS.items()}


def encoder_settings(model_config: Any) -> Any:
    """The settings (a dataclass instance) of the encoder ``model_config.encoder`` names, from
    its block of ``model_config`` (``config.model``)."""
    entry = ENCODERS.get(model_config.encoder)
    return entry.settings(**model_config[entry.block])


def validate_encoder_config(model_config: Any) -> None:
    """A ValueError naming the field when ``config.model``'s encoder or its settings are bad."""
    ENCODERS.get(model_config.encoder)
    for block, settings in settings_blocks().items():
        settings(**model_config[block]).validate()


def encoder_from_config(
    model_config: Any, *, in_channels: int, dtype: Any, rngs: nnx.Rngs
) -> nnx.Module:
    """The encoder ``config.model`` describes (name, settings block, ``conv_impl``)."""
    entry = ENCODERS.get(model_config.encoder)
    settings = entry.settings(**model_config[entry.block])
    return entry.constructor(
        **settings.kwargs(),
        in_channels=in_channels,
        dtype=dtype,
        conv_impl=model_config.conv_impl,
        rngs=rngs,
    )
