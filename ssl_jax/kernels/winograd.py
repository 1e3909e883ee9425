"""Winograd's F(2x2, 3x3) for 3x3 stride-1 convolutions when differentiated (im2col for the
rest): :func:`winograd_conv_general_dilated`.

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2016): each 2x2 tile of the
output of a 3x3 stride-1 convolution is A^T [(G g G^T) * (B^T d B)] A, where d is the 4x4 input
tile around it. Over channels the elementwise product becomes 16 matmuls [tiles, C_in] x
[C_in, C_out]: 16 multiplications per 2x2 outputs instead of im2col's 36, and the transformed
input is 4 values per output pixel instead of 9. The transforms are sums and differences (G also
halves), exact up to float32 rounding of a few additions.

For the 3x3 stride-1 convolutions of a ResNet's body it was 1.25-1.7x faster than im2col per
convolution on XLA:CPU (forward + backward; the ResNet-18 SimCLR step from 0.86x to 1.09x of
PyTorch eager on one core, benchmarks/RESULTS.md, "Winograd convolutions on XLA:CPU"). Like
:func:`~ssl_jax.kernels.im2col.im2col_conv_general_dilated` it is a ``jax.custom_vjp`` function:
undifferentiated it runs the XLA convolution, and forward-mode differentiation is not supported.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ssl_jax.kernels.conv_config import ConvArgs, ConvConfig, conv_config, lax_conv, xla_conv
from ssl_jax.kernels.im2col import conv_im2col_vjp

_WINO_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]])
_WINO_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
_WINO_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]])
# Products batched over the 16 tile positions: [16, P, C] x [16, C, O] -> [16, P, O].
_BATCHED = (((2,), (1,)), ((0,), (0,)))

# The Winograd path needs a 3x3, stride-1, pad-1 convolution in float32 over even sides, and at
# least this many input channels: at 8 it was no faster than im2col on one core of the 2-core CPU,
# at 16 1.25x, at 64-256 1.5-1.7x (benchmarks/RESULTS.md, "Winograd convolutions on XLA:CPU").
WINOGRAD_MIN_IN_CHANNELS = 16


def winograd_conv_general_dilated(
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
    """Drop-in replacement for :func:`jax.lax.conv_general_dilated`, differentiated with
    Winograd's F(2x2, 3x3) where it applies and as im2col elsewhere.

    Winograd applies to a channels-last 2-D convolution with a 3x3 kernel, stride 1, one pixel
    of zero padding on each side (``'SAME'``), no dilation, float32 operands, even height and
    width and at least ``WINOGRAD_MIN_IN_CHANNELS`` input channels: the body of a ResNet. Every
    other convolution goes to :func:`~ssl_jax.kernels.im2col.im2col_conv_general_dilated`
    (which itself falls back to lax for what it does not handle). As there, the undifferentiated
    value is the XLA convolution's; under ``jax.grad`` / ``jax.vjp`` the forward computes the
    transformed input (kept for the backward pass: 4 values per input pixel, against im2col's 9)
    and one product batched over the 16 tile positions, and the backward pass two more and the
    transposed transforms. Forward-mode differentiation is not supported through it. With the
    batch sharded over several devices, XLA all-reduces its weight gradient in the Winograd
    basis (``[16, C_in, C_out]``, 16/9 of the kernel's bytes): ``conv_impl='auto'`` therefore
    uses it on a single device only.

    Args and returns: as :func:`~ssl_jax.kernels.im2col.im2col_conv_general_dilated`.
    """
    args = ConvArgs(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, batch_group_count, precision, preferred_element_type, out_sharding,
    )  # fmt: skip
    config = conv_config(args)
    if config is None:
        return lax_conv(args)
    if winograd_applies(args.lhs, args.rhs, config):
        return _conv_winograd_vjp(args.lhs, args.rhs, config)
    return conv_im2col_vjp(args.lhs, args.rhs, config)


def winograd_applies(lhs: jax.Array, rhs: jax.Array, cfg: ConvConfig) -> bool:
    """Whether the normalised convolution is one Winograd's F(2x2, 3x3) computes here."""
    if lhs.ndim != 4 or rhs.shape[:2] != (3, 3):
        return False
    if cfg.strides != (1, 1) or cfg.pads != ((1, 1), (1, 1)) or cfg.rhs_dilation != (1, 1):
        return False
    f32 = jnp.dtype(jnp.float32)
    if lhs.dtype != f32 or rhs.dtype != f32:
        return False
    if cfg.preferred_element_type is not None and jnp.dtype(cfg.preferred_element_type) != f32:
        return False
    _, h, w, c_in = lhs.shape
    return h % 2 == 0 and w % 2 == 0 and c_in >= WINOGRAD_MIN_IN_CHANNELS


def _combine(coefs: np.ndarray, terms: Sequence[jax.Array]) -> jax.Array:
    """sum_k coefs[k] * terms[k], skipping zeros and multiplying only where |coef| != 1."""
    out = None
    for c, t in zip(coefs.tolist(), terms, strict=True):
        if c == 0:
            continue
        term = t if c == 1 else -t if c == -1 else c * t
        out = term if out is None else out + term
    assert out is not None
    return out


def _winograd_input(x: jax.Array) -> jax.Array:
    """B^T d B for every 4x4 input tile (stride 2): ``[N, H, W, C]`` -> ``[16, N*H*W/4, C]``."""
    n, h, w, c = x.shape
    th, tw = h // 2, w // 2
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    taps = [lax.slice_in_dim(xp, k, k + 2 * th - 1, 2, axis=1) for k in range(4)]
    rows = [_combine(b, taps) for b in _WINO_BT]
    v = []
    for r in rows:
        taps = [lax.slice_in_dim(r, k, k + 2 * tw - 1, 2, axis=2) for k in range(4)]
        v.extend(_combine(b, taps) for b in _WINO_BT)
    return jnp.stack(v).reshape(16, n * th * tw, c)


def _winograd_kernel(w: jax.Array) -> jax.Array:
    """G g G^T: ``[3, 3, C_in, C_out]`` -> ``[16, C_in, C_out]``."""
    g = jnp.asarray(_WINO_G, w.dtype)
    u = jnp.einsum("ak,klio,bl->abio", g, w, g, precision=lax.Precision.HIGHEST)
    return u.reshape(16, *w.shape[2:])


def _winograd_output(m: jax.Array, n: int, th: int, tw: int) -> jax.Array:
    """A^T M A: ``[16, N*th*tw, O]`` -> ``[N, 2*th, 2*tw, O]``, each tile's 2x2 outputs in place."""
    m = m.reshape(4, 4, n, th, tw, m.shape[-1])
    rows = [_combine(a, [m[j] for j in range(4)]) for a in _WINO_AT]  # [4, N, th, tw, O] each
    pairs = [[_combine(a, [r[j] for j in range(4)]) for a in _WINO_AT] for r in rows]
    y = jnp.stack([jnp.stack(p, axis=3) for p in pairs], axis=2)  # [N, th, 2, tw, 2, O]
    return y.reshape(n, 2 * th, 2 * tw, -1)


def _winograd_output_transpose(g: jax.Array) -> jax.Array:
    """The transpose of :func:`_winograd_output`, written out: autodiff's version of it (through
    the stacks and the reshape) ran ~3x slower on XLA:CPU."""
    n, h, w, o = g.shape
    g6 = g.reshape(n, h // 2, 2, w // 2, 2, o)
    rows = [_combine(a, [g6[:, :, i] for i in range(2)]) for a in _WINO_AT.T]
    dm = []
    for r in rows:
        dm.extend(_combine(a, [r[:, :, :, i] for i in range(2)]) for a in _WINO_AT.T)
    return jnp.stack(dm).reshape(16, n * (h // 2) * (w // 2), o)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_winograd_vjp(lhs: jax.Array, rhs: jax.Array, cfg: ConvConfig) -> jax.Array:
    return xla_conv(lhs, rhs, cfg)  # not differentiated: as conv_im2col_vjp


def _conv_winograd_fwd(lhs: jax.Array, rhs: jax.Array, cfg: ConvConfig):
    v, u = _winograd_input(lhs), _winograd_kernel(rhs)
    m = lax.dot_general(v, u, _BATCHED, precision=cfg.precision, preferred_element_type=jnp.float32)
    n, h, w, _ = lhs.shape
    return _winograd_output(m, n, h // 2, w // 2), (v, u)


def _conv_winograd_bwd(cfg: ConvConfig, res: tuple[jax.Array, jax.Array], g: jax.Array):
    v, u = res
    dm = _winograd_output_transpose(g)
    prec = {"precision": cfg.precision, "preferred_element_type": jnp.float32}
    du = lax.dot_general(v, dm, (((1,), (1,)), ((0,), (0,))), **prec)  # [16, C_in, C_out]
    dv = lax.dot_general(dm, u, (((2,), (2,)), ((0,), (0,))), **prec)  # [16, P, C_in]
    lhs_aval = jax.ShapeDtypeStruct((*g.shape[:3], v.shape[-1]), v.dtype)
    rhs_aval = jax.ShapeDtypeStruct((3, 3, *u.shape[1:]), u.dtype)
    (dx,) = jax.linear_transpose(_winograd_input, lhs_aval)(dv)
    (dw,) = jax.linear_transpose(_winograd_kernel, rhs_aval)(du)
    return dx, dw


_conv_winograd_vjp.defvjp(_conv_winograd_fwd, _conv_winograd_bwd)
