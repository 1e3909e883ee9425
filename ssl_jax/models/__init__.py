"""Encoders (ResNet, ConvNet, ViT) and projection / prediction heads, in Flax NNX.

Encoders map ``[B, H, W, C]`` images to ``[B, num_features]`` float32 features; build one by name
with :func:`get_encoder`, or from a config with :func:`encoder_from_config` (each encoder
registers its names and its settings block in its own file: :mod:`ssl_jax.models.registry`).
The layers they share (the ``nnx.Conv`` factory, BatchNorm, the input check) are in
:mod:`ssl_jax.models.layers`; the convolution kernels in :mod:`ssl_jax.kernels`.
"""

from __future__ import annotations

from typing import Any

from ssl_jax.kernels import get_conv_general_dilated, im2col_conv_general_dilated
from ssl_jax.models.convnet import ConvNet, ConvNetSettings
from ssl_jax.models.decay import decay_mask_for
from ssl_jax.models.dino_head import DINOHead
from ssl_jax.models.heads import Predictor, ProjectionMLP
from ssl_jax.models.layers import make_conv
from ssl_jax.models.registry import (
    ENCODERS,
    EncoderEntry,
    encoder_from_config,
    encoder_settings,
    settings_blocks,
    validate_encoder_config,
)
from ssl_jax.models.resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    ResNet18,
    ResNet34,
    ResNet50,
    ResNetSettings,
)
from ssl_jax.models.vit import (
    VisionTransformer,
    ViTBase,
    ViTLarge,
    ViTSettings,
    ViTSmall,
    ViTTiny,
)


def get_encoder(name: str, **kwargs: Any) -> Any:
    """Build an encoder by name: ``'resnet18'``, ``'resnet34'``, ``'resnet50'``, ``'convnet'`` or
    ``'vit_tiny'`` / ``'vit_small'`` / ``'vit_base'`` / ``'vit_large'``.

    ``kwargs`` go to the constructor (``rngs`` is required), e.g.
    ``get_encoder('resnet18', stem='cifar', rngs=nnx.Rngs(0))``.
    """
    key = name.lower()
    if key not in ENCODERS:
        raise ValueError(f"Unknown encoder {name!r}; valid names: {ENCODERS.names()}.")
    return ENCODERS.get(key).constructor(**kwargs)


__all__ = [
    "ENCODERS",
    "BasicBlock",
    "Bottleneck",
    "ConvNet",
    "ConvNetSettings",
    "DINOHead",
    "EncoderEntry",
    "Predictor",
    "ProjectionMLP",
    "ResNet",
    "ResNet18",
    "ResNet34",
    "ResNet50",
    "ResNetSettings",
    "ViTBase",
    "ViTLarge",
    "ViTSettings",
    "ViTSmall",
    "ViTTiny",
    "VisionTransformer",
    "decay_mask_for",
    "encoder_from_config",
    "encoder_settings",
    "get_conv_general_dilated",
    "get_encoder",
    "im2col_conv_general_dilated",
    "make_conv",
    "settings_blocks",
    "validate_encoder_config",
]
