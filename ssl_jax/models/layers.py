"""The layers the encoders and heads share: the bias-free ``nnx.Conv`` factory over the
convolution kernels of :mod:`ssl_jax.kernels`, BatchNorm with PyTorch's defaults, the image-input
check, and :func:`without_gpu_channel_padding` (a model's graph definition whose ``'auto'``
convolutions trace without the GPU channel padding, for counting the model's own FLOPs).

BatchNorm follows PyTorch's defaults expressed in Flax's convention (momentum 0.9, i.e. torch's
0.1; epsilon 1e-5).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ssl_jax.kernels import AutoConv, get_conv_general_dilated

BN_MOMENTUM = 0.9  # Flax convention: running = momentum * running + (1 - momentum) * batch.
BN_EPSILON = 1e-5

# Kaiming-normal with fan_out, as torchvision initialises ResNet convolutions (untruncated normal,
# std = sqrt(2 / (k_h * k_w * out_channels))).
kaiming_normal_fan_out = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def make_conv(
    in_features: int,
    out_features: int,
    kernel_size: int,
    *,
    strides: int = 1,
    padding: int | str | Sequence[tuple[int, int]] | None = None,
    conv_impl: str = "auto",
    pad_gpu_channels: bool = True,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    kernel_init: Callable[..., jax.Array] = kaiming_normal_fan_out,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """A bias-free 2-D ``nnx.Conv`` (NHWC / HWIO) using the chosen convolution implementation.

    Args:
      in_features, out_features: channel counts.
      kernel_size: square kernel side.
      strides: square stride.
      padding: symmetric padding per side as an int, a lax padding string, or explicit pairs.
        ``None`` (default) pads ``(kernel_size - 1) // 2`` per side, like torchvision's
        ``padding=k // 2`` for odd kernels, so a stride-2 3x3 conv aligns as in PyTorch.
      conv_impl: ``'xla'``, ``'im2col'``, ``'winograd'`` (Winograd where it applies, im2col for
        the rest) or ``'auto'`` (``'winograd'`` on CPU, XLA elsewhere); see
        :func:`ssl_jax.kernels.get_conv_general_dilated`.
      pad_gpu_channels: with ``conv_impl='auto'`` on GPU, zero-pad fewer than
        :data:`ssl_jax.kernels.GPU_MIN_IN_CHANNELS` input channels for cuDNN (same result).
      dtype: compute dtype; param_dtype: storage dtype of the kernel.
      kernel_init: kernel initialiser (default: torchvision's kaiming-normal, fan_out).
      rngs: NNX random streams.
    """
    if padding is None:
        padding = (kernel_size - 1) // 2
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    return nnx.Conv(
        in_features,
        out_features,
        (kernel_size, kernel_size),
        strides=(strides, strides),
        padding=padding,
        use_bias=False,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=kernel_init,
        conv_general_dilated=get_conv_general_dilated(conv_impl, pad_gpu_channels=pad_gpu_channels),
        rngs=rngs,
    )


def make_batch_norm(
    num_features: int,
    *,
    dtype: Any,
    param_dtype: Any,
    zero_scale: bool = False,
    use_bias: bool = True,
    rngs: nnx.Rngs,
) -> nnx.BatchNorm:
    """BatchNorm with torch defaults; statistics and parameters in ``param_dtype`` (float32)."""
    return nnx.BatchNorm(
        num_features,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        dtype=dtype,
        param_dtype=param_dtype,
        use_bias=use_bias,
        scale_init=nnx.initializers.zeros_init() if zero_scale else nnx.initializers.ones_init(),
        rngs=rngs,
    )


def check_image_input(x: jax.Array, *, in_channels: int, min_size: int, hint: str = "") -> None:
    """Raise a ValueError unless ``x`` is ``[B, H, W, in_channels]`` with ``H, W >= min_size``.

    Uses static shapes only, so it runs at trace time under ``jax.jit``.
    """
    if x.ndim != 4:
        raise ValueError(f"Expected images of shape [B, H, W, C], got shape {tuple(x.shape)}.")
    if x.shape[-1] != in_channels:
        raise ValueError(
            f"Expected {in_channels} input channels (channels last, [B, H, W, C]), "
            f"got shape {tuple(x.shape)}."
        )
    h, w = x.shape[1], x.shape[2]
    if h < min_size or w < min_size:
        raise ValueError(
            f"Input of {h}x{w} pixels is too small for this architecture: the minimum input "
            f"size is {min_size}x{min_size}.{hint}"
        )


def without_gpu_channel_padding(tree: Any) -> Any:
    """``tree`` with the ``'auto'`` convolutions of every NNX graph definition in it set not to
    pad their input channels on GPU (:class:`ssl_jax.kernels.AutoConv`); all else unchanged.

    Graph definitions are found as pytree nodes and as fields of dataclasses (the static
    ``graphdef`` fields of a method's ``flax.struct`` train state). A function traced with the
    result computes the model's own arithmetic, not the zeros added for cuDNN: what MFU counts
    (``benchmarks/common.py``, ``step_flops``). Being a different graph definition, it traces
    anew rather than reusing a padded trace.
    """

    def is_node(x: Any) -> bool:
        return isinstance(x, nnx.GraphDef) or _is_dataclass_instance(x)

    def unpad(x: Any) -> Any:
        if isinstance(x, nnx.GraphDef):
            return _unpadded_graphdef(x)
        if _is_dataclass_instance(x):
            changes = {
                f.name: without_gpu_channel_padding(getattr(x, f.name))
                for f in dataclasses.fields(x)
                if f.init
            }
            return dataclasses.replace(x, **changes)
        return x

    return jax.tree.map(unpad, tree, is_leaf=is_node)


def _is_dataclass_instance(x: Any) -> bool:
    return dataclasses.is_dataclass(x) and not isinstance(x, type)


def _unpadded_graphdef(graphdef: nnx.GraphDef) -> nnx.GraphDef:
    attributes = []
    for key, attr in graphdef.attributes:
        value = getattr(attr, "value", None)
        if isinstance(value, AutoConv) and value.pad_gpu_channels:
            attr = dataclasses.replace(attr, value=AutoConv(pad_gpu_channels=False))
        attributes.append((key, attr))
    return dataclasses.replace(graphdef, attributes=attributes)
