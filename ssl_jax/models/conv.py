"""Convolution layers with a choice of implementation: the XLA convolution, im2col + one matmul,
or Winograd's F(2x2, 3x3) for 3x3 stride-1 convolutions (im2col for the rest).

On XLA:CPU the stock convolution is slow to differentiate, above all the weight gradient of strided
convolutions (design.md, "Where XLA:CPU loses the time"). Written as explicit patch extraction
(one strided slice per kernel tap, concatenated on the channel axis) followed by a single 2-D
matmul, both gradients become large matmuls plus cheap slicing / padding, which XLA:CPU runs about
twice as fast. For the 3x3 stride-1 convolutions of a ResNet's body, Winograd's algorithm
(:func:`winograd_conv_general_dilated`) needs 16 multiplications per 2x2 outputs instead of 36 and
was 1.25-1.7x faster again per convolution (forward + backward; the ResNet-18 SimCLR step from
0.86x to 1.09x of PyTorch eager on one core, benchmarks/RESULTS.md). ``conv_impl='auto'`` uses
it on a single CPU device only: with the batch sharded over several, its weight gradient would be
all-reduced in the Winograd basis (16/9 of the bytes). On GPU the library convolution (cuDNN) is
the right choice, so ``'auto'`` picks Winograd / im2col only when the default backend is CPU.

Both are ``jax.custom_vjp`` functions (said here of :func:`im2col_conv_general_dilated`): evaluated
without differentiation (inference, feature extraction) it runs the XLA convolution, which
XLA:CPU's forward pass does well; under reverse-mode differentiation its forward computes the
patches and the matmul and keeps the patches for the backward pass. Forward-mode
differentiation (``jax.jvp``, ``jax.jacfwd``) is not supported through them; use
``conv_impl='xla'`` for that.

Measured on the shared 2-core CPU (jitted forward + backward, train-mode BatchNorm, best of N;
the machine is shared, so absolute numbers vary ~2x with load, the ratio much less):
ConvNet, batch 256 of 28x28x1: XLA ~420-600 images/s, im2col ~560-1000 images/s;
ResNet-18 (cifar stem), batch 64 of 32x32x3: XLA ~9-15 images/s, im2col ~15-29 images/s.
Inference is unchanged (both run the XLA convolution). The price is memory: the patches kept for
the backward pass are ``k*k`` times the input activation of each convolution.

It has the signature of :func:`jax.lax.conv_general_dilated`, so it is passed to
:class:`flax.nnx.Conv` through its ``conv_general_dilated=`` argument and the parameters of a model
do not depend on the implementation: a checkpoint trained with one runs with the other.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

ConvImpl = Literal["auto", "xla", "im2col", "winograd"]
CONV_IMPLS: tuple[str, ...] = ("auto", "xla", "im2col", "winograd")

# Kaiming-normal with fan_out, as torchvision initialises ResNet convolutions (untruncated normal,
# std = sqrt(2 / (k_h * k_w * out_channels))).
kaiming_normal_fan_out = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def _channels_last_dimension_numbers(num_spatial: int) -> lax.ConvDimensionNumbers:
    spatial = tuple(range(1, num_spatial + 1))
    return lax.ConvDimensionNumbers(
        lhs_spec=(0, num_spatial + 1, *spatial),
        rhs_spec=(num_spatial + 1, num_spatial, *range(num_spatial)),
        out_spec=(0, num_spatial + 1, *spatial),
    )


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

    args = _ConvArgs(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, batch_group_count, precision, preferred_element_type, out_sharding,
    )  # fmt: skip
    return _convolve(args, winograd=False)


class _Im2colConfig(NamedTuple):
    strides: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    rhs_dilation: tuple[int, ...]
    precision: Any
    preferred_element_type: Any


class _ConvArgs(NamedTuple):
    """The arguments of :func:`jax.lax.conv_general_dilated`, by its parameter names."""

    lhs: jax.Array
    rhs: jax.Array
    window_strides: Sequence[int]
    padding: str | Sequence[tuple[int, int]]
    lhs_dilation: Sequence[int] | None
    rhs_dilation: Sequence[int] | None
    dimension_numbers: Any
    feature_group_count: int
    batch_group_count: int
    precision: Any
    preferred_element_type: Any
    out_sharding: Any


def _convolve(args: _ConvArgs, *, winograd: bool) -> jax.Array:
    """Winograd where it applies (if ``winograd``), im2col where it does not, and lax's own
    convolution for what im2col does not handle."""
    config = _im2col_config(args)
    if config is None:
        kwargs = args._asdict()
        if kwargs["out_sharding"] is None:
            del kwargs["out_sharding"]
        return lax.conv_general_dilated(**kwargs)
    if winograd and _winograd_applies(args.lhs, args.rhs, config):
        return _conv_winograd_vjp(args.lhs, args.rhs, config)
    return _conv_im2col_vjp(args.lhs, args.rhs, config)


def _im2col_config(args: _ConvArgs) -> _Im2colConfig | None:
    """The normalised arguments of a convolution im2col handles, or None (use lax's)."""
    lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers = args[:7]
    nsp = lhs.ndim - 2
    if rhs.ndim != lhs.ndim or nsp < 1:
        return None
    if dimension_numbers is None:
        return None  # lax's default is channels-first (NCHW/OIHW)
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    if dn != _channels_last_dimension_numbers(nsp):
        return None
    strides = tuple(window_strides) if window_strides is not None else (1,) * nsp
    lhs_dil = tuple(lhs_dilation) if lhs_dilation is not None else (1,) * nsp
    rhs_dil = tuple(rhs_dilation) if rhs_dilation is not None else (1,) * nsp
    if (
        args.feature_group_count != 1
        or args.batch_group_count != 1
        or args.out_sharding is not None
        or any(d != 1 for d in lhs_dil)
    ):
        return None

    kernel_spatial = rhs.shape[:nsp]
    if lhs.shape[-1] != rhs.shape[nsp]:
        return None  # let lax raise its own shape error
    eff_kernel = tuple((k - 1) * d + 1 for k, d in zip(kernel_spatial, rhs_dil, strict=True))
    if isinstance(padding, str):
        pads = lax.padtype_to_pads(lhs.shape[1:-1], eff_kernel, strides, padding)
    else:
        pads = tuple(tuple(p) for p in padding)
    out_spatial = tuple(
        (lhs.shape[1 + i] + pads[i][0] + pads[i][1] - eff_kernel[i]) // strides[i] + 1
        for i in range(nsp)
    )
    if any(o <= 0 for o in out_spatial):
        return None
    return _Im2colConfig(
        strides=strides,
        pads=tuple((int(lo), int(hi)) for lo, hi in pads),
        rhs_dilation=rhs_dil,
        precision=args.precision,
        preferred_element_type=args.preferred_element_type,
    )


def _im2col_matmul(lhs: jax.Array, rhs: jax.Array, cfg: _Im2colConfig) -> jax.Array:
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


def _xla_conv(lhs: jax.Array, rhs: jax.Array, cfg: _Im2colConfig) -> jax.Array:
    return lax.conv_general_dilated(
        lhs,
        rhs,
        cfg.strides,
        cfg.pads,
        rhs_dilation=cfg.rhs_dilation,
        dimension_numbers=_channels_last_dimension_numbers(lhs.ndim - 2),
        precision=cfg.precision,
        preferred_element_type=cfg.preferred_element_type,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_im2col_vjp(lhs: jax.Array, rhs: jax.Array, cfg: _Im2colConfig) -> jax.Array:
    # Not differentiated: the XLA convolution (XLA:CPU's forward pass is good; measured ~1.7x
    # faster than patches + matmul on the ConvNet).
    return _xla_conv(lhs, rhs, cfg)


def _conv_im2col_fwd(lhs: jax.Array, rhs: jax.Array, cfg: _Im2colConfig):
    # Differentiated: im2col forward; its vjp closure (holding the patches) is the residual.
    # (A custom_jvp with an XLA-conv primal and im2col tangents also works, and supports jvp,
    # but measured ~15% slower per training step on the ConvNet.)
    return jax.vjp(lambda x, w: _im2col_matmul(x, w, cfg), lhs, rhs)


def _conv_im2col_bwd(cfg: _Im2colConfig, vjp_fn: Callable, g: jax.Array):
    return vjp_fn(g)


_conv_im2col_vjp.defvjp(_conv_im2col_fwd, _conv_im2col_bwd)


# ----------------------------------------------------------------------------- Winograd F(2x2, 3x3)
# Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2016): each 2x2 tile of the
# output of a 3x3 stride-1 convolution is A^T [(G g G^T) * (B^T d B)] A, where d is the 4x4 input
# tile around it. Over channels the elementwise product becomes 16 matmuls [tiles, C_in] x
# [C_in, C_out]: 16 multiplications per 2x2 outputs instead of im2col's 36, and the transformed
# input is 4 values per output pixel instead of 9. The transforms are sums and differences (G also
# halves), exact up to float32 rounding of a few additions.
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
    other convolution goes to :func:`im2col_conv_general_dilated` (which itself falls back to lax
    for what it does not handle). As there, the undifferentiated value is the XLA convolution's;
    under ``jax.grad`` / ``jax.vjp`` the forward computes the transformed input (kept for the
    backward pass: 4 values per input pixel, against im2col's 9) and one product batched over
    the 16 tile positions, and the backward pass two more and the transposed transforms.
    Forward-mode differentiation is not supported through it. With the batch sharded over
    several devices, XLA all-reduces its weight gradient in the Winograd basis
    (``[16, C_in, C_out]``, 16/9 of the kernel's bytes): ``conv_impl='auto'`` therefore uses it
    on a single device only.

    Args and returns: as :func:`im2col_conv_general_dilated`.
    """
    args = _ConvArgs(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, batch_group_count, precision, preferred_element_type, out_sharding,
    )  # fmt: skip
    return _convolve(args, winograd=True)


def _winograd_applies(lhs: jax.Array, rhs: jax.Array, cfg: _Im2colConfig) -> bool:
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
def _conv_winograd_vjp(lhs: jax.Array, rhs: jax.Array, cfg: _Im2colConfig) -> jax.Array:
    return _xla_conv(lhs, rhs, cfg)  # not differentiated: as _conv_im2col_vjp


def _conv_winograd_fwd(lhs: jax.Array, rhs: jax.Array, cfg: _Im2colConfig):
    v, u = _winograd_input(lhs), _winograd_kernel(rhs)
    m = lax.dot_general(v, u, _BATCHED, precision=cfg.precision, preferred_element_type=jnp.float32)
    n, h, w, _ = lhs.shape
    return _winograd_output(m, n, h // 2, w // 2), (v, u)


def _conv_winograd_bwd(cfg: _Im2colConfig, res: tuple[jax.Array, jax.Array], g: jax.Array):
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


# On GPU a convolution over fewer input channels than this (a stem over RGB or grayscale pixels)
# gets no tensor-core kernel from cuDNN: the ResNet-50 stem's 7x7 conv over 3 channels ran with
# DEFAULT_MATH at ~33 TFLOP/s (bf16, H100; benchmarks/RESULTS.md). Zero-padding the channels to 8
# gives it one, at the same result.
GPU_MIN_IN_CHANNELS = 8


_pad_for_gpu = [True]


@contextlib.contextmanager
def unpadded_channels():
    """Within it, 'auto' traces convolutions without the GPU channel padding: for counting a
    model's own FLOPs (MFU counts the model's arithmetic, not the zeros added for cuDNN). Traces
    made inside it only; jitted functions traced before keep their padding."""
    _pad_for_gpu.append(False)
    try:
        yield
    finally:
        _pad_for_gpu.pop()


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
    lhs: jax.Array, rhs: jax.Array, *args: Any, **kwargs: Any
) -> jax.Array:
    """On the CPU backend :func:`winograd_conv_general_dilated` (Winograd for the 3x3 stride-1
    convolutions it applies to, im2col for the others) when JAX has one device, else
    :func:`im2col_conv_general_dilated`; the XLA convolution on other backends. Decided at
    trace time. On GPU a channels-last convolution over fewer than ``GPU_MIN_IN_CHANNELS`` input
    channels is computed with its channels zero-padded to that (see :func:`pad_in_channels`)."""
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
        and _pad_for_gpu[-1]
        and lhs.shape[-1] < GPU_MIN_IN_CHANNELS
        and kwargs.get("feature_group_count", 1) == 1
        and kwargs.get("batch_group_count", 1) == 1
        and lax.conv_dimension_numbers(lhs.shape, rhs.shape, kwargs.get("dimension_numbers"))
        == _channels_last_dimension_numbers(lhs.ndim - 2)
    ):
        lhs, rhs = pad_in_channels(lhs, rhs, GPU_MIN_IN_CHANNELS)
    return lax.conv_general_dilated(lhs, rhs, *args, **kwargs)


def get_conv_general_dilated(conv_impl: str) -> Callable[..., jax.Array]:
    """The ``conv_general_dilated`` function for ``conv_impl`` in :data:`CONV_IMPLS`."""
    if conv_impl == "xla":
        return lax.conv_general_dilated
    if conv_impl == "im2col":
        return im2col_conv_general_dilated
    if conv_impl == "winograd":
        return winograd_conv_general_dilated
    if conv_impl == "auto":
        return auto_conv_general_dilated
    raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}.")


def make_conv(
    in_features: int,
    out_features: int,
    kernel_size: int,
    *,
    strides: int = 1,
    padding: int | str | Sequence[tuple[int, int]] | None = None,
    conv_impl: str = "auto",
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
        the rest) or ``'auto'`` (``'winograd'`` on CPU, XLA elsewhere).
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
        conv_general_dilated=get_conv_general_dilated(conv_impl),
        rngs=rngs,
    )
