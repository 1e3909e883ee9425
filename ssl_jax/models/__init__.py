"""Encoders (ResNet, ConvNet) and projection / prediction heads, in Flax NNX.

Encoders map ``[B, H, W, C]`` images to ``[B, num_features]`` float32 features; build one by name
with :func:`get_encoder`. The layers they share (the ``nnx.Conv`` factory, BatchNorm, the input
check) are in :mod:`ssl_jax.models.layers`; the convolution kernels in :mod:`ssl_jax.kernels`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flax import nnx

from ssl_jax.kernels import get_conv_general_dilated, im2col_conv_general_dilated
from ssl_jax.models.convnet import ConvNet
from ssl_jax.models.heads import Predictor, ProjectionMLP
from ssl_jax.models.layers import make_conv
from ssl_jax.models.resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    ResNet18,
    ResNet34,
    ResNet50,
)

ENCODERS: dict[str, Callable[..., nnx.Module]] = {
    "resnet18": ResNet18,
    "resnet34": ResNet34,
    "resnet50": ResNet50,
    "convnet": ConvNet,
}


def get_encoder(name: str, **kwargs: Any) -> ResNet | ConvNet:
    """Build an encoder by name: ``'resnet18'``, ``'resnet34'``, ``'resnet50'`` or ``'convnet'``.

    ``kwargs`` go to the constructor (``rngs`` is required), e.g.
    ``get_encoder('resnet18', stem='cifar', rngs=nnx.Rngs(0))``.
    """
    key = name.lower()
    if key not in ENCODERS:
        raise ValueError(f"Unknown encoder {name!r}; valid names: {sorted(ENCODERS)}.")
    return ENCODERS[key](**kwargs)


__all__ = [
    "ENCODERS",
    "BasicBlock",
    "Bottleneck",
    "ConvNet",
    "Predictor",
    "ProjectionMLP",
    "ResNet",
    "ResNet18",
    "ResNet34",
    "ResNet50",
    "get_conv_general_dilated",
    "get_encoder",
    "im2col_conv_general_dilated",
    "make_conv",
]
