"""ResNet encoders (He et al. 2016, "Deep Residual Learning ...", arXiv:1512.03385).

The layout is torchvision's "v1.5" ResNet: in a :class:`Bottleneck` the stride sits on the 3x3
convolution, and a projection shortcut (1x1 conv + BatchNorm) is used whenever a block changes
the shape. The classification layer is omitted: ``model(x)`` returns the globally average-pooled
feature, the representation self-supervised methods train. With ``stem='imagenet'``, ``width=1``
and 3 input channels the parameter counts equal torchvision's without ``fc``: ResNet-18 11,176,512,
ResNet-34 21,284,672, ResNet-50 23,508,032.

Model variants are ``functools.partial`` of :class:`ResNet`, as in Flax's ImageNet example::

    model = ResNet18(stem="cifar", rngs=nnx.Rngs(0))
    feats = model(images)  # [B, 32, 32, 3] -> [B, 512], float32
    model.eval()           # BatchNorm uses its running averages from here on

BatchNorm (:func:`ssl_jax.models.layers.make_batch_norm`) follows PyTorch's defaults expressed
in Flax's convention (momentum 0.9, i.e. torch's 0.1; epsilon 1e-5); one difference remains: Flax
updates the running variance with the biased batch variance, torch with the unbiased one (a factor
n / (n - 1), negligible at SSL batch sizes). It has no ``axis_name``: under SPMD ``jax.jit`` on a
batch sharded over a mesh the statistics are computed over the global batch (XLA inserts the
reductions).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from ssl_jax.kernels import CONV_IMPLS
from ssl_jax.models.layers import check_image_input, make_batch_norm, make_conv
from ssl_jax.models.registry import ENCODERS, EncoderEntry


class BasicBlock(nnx.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34). ``expansion = 1``.

    ``[B, H, W, in_features] -> [B, ceil(H / strides), ceil(W / strides), features]``.
    """

    expansion: int = 1

    def __init__(
        self,
        in_features: int,
        features: int,
        *,
        strides: int = 1,
        zero_init_residual: bool = False,
        conv_impl: str = "auto",
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        conv = functools.partial(
            make_conv, conv_impl=conv_impl, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )
        norm = functools.partial(make_batch_norm, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        out_features = features * self.expansion
        self.conv1 = conv(in_features, features, 3, strides=strides)
        self.bn1 = norm(features)
        self.conv2 = conv(features, out_features, 3)
        self.bn2 = norm(out_features, zero_scale=zero_init_residual)
        if strides != 1 or in_features != out_features:
            self.downsample_conv = conv(in_features, out_features, 1, strides=strides)
            self.downsample_bn = norm(out_features)
        else:
            self.downsample_conv = None
            self.downsample_bn = None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.downsample_conv is not None:
            x = self.downsample_bn(self.downsample_conv(x))
        return nnx.relu(x + y)


class Bottleneck(nnx.Module):
    """1x1 -> 3x3 (strided, v1.5) -> 1x1 convs with a residual (ResNet-50). ``expansion = 4``.

    ``[B, H, W, in_features] -> [B, ceil(H / strides), ceil(W / strides), 4 * features]``.
    """

    expansion: int = 4

    def __init__(
        self,
        in_features: int,
        features: int,
        *,
        strides: int = 1,
        zero_init_residual: bool = False,
        conv_impl: str = "auto",
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        conv = functools.partial(
            make_conv, conv_impl=conv_impl, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )
        norm = functools.partial(make_batch_norm, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        out_features = features * self.expansion
        self.conv1 = conv(in_features, features, 1)
        self.bn1 = norm(features)
        self.conv2 = conv(features, features, 3, strides=strides)
        self.bn2 = norm(features)
        self.conv3 = conv(features, out_features, 1)
        self.bn3 = norm(out_features, zero_scale=zero_init_residual)
        if strides != 1 or in_features != out_features:
            self.downsample_conv = conv(in_features, out_features, 1, strides=strides)
            self.downsample_bn = norm(out_features)
        else:
            self.downsample_conv = None
            self.downsample_bn = None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = nnx.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        if self.downsample_conv is not None:
            x = self.downsample_bn(self.downsample_conv(x))
        return nnx.relu(x + y)


class ResNet(nnx.Module):
    """ResNet feature encoder: ``[B, H, W, in_channels] -> [B, num_features]`` (float32).

    Args:
      stage_sizes: number of blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18. Stage ``i``
        has ``64 * width * 2**i`` base channels; every stage after the first halves the
        resolution with its first block.
      block_cls: :class:`BasicBlock` or :class:`Bottleneck`.
      in_channels: channels of the input images.
      stem: ``'imagenet'``: 7x7 stride-2 conv + BN + ReLU + 3x3 stride-2 max-pool (4x
        downsampling, for >= 224 px images; minimum 32 px for 4 stages). ``'cifar'``: 3x3
        stride-1 conv + BN + ReLU, no max-pool (for 32 px images; minimum 8 px for 4 stages).
      width: multiplier on every channel count (stem included, as in SimCLR's ResNet-50 (2x),
        (4x); unlike torchvision's wide_resnet, which widens only the bottleneck). May be a
        fraction for tiny test models; ``64 * width`` must be a positive integer.
      zero_init_residual: initialise the scale of each block's last BatchNorm to zero, so every
        block starts as the identity (Goyal et al. 2017; SimCLR's reference code does this).
        Default ``False``, torchvision's default.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters and BatchNorm statistics stay in
        ``param_dtype`` and the returned features are always float32.
      param_dtype: storage dtype of parameters.
      conv_impl: ``'auto'`` (Winograd / im2col on CPU, XLA conv elsewhere), ``'xla'``,
        ``'im2col'`` or ``'winograd'``; see :mod:`ssl_jax.kernels`. Does not change the
        parameters.
      rngs: NNX random streams (``params`` is used).

    Attributes:
      num_features: size of the returned feature, ``64 * width * 2**(len(stage_sizes)-1) *
        block_cls.expansion`` (512 for ResNet-18/34, 2048 for ResNet-50).
      min_input_size: smallest height/width accepted by ``__call__``.

    A new model is in training mode (BatchNorm uses and updates batch statistics); call
    ``model.eval()`` / ``model.train()`` to switch.
    """

    def __init__(
        self,
        stage_sizes: Sequence[int],
        block_cls: type[BasicBlock] | type[Bottleneck],
        *,
        in_channels: int = 3,
        stem: Literal["imagenet", "cifar"] = "imagenet",
        width: float = 1,
        zero_init_residual: bool = False,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        conv_impl: str = "auto",
        rngs: nnx.Rngs,
    ):
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}.")
        if conv_impl not in CONV_IMPLS:
            raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}.")
        if not stage_sizes or any(int(n) < 1 for n in stage_sizes):
            raise ValueError(f"stage_sizes must be positive block counts, got {stage_sizes!r}.")
        base = 64 * width
        if base < 1 or base != int(base):
            raise ValueError(f"64 * width must be a positive integer, got width={width!r}.")
        base = int(base)
        self.stage_sizes = tuple(int(n) for n in stage_sizes)
        self.in_channels = in_channels
        self.stem = stem
        self.width = width
        self.dtype = dtype
        self.conv_impl = conv_impl

        conv = functools.partial(
            make_conv, conv_impl=conv_impl, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )
        if stem == "imagenet":
            self.stem_conv = conv(in_channels, base, 7, strides=2, padding=3)
        else:
            self.stem_conv = conv(in_channels, base, 3, strides=1, padding=1)
        self.stem_bn = make_batch_norm(base, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

        blocks = []
        in_features = base
        for i, num_blocks in enumerate(self.stage_sizes):
            features = base * 2**i
            for j in range(num_blocks):
                blocks.append(
                    block_cls(
                        in_features,
                        features,
                        strides=2 if i > 0 and j == 0 else 1,
                        zero_init_residual=zero_init_residual,
                        conv_impl=conv_impl,
                        dtype=dtype,
                        param_dtype=param_dtype,
                        rngs=rngs,
                    )
                )
                in_features = features * block_cls.expansion
        self.blocks = nnx.List(blocks)
        self.num_features = in_features
        stem_factor = 4 if stem == "imagenet" else 1
        self.min_input_size = stem_factor * 2 ** (len(self.stage_sizes) - 1)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x``: ``[B, H, W, in_channels]`` float images -> features ``[B, num_features]`` f32."""
        hint = " Use stem='cifar' for small images." if self.stem == "imagenet" else ""
        check_image_input(x, in_channels=self.in_channels, min_size=self.min_input_size, hint=hint)
        x = jnp.asarray(x, self.dtype)
        x = nnx.relu(self.stem_bn(self.stem_conv(x)))
        if self.stem == "imagenet":
            x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for block in self.blocks:
            x = block(x)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)


@dataclasses.dataclass(frozen=True)
class ResNetSettings:
    """The ResNets' settings: ``config.model.resnet.*``."""

    stem: str = "cifar"  # imagenet (7x7/2 + max-pool) | cifar (3x3/1)
    width: int = 1  # channel multiplier

    def validate(self) -> None:
        if self.stem not in ("imagenet", "cifar"):
            raise ValueError(
                f"config.model.resnet.stem={self.stem!r} is invalid: use imagenet or cifar."
            )
        if not self.width > 0:
            raise ValueError(f"config.model.resnet.width={self.width!r} is invalid: must be > 0.")

    def kwargs(self) -> dict[str, Any]:
        return dict(stem=self.stem, width=self.width)


for _name, _constructor in (("resnet18", ResNet18), ("resnet34", ResNet34), ("resnet50", ResNet50)):
    ENCODERS.add(
        _name, EncoderEntry(block="resnet", settings=ResNetSettings, constructor=_constructor)
    )
