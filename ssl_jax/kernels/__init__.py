"""Convolution kernels: the XLA convolution, im2col + one matmul, or Winograd's F(2x2, 3x3), and
the choice between them by backend and ``conv_impl``.

* :mod:`ssl_jax.kernels.im2col`: :func:`im2col_conv_general_dilated`, differentiated as patch
  extraction + one 2-D matmul (XLA:CPU differentiates its own convolution slowly).
* :mod:`ssl_jax.kernels.winograd`: :func:`winograd_conv_general_dilated`, Winograd's F(2x2, 3x3)
  for 3x3 stride-1 convolutions (im2col for the rest).
* :mod:`ssl_jax.kernels.dispatch`: :func:`get_conv_general_dilated` for a ``conv_impl`` in
  :data:`CONV_IMPLS`; ``'auto'`` (:func:`auto_conv_general_dilated`) uses Winograd / im2col on
  the CPU backend and the library convolution (cuDNN) on GPU, where ``pad_gpu_channels`` zero-pads
  a stem's few input channels (:func:`pad_in_channels`).
* :mod:`ssl_jax.kernels.conv_config`: the argument normalisation and fallbacks they share.

Every kernel has the signature of :func:`jax.lax.conv_general_dilated`, so it is passed to
:class:`flax.nnx.Conv` through its ``conv_general_dilated=`` argument
(:func:`ssl_jax.models.layers.make_conv`) and the parameters of a model do not depend on the
implementation: a checkpoint trained with one runs with the other. The package holds no mutable
state and does not import :mod:`ssl_jax.models`.
"""

from ssl_jax.kernels.dispatch import (
    CONV_IMPLS,
    GPU_MIN_IN_CHANNELS,
    AutoConv,
    ConvImpl,
    auto_conv_general_dilated,
    get_conv_general_dilated,
    pad_in_channels,
)
from ssl_jax.kernels.im2col import im2col_conv_general_dilated
from ssl_jax.kernels.winograd import WINOGRAD_MIN_IN_CHANNELS, winograd_conv_general_dilated

__all__ = [
    "CONV_IMPLS",
    "GPU_MIN_IN_CHANNELS",
    "WINOGRAD_MIN_IN_CHANNELS",
    "AutoConv",
    "ConvImpl",
    "auto_conv_general_dilated",
    "get_conv_general_dilated",
    "im2col_conv_general_dilated",
    "pad_in_channels",
    "winograd_conv_general_dilated",
]
