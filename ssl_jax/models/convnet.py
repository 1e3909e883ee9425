"""A small convolutional encoder for 28x28 images (Fashion-MNIST / MNIST scale).

Each layer is a 3x3 convolution + BatchNorm + ReLU; the later layers downsample with stride 2,
and the output is globally average-pooled. With the defaults (channels ``(32, 64, 128, 256)``,
strides ``(1, 2, 2, 2)``) a 28x28x1 image goes 28 -> 28 -> 14 -> 7 -> 4 and becomes a
256-dimensional feature; the model has ~390k parameters.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ssl_jax.models.conv import CONV_IMPLS, make_conv
from ssl_jax.models.resnet import check_image_input, make_batch_norm


class ConvNet(nnx.Module):
    """Conv-BN-ReLU stack + global average pool: ``[B, H, W, in_channels] -> [B, num_features]``.

    Args:
      in_channels: channels of the input images (1 for Fashion-MNIST).
      features: output channels of each conv layer; the last is ``num_features``.
      strides: stride of each conv layer (same length as ``features``).
      kernel_size: square kernel side of every conv (padding ``kernel_size // 2``).
      dtype: compute dtype; parameters and BatchNorm statistics stay in ``param_dtype`` and the
        returned features are always float32.
      param_dtype: storage dtype of parameters.
      conv_impl: ``'auto'`` (im2col on CPU, XLA conv elsewhere), ``'xla'`` or ``'im2col'``.
      rngs: NNX random streams.

    Attributes:
      num_features: ``features[-1]``.
      min_input_size: ``prod(strides)``; smaller inputs raise a ValueError.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        features: Sequence[int] = (32, 64, 128, 256),
        strides: Sequence[int] = (1, 2, 2, 2),
        kernel_size: int = 3,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        conv_impl: str = "auto",
        rngs: nnx.Rngs,
    ):
        if len(features) == 0 or len(features) != len(strides):
            raise ValueError(
                f"features and strides must be non-empty and of equal length, got "
                f"features={tuple(features)}, strides={tuple(strides)}."
            )
        if conv_impl not in CONV_IMPLS:
            raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}.")
        self.in_channels = in_channels
        self.dtype = dtype
        self.conv_impl = conv_impl
        conv = functools.partial(
            make_conv, conv_impl=conv_impl, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )
        convs, norms = [], []
        c_in = in_channels
        for c_out, s in zip(features, strides, strict=True):
            convs.append(conv(c_in, c_out, kernel_size, strides=s, padding=kernel_size // 2))
            norms.append(make_batch_norm(c_out, dtype=dtype, param_dtype=param_dtype, rngs=rngs))
            c_in = c_out
        self.convs = nnx.List(convs)
        self.norms = nnx.List(norms)
        self.num_features = int(features[-1])
        self.min_input_size = math.prod(int(s) for s in strides)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x``: ``[B, H, W, in_channels]`` float images -> features ``[B, num_features]`` f32."""
        check_image_input(x, in_channels=self.in_channels, min_size=self.min_input_size)
        x = jnp.asarray(x, self.dtype)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = nnx.relu(norm(conv(x)))
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
