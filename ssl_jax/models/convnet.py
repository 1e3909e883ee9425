"""A small convolutional encoder for 28x28 images (Fashion-MNIST / MNIST scale).

Each layer is a 3x3 convolution + BatchNorm + ReLU; the later layers downsample with stride 2,
and the last map is average-pooled to ``output_grid x output_grid`` cells and flattened. With the
defaults (channels ``(32, 64, 128, 256)``, strides ``(1, 2, 2, 2)``, grid 1) a 28x28x1 image goes
28 -> 28 -> 14 -> 7 -> 4 and becomes a 256-dimensional feature (global average pooling); the
model has ~390k parameters. ``output_grid=4`` keeps the whole 4x4 map (4,096 features): where an
object fills a small frame, *where* a part is (a sleeve, a heel) is much of what tells classes
apart, and global pooling throws it away (on Fashion-MNIST it was worth ~3 points of linear-probe
accuracy with 600 labels, benchmarks/RESULTS.md).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ssl_jax.kernels import CONV_IMPLS
from ssl_jax.models.layers import check_image_input, make_batch_norm, make_conv
from ssl_jax.models.registry import ENCODERS, EncoderEntry


class ConvNet(nnx.Module):
    """Conv-BN-ReLU stack + global average pool: ``[B, H, W, in_channels] -> [B, num_features]``.

    Args:
      in_channels: channels of the input images (1 for Fashion-MNIST).
      features: output channels of each conv layer; the last is ``num_features``.
      strides: stride of each conv layer (same length as ``features``).
      kernel_size: square kernel side of every conv (padding ``kernel_size // 2``).
      output_grid: the last map is average-pooled into ``G x G`` cells (PyTorch's adaptive
        average pooling bins) and flattened: ``G * G * features[-1]`` features; 1 is global
        average pooling.
      dtype: compute dtype; parameters and BatchNorm statistics stay in ``param_dtype`` and the
        returned features are always float32.
      param_dtype: storage dtype of parameters.
      conv_impl: ``'auto'`` (Winograd / im2col on CPU, XLA conv elsewhere), ``'xla'``, ``'im2col'``
        or ``'winograd'``.
      rngs: NNX random streams.

    Attributes:
      num_features: ``output_grid ** 2 * features[-1]``.
      min_input_size: ``prod(strides)``; smaller inputs raise a ValueError.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        features: Sequence[int] = (32, 64, 128, 256),
        strides: Sequence[int] = (1, 2, 2, 2),
        kernel_size: int = 3,
        output_grid: int = 1,
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
        if output_grid < 1:
            raise ValueError(f"output_grid must be >= 1, got {output_grid}.")
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
        self.output_grid = int(output_grid)
        self.num_features = int(features[-1]) * self.output_grid**2
        # The last map must have at least output_grid pixels a side.
        stride = math.prod(int(s) for s in strides)
        self.min_input_size = max(stride, stride * (self.output_grid - 1) + 1)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x``: ``[B, H, W, in_channels]`` float images -> features ``[B, num_features]`` f32."""
        hint = f" (output_grid={self.output_grid} needs a last map of at least that many pixels)"
        check_image_input(
            x,
            in_channels=self.in_channels,
            min_size=self.min_input_size,
            hint=hint if self.output_grid > 1 else "",
        )
        x = jnp.asarray(x, self.dtype)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = nnx.relu(norm(conv(x)))
        return grid_pool(x.astype(jnp.float32), self.output_grid)


def _bins(n: int, g: int) -> list[tuple[int, int]]:
    # Bin i covers [floor(i n / g), ceil((i + 1) n / g)): PyTorch's AdaptiveAvgPool2d bins.
    return [(i * n // g, -(-(i + 1) * n // g)) for i in range(g)]


def grid_pool(x: jax.Array, grid: int) -> jax.Array:
    """``[B, H, W, C]`` -> ``[B, grid * grid * C]``: the mean of each cell of a ``grid x grid``
    partition (adaptive bins; they overlap by a pixel when ``grid`` does not divide the side),
    flattened row-major (cell by cell, channels last). ``grid=1`` is global average pooling."""
    _, h, w, _ = x.shape
    if grid == 1:
        return jnp.mean(x, axis=(1, 2))
    if h == w == grid:
        return x.reshape(x.shape[0], -1)
    cells = [x[:, a:b, c:d].mean(axis=(1, 2)) for a, b in _bins(h, grid) for c, d in _bins(w, grid)]
    return jnp.stack(cells, axis=1).reshape(x.shape[0], -1)


@dataclasses.dataclass(frozen=True)
class ConvNetSettings:
    """The convnet's settings: ``config.model.convnet.*``."""

    features: tuple = (32, 64, 128, 256)  # channels of its conv layers
    grid: int = 1  # average-pool the last map to GxG, flatten (1: global)
    head_pools: bool = False  # grid > 1: the projection head averages the GxG cells

    def validate(self) -> None:
        features = tuple(self.features)
        if not (features and all(f >= 1 for f in features)):
            raise ValueError(
                f"config.model.convnet.features={features!r} is invalid: must be a non-empty "
                "tuple of channel counts >= 1."
            )
        if not self.grid >= 1:
            raise ValueError(f"config.model.convnet.grid={self.grid!r} is invalid: must be >= 1.")

    def kwargs(self) -> dict[str, Any]:
        features = tuple(self.features)
        strides = (1,) + (2,) * (len(features) - 1)
        return dict(features=features, strides=strides, output_grid=int(self.grid))

    @property
    def head_cells(self) -> int:
        """How many cells of the features the projection head averages (1: none)."""
        return int(self.grid) ** 2 if self.head_pools else 1


ENCODERS.add(
    "convnet", EncoderEntry(block="convnet", settings=ConvNetSettings, constructor=ConvNet)
)
