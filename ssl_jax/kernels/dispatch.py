"""Choosing a convolution formulation by backend and ``conv_impl``, and the GPU channel padding.

``conv_impl`` is one of :data:`CONV_IMPLS`: ``'xla'`` (:func:`jax.lax.conv_general_dilated`),
``'im2col'`` (:mod:`ssl_jax.kernels.im2col`), ``'winograd'`` (:mod:`ssl_jax.kernels.winograd`:
Winograd where it applies, im2col for the rest) or ``'auto'``
(:func:`auto_conv_general_dilated`): on the CPU backend Winograd / im2col, on GPU the library
convolution (cuDNN), with a stem's few input channels zero-padded to :data:`GPU_MIN_IN_CHANNELS`
when ``pad_gpu_channels`` is true. Nothing here is mutable: the padding is an argument, fixed
for a model's convolutions when they are built (:func:`get_conv_general_dilated`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax import lax

from ssl_jax.kernels.conv_config import channels_last_dimension_numbers
from ssl_jax.kernels.im2col import im2col_conv_general_dilated
from ssl_jax.kernels.winograd import winograd_conv_general_dilated

ConvImpl = Literal["auto", "xla", "im2col", "winograd"]
CONV_IMPLS: tuple[str, ...] = ("auto", "xla", "im2col", "winograd")

# On GPU a convolution over fewer input channels than this (a stem over RGB or grayscale pixels)
# gets no tensor-core kernel from cuDNN: the ResNet-50 stem's 7x7 conv over 3 channels ran with
# DEFAULT_MATH at ~33 TFLOP/s (bf16, H100; benchmarks/RESULTS.md). Zero-padding the channels to 8
# gives it one, at the same result.
GPU_MIN_IN_CHANNELS = 8


def pad_in_channels(lhs: jax.Array, rhs: jax.Array, multiple: int) -> tuple[jax.Array, jax.Array]:
    """Zero-pad the input-feature axis of NHWC ``lhs`` and HWIO ``rhs`` to a multiple of
    ``multiple``. The convolution of the padded pair equals the original's (the added input
    channels are zero), and so do its gradients with respect to the original operands (the pad's
    transpose is a slice)."""
    pad = -lhs.shape[-1] % multiple
    if pad == 0:
        return lhs, rhs
    lhs = jnp.pad(lhs, [(0, 0)] * (lhs.ndim - 1) + [(0, pad)])
    rhs = jnp.pad(rhs, [(0, 0)] * (rhs.ndim - 2) + [(0, pad), (0, 0)])
    return lhs, rhs


def auto_conv_general_dilated(
    lhs: jax.Array, rhs: jax.Array, *args: Any, pad_gpu_channels: bool = True, **kwargs: Any
) -> jax.Array:
    """On the CPU backend :func:`winograd_conv_general_dilated` (Winograd for the 3x3 stride-1
    convolutions it applies to, im2col for the others) when JAX has one device, else
    :func:`im2col_conv_general_dilated`; the XLA convolution on other backends. Decided at
    trace time. On GPU, with ``pad_gpu_channels``, a channels-last convolution over fewer than
    ``GPU_MIN_IN_CHANNELS`` input channels is computed with its channels zero-padded to that
    (see :func:`pad_in_channels`); without it (for counting a model's own FLOPs: MFU counts the
    model's arithmetic, not the zeros added for cuDNN), as it is. ``args`` and ``kwargs`` are
    :func:`jax.lax.conv_general_dilated`'s."""
    backend = jax.default_backend()
    if backend == "cpu":
        # Winograd's weight gradient is a sum over the batch in its own 16-tap basis: with the
        # batch sharded over several devices XLA all-reduces it there, [16, C_in, C_out] instead
        # of the kernel's [3, 3, C_in, C_out] (16/9 of the bytes, in a shape that is no
        # parameter's). So with more than one device 'auto' keeps im2col.
        if jax.device_count() == 1:
            return winograd_conv_general_dilated(lhs, rhs, *args, **kwargs)
        return im2col_conv_general_dilated(lhs, rhs, *args, **kwargs)
    if (
        backend == "gpu"
        and pad_gpu_channels
        and lhs.shape[-1] < GPU_MIN_IN_CHANNELS
        and kwargs.get("feature_group_count", 1) == 1
        and kwargs.get("batch_group_count", 1) == 1
        and lax.conv_dimension_numbers(lhs.shape, rhs.shape, kwargs.get("dimension_numbers"))
        == channels_last_dimension_numbers(lhs.ndim - 2)
    ):
        lhs, rhs = pad_in_channels(lhs, rhs, GPU_MIN_IN_CHANNELS)
    return lax.conv_general_dilated(lhs, rhs, *args, **kwargs)


@dataclasses.dataclass(frozen=True)
class AutoConv:
    """:func:`auto_conv_general_dilated` with its ``pad_gpu_channels`` fixed, as a value.

    What ``conv_impl='auto'`` gives :class:`flax.nnx.Conv`. It compares and hashes by its field,
    so two models built alike have equal graph definitions (and share jit caches), while a model
    whose 'auto' convolutions do not pad traces as a different function.
    """

    pad_gpu_channels: bool = True

    def __call__(self, lhs: jax.Array, rhs: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
        return auto_conv_general_dilated(
            lhs, rhs, *args, pad_gpu_channels=self.pad_gpu_channels, **kwargs
        )


def get_conv_general_dilated(
    conv_impl: str, *, pad_gpu_channels: bool = True
) -> Callable[..., jax.Array]:
    """The ``conv_general_dilated`` function for ``conv_impl`` in :data:`CONV_IMPLS`.

    ``pad_gpu_channels`` applies to ``'auto'`` only (an :class:`AutoConv`); the other
    implementations are the plain functions.
    """
    if conv_impl == "xla":
        return lax.conv_general_dilated
    if conv_impl == "im2col":
        return im2col_conv_general_dilated
    if conv_impl == "winograd":
        return winograd_conv_general_dilated
    if conv_impl == "auto":
        return AutoConv(pad_gpu_channels=pad_gpu_channels)
    raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}.")
