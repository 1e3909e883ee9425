"""What the convolution kernels share: the arguments of :func:`jax.lax.conv_general_dilated` as a
tuple, their normalised form for the convolutions im2col and Winograd handle, and the XLA
convolution and lax fallback both formulations use.

:func:`conv_config` decides which convolutions the explicit formulations take: channels-last
layouts (NHWC input, HWIO kernel, NHWC output, and their 1-D / 3-D analogues), any kernel size,
stride, explicit or ``'SAME'``/``'VALID'`` padding and kernel (rhs) dilation, no groups, no input
dilation and no explicit ``out_sharding``. For anything else it returns ``None`` and the kernels
call :func:`jax.lax.conv_general_dilated` itself (:func:`lax_conv`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
from jax import lax


class ConvConfig(NamedTuple):
    """The normalised arguments of a convolution that im2col (and Winograd) handle."""

    strides: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    rhs_dilation: tuple[int, ...]
    precision: Any
    preferred_element_type: Any


class ConvArgs(NamedTuple):
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


def channels_last_dimension_numbers(num_spatial: int) -> lax.ConvDimensionNumbers:
    """NHWC / HWIO / NHWC (and the 1-D / 3-D analogues) as lax dimension numbers."""
    spatial = tuple(range(1, num_spatial + 1))
    return lax.ConvDimensionNumbers(
        lhs_spec=(0, num_spatial + 1, *spatial),
        rhs_spec=(num_spatial + 1, num_spatial, *range(num_spatial)),
        out_spec=(0, num_spatial + 1, *spatial),
    )


def lax_conv(args: ConvArgs) -> jax.Array:
    """:func:`jax.lax.conv_general_dilated` on ``args`` (``out_sharding`` only when given)."""
    kwargs = args._asdict()
    if kwargs["out_sharding"] is None:
        del kwargs["out_sharding"]
    return lax.conv_general_dilated(**kwargs)


def conv_config(args: ConvArgs) -> ConvConfig | None:
    """The normalised arguments of a convolution im2col handles, or None (use lax's)."""
    lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers = args[:7]
    nsp = lhs.ndim - 2
    if rhs.ndim != lhs.ndim or nsp < 1:
        return None
    if dimension_numbers is None:
        return None  # lax's default is channels-first (NCHW/OIHW)
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    if dn != channels_last_dimension_numbers(nsp):
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
    return ConvConfig(
        strides=strides,
        pads=tuple((int(lo), int(hi)) for lo, hi in pads),
        rhs_dilation=rhs_dil,
        precision=args.precision,
        preferred_element_type=args.preferred_element_type,
    )


def xla_conv(lhs: jax.Array, rhs: jax.Array, cfg: ConvConfig) -> jax.Array:
    """The XLA convolution of a normalised channels-last configuration: what the kernels compute
    when they are not differentiated."""
    return lax.conv_general_dilated(
        lhs,
        rhs,
        cfg.strides,
        cfg.pads,
        rhs_dilation=cfg.rhs_dilation,
        dimension_numbers=channels_last_dimension_numbers(lhs.ndim - 2),
        precision=cfg.precision,
        preferred_element_type=cfg.preferred_element_type,
    )
