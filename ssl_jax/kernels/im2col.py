"""Convolution as im2col + one matmul when differentiated: :func:`im2col_conv_general_dilated`.

On XLA:CPU the stock convolution is slow to differentiate, above all the weight gradient of
strided convolutions. Written as explicit patch extraction (one strided slice per kernel tap,
concatenated on the channel axis) followed by a single 2-D matmul, both gradients become large
matmuls plus cheap slicing / padding, which XLA:CPU runs about twice as fast (measurements in
benchmarks/RESULTS.md, "Convolution formulation on XLA:CPU").

It is a ``jax.custom_vjp`` function: evaluated without differentiation (inference, feature
extraction) it runs the XLA convolution, which XLA:CPU's forward pass does well; under
reverse-mode differentiation its forward computes the patches and the matmul and keeps the
patches for the backward pass. Forward-mode differentiation (``jax.jvp``, ``jax.jacfwd``) is not
supported through it; use ``conv_impl='xla'`` for that.

Measured on the shared 2-core CPU (jitted forward + backward, train-mode BatchNorm, best of N;
the machine is shared, so absolute numbers vary ~2x with load, the ratio much less):
ConvNet, batch 256 of 28x28x1: XLA ~420-600 images/s, im2col ~560-1000 images/s;
ResNet-18 (cifar stem), batch 64 of 32x32x3: XLA ~9-15 images/s, im2col ~15-29 images/s.
Inference is unchanged (both run the XLA convolution). The price is memory: the patches kept for
the backward pass are ``k*k`` times the input activation of each convolution.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from ssl_jax.kernels.conv_config import ConvArgs, ConvConfig, conv_config, lax_conv, xla_conv


def im2col_conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
    out_sharding: Any = None,
) -> jax.Array:
    """Drop-in replacement for :func:`jax.lax.conv_general_dilated`, differentiated as im2col.

    The value is the XLA convolution's; under ``jax.grad`` / ``jax.vjp`` the forward is computed
    as patches + one matmul and the gradients as matmuls and the transpose of the patch
    extraction (see the module docstring). Handles channels-last layouts (NHWC input, HWIO
    kernel, NHWC output, and their 1-D / 3-D analogues), any kernel size, stride, explicit or
    ``'SAME'``/``'VALID'`` padding and kernel (rhs) dilation. Anything else (grouped
    convolutions, input dilation, other layouts, an explicit ``out_sharding``) falls back to
    :func:`jax.lax.conv_general_dilated`, so the result is always correct.

    Args:
      lhs: input, ``[N, *spatial, C_in]``.
      rhs: kernel, ``[*kernel_spatial, C_in, C_out]``.
      window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
      feature_group_count, batch_group_count, precision, preferred_element_type, out_sharding:
        as for :func:`jax.lax.conv_general_dilated`.

    Returns:
      ``[N, *out_spatial, C_out]``, equal to the XLA convolution up to float rounding.
    """

    args = ConvArgs(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, batch_group_count, precision, preferred_element_type, out_sharding,
    )  # fmt: skip
    config = conv_config(args)
    if config is None:
        return lax_conv(args)
    return conv_im2col_vjp(args.lhs, args.rhs, config)


def im2col_matmul(lhs: jax.Array, rhs: jax.Array, cfg: ConvConfig) -> jax.Array:
    """The convolution as patch extraction + one 2-D matmul (channels last)."""
    nsp = lhs.ndim - 2
    kernel_spatial = rhs.shape[:nsp]
    c_in, c_out = rhs.shape[nsp], rhs.shape[nsp + 1]
    if any(p != (0, 0) for p in cfg.pads):
        # lax.pad (unlike jnp.pad) also accepts negative padding, as conv_general_dilated does.
        zero = jnp.zeros((), lhs.dtype)
        x = lax.pad(lhs, zero, [(0, 0, 0), *((lo, hi, 0) for lo, hi in cfg.pads), (0, 0, 0)])
    else:
        x = lhs
    eff_kernel = [(k - 1) * d + 1 for k, d in zip(kernel_spatial, cfg.rhs_dilation, strict=True)]
    out_spatial = [(x.shape[1 + i] - eff_kernel[i]) // cfg.strides[i] + 1 for i in range(nsp)]
    # One strided slice per kernel tap; concatenating them on the channel axis gives patches whose
    # last axis is ordered (tap, c_in), which is exactly rhs.reshape(-1, c_out)'s row order.
    cols = []
    for taps in itertools.product(*(range(k) for k in kernel_spatial)):
        start = [t * d for t, d in zip(taps, cfg.rhs_dilation, strict=True)]
        limit = [
            st + (o - 1) * s + 1 for st, o, s in zip(start, out_spatial, cfg.strides, strict=True)
        ]
        cols.append(lax.slice(x, (0, *start, 0), (x.shape[0], *limit, c_in), (1, *cfg.strides, 1)))
    patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
    # A 2-D matmul: XLA:CPU runs the weight gradient of a 4-D dot_general much more slowly.
    rows = x.shape[0] * math.prod(out_spatial)
    y = lax.dot_general(
        patches.reshape(rows, len(cols) * c_in),
        rhs.reshape(len(cols) * c_in, c_out),
        (((1,), (0,)), ((), ())),
        precision=cfg.precision,
        preferred_element_type=cfg.preferred_element_type,
    )
    return y.reshape(x.shape[0], *out_spatial, c_out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_im2col_vjp(lhs: jax.Array, rhs: jax.Array, cfg: ConvConfig) -> jax.Array:
    """The XLA convolution, differentiated as :func:`im2col_matmul`."""
    # Not differentiated: the XLA convolution (XLA:CPU's forward pass is good; measured ~1.7x
    # faster than patches + matmul on the ConvNet).
    return xla_conv(lhs, rhs, cfg)


def _conv_im2col_fwd(lhs: jax.Array, rhs: jax.Array, cfg: ConvConfig):
    # Differentiated: im2col forward; its vjp closure (holding the patches) is the residual.
    # (A custom_jvp with an XLA-conv primal and im2col tangents also works, and supports jvp,
    # but measured ~15% slower per training step on the ConvNet.)
    return jax.vjp(lambda x, w: im2col_matmul(x, w, cfg), lhs, rhs)


def _conv_im2col_bwd(cfg: ConvConfig, vjp_fn: Callable, g: jax.Array):
    return vjp_fn(g)


conv_im2col_vjp.defvjp(_conv_im2col_fwd, _conv_im2col_bwd)
