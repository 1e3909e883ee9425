"""View recipes (:class:`ViewConfig` and the SimCLR / BYOL / grayscale presets) and the batch
functions that apply them on the device: :func:`augment` and :func:`two_views`.
"""

from __future__ import annotations

import dataclasses
import itertools
import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from ssl_jax.augment.ops import (
    _N_BLUR,
    _N_CROP,
    _N_FLIP,
    _N_GRAY,
    _N_JITTER,
    _N_SOLARIZE,
    CIFAR10_MEAN,
    CIFAR10_STD,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    _check,
    _check_interval,
    _check_prob,
    _color_jitter,
    _flip,
    _gaussian_blur,
    _grayscale,
    _resized_crop,
    _solarize,
    blur_kernel_size,
)
from ssl_jax.registry import Registry

# ----------------------------------------------------------------------------- view recipes


@dataclasses.dataclass(frozen=True)
class ViewConfig:
    """Every knob of one augmented view; defaults are SimCLR's ImageNet recipe (arXiv:2002.05709
    appendix A). Frozen and hashable, so it can be a static argument of ``jax.jit``.

    Lists are accepted for the tuple fields and stored as tuples; bad values raise ValueError
    naming the field.
    """

    size: int = 224  # output side (px): views are [size, size, C]
    crop_scale: tuple[float, float] = (0.08, 1.0)  # area fraction of the random crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect w/h range (log-uniform)
    antialias: bool = True  # antialiased bilinear when the crop is downscaled
    flip_prob: float = 0.5  # horizontal flip
    jitter_prob: float = 0.8  # probability of the colour jitter (all four ops)
    brightness: float = 0.8  # factor ~ U[max(0, 1 - b), 1 + b]
    contrast: float = 0.8  # factor ~ U[max(0, 1 - c), 1 + c]
    saturation: float = 0.8  # factor ~ U[max(0, 1 - s), 1 + s]; RGB only
    hue: float = 0.2  # shift ~ U[-hue, hue] turns, in [0, 0.5]; RGB only
    grayscale_prob: float = 0.2  # random conversion to luma (keeps C channels)
    blur_prob: float = 0.5  # gaussian blur
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # sigma ~ U(blur_sigma), in pixels
    blur_kernel: int | None = None  # odd tap count; None: SimCLR's 10% of `size`, made odd
    solarize_prob: float = 0.0  # invert pixels >= solarize_threshold
    solarize_threshold: float = 0.5
    mean: tuple[float, ...] = IMAGENET_MEAN  # normalisation after augmentation, per channel
    std: tuple[float, ...] = IMAGENET_STD  # (use mean 0, std 1 to keep [0, 1])

    def __post_init__(self):
        for name in ("crop_scale", "crop_ratio", "blur_sigma", "mean", "std"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        ok = isinstance(self.size, numbers.Integral) and self.size > 0
        _check("size", ok, "a positive int", self.size)
        object.__setattr__(self, "size", int(self.size))
        _check_interval("crop_scale", self.crop_scale)
        _check("crop_scale", self.crop_scale[1] <= 1.0, "<= 1", self.crop_scale)
        _check_interval("crop_ratio", self.crop_ratio)
        _check_interval("blur_sigma", self.blur_sigma)
        for name in ("flip_prob", "jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob"):
            _check_prob(name, getattr(self, name))
        for name in ("brightness", "contrast", "saturation"):
            _check(name, getattr(self, name) >= 0, ">= 0", getattr(self, name))
        _check("hue", 0 <= self.hue <= 0.5, "in [0, 0.5]", self.hue)
        k = self.blur_kernel
        _check("blur_kernel", k is None or (k >= 1 and k % 2 == 1), "None or odd >= 1", k)
        _check("mean", len(self.mean) in (1, 3), "of length 1 or 3", self.mean)
        _check("std", len(self.std) == len(self.mean), f"of length {len(self.mean)}", self.std)
        _check("std", all(s > 0 for s in self.std), "> 0", self.std)

    @property
    def kernel_size(self) -> int:
        """The blur's tap count: ``blur_kernel`` or SimCLR's rule on ``size`` (23 at 224)."""
        return self.blur_kernel if self.blur_kernel is not None else blur_kernel_size(self.size)


def simclr_imagenet(size: int = 224) -> ViewConfig:
    """SimCLR ImageNet views (arXiv:2002.05709, appendix A): crop (0.08, 1), flip, colour jitter of
    strength s = 1 (0.8, 0.8, 0.8, 0.2) with p = 0.8, grayscale 0.2, blur p = 0.5 with sigma in
    [0.1, 2.0] and a kernel of 10% of the side. Both views share it. SimCLR itself feeds [0, 1]
    images; we normalise with ImageNet statistics (largely irrelevant to a BatchNorm'd encoder).
    """
    return ViewConfig(size=size)


def simclr_cifar(size: int = 32) -> ViewConfig:
    """SimCLR CIFAR-10 views (arXiv:2002.05709 appendix B.9): as ImageNet but jitter strength
    s = 0.5 (0.4, 0.4, 0.4, 0.1) and no gaussian blur (the paper drops it for 32 px images)."""
    return ViewConfig(
        size=size,
        brightness=0.4,
        contrast=0.4,
        saturation=0.4,
        hue=0.1,
        blur_prob=0.0,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
    )


def byol_views(size: int = 224) -> tuple[ViewConfig, ViewConfig]:
    """BYOL's asymmetric pair (arXiv:2006.07733, table 6): crop (0.08, 1), flip, jitter (0.4, 0.4,
    0.2, 0.1) with p = 0.8, grayscale 0.2; blur p = 1.0 vs 0.1 and solarize p = 0.0 vs 0.2. The
    asymmetry is deliberate: one view mostly blurred, the other sometimes solarized."""
    common = dict(size=size, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)
    view1 = ViewConfig(**common, blur_prob=1.0, solarize_prob=0.0)
    view2 = ViewConfig(**common, blur_prob=0.1, solarize_prob=0.2)
    return view1, view2


def grayscale_preset(size: int = 28) -> ViewConfig:
    """Views for small single-channel images such as Fashion-MNIST (our choice, no paper recipe).

    Crop scale (0.2, 1): the objects fill the frame and a 0.08 crop of 28 px is a 8x8 patch with
    little of the garment left (the floor MoCo v2 / many CIFAR ports use). Flip 0.5 (clothes are
    roughly mirror-symmetric). Brightness/contrast 0.4 (SimCLR CIFAR strength) with p = 0.8; no
    saturation/hue/grayscale (meaningless on one channel). No blur by default, as SimCLR drops it
    at 32 px; turn it on with ``dataclasses.replace(view, blur_prob=0.5, blur_sigma=(0.1, 1.0))``
    (kernel 3 at 28 px). Normalised with the Fashion-MNIST training-set mean and std.
    """
    return ViewConfig(
        size=size,
        crop_scale=(0.2, 1.0),
        brightness=0.4,
        contrast=0.4,
        saturation=0.0,
        hue=0.0,
        grayscale_prob=0.0,
        blur_prob=0.0,
        blur_sigma=(0.1, 1.0),
        mean=FASHION_MNIST_MEAN,
        std=FASHION_MNIST_STD,
    )


@dataclasses.dataclass(frozen=True)
class ViewPreset:
    """A named pair of views: ``make(size) -> (view1, view2)`` and the size it is made for."""

    make: Callable[[int], tuple[ViewConfig, ViewConfig]]
    default_size: int


VIEW_PRESETS: Registry[ViewPreset] = Registry("view preset", field="config.augment")
VIEW_PRESETS.add("simclr_imagenet", ViewPreset(lambda size: (simclr_imagenet(size),) * 2, 224))
VIEW_PRESETS.add("simclr_cifar", ViewPreset(lambda size: (simclr_cifar(size),) * 2, 32))
VIEW_PRESETS.add("byol", ViewPreset(byol_views, 224))
VIEW_PRESETS.add("grayscale", ViewPreset(lambda size: (grayscale_preset(size),) * 2, 28))


def get_views(name: str, size: int | None = None) -> tuple[ViewConfig, ViewConfig]:
    """The (view1, view2) pair of a preset by name; ``size`` None takes the preset's default.
    A new preset is a function here and one ``VIEW_PRESETS.add`` line above."""
    preset = VIEW_PRESETS.get(name)
    return preset.make(preset.default_size if size is None else size)


# ----------------------------------------------------------------------------- batch functions


def apply_view(image: ArrayLike, key: jax.Array, view: ViewConfig) -> jax.Array:
    """One view of one image: ``[H, W, C]`` float in [0, 1] -> ``[size, size, C]`` in [0, 1]
    (not normalised). Order as SimCLR/BYOL: crop, flip, jitter, grayscale, blur, solarize.
    All random numbers come from one ``uniform(key, [54])`` draw."""
    sizes = (_N_CROP, _N_FLIP, _N_JITTER, _N_GRAY, _N_BLUR, _N_SOLARIZE)
    u = jax.random.uniform(key, (sum(sizes),))
    u_crop, u_flip, u_jitter, u_gray, u_blur, u_sol = jnp.split(
        u, list(itertools.accumulate(sizes))[:-1]
    )
    v = view
    x = _resized_crop(image, u_crop, v.size, v.crop_scale, v.crop_ratio, v.antialias)
    x = _flip(x, u_flip, v.flip_prob)
    x = _color_jitter(x, u_jitter, v.brightness, v.contrast, v.saturation, v.hue, v.jitter_prob)
    x = _grayscale(x, u_gray, v.grayscale_prob)
    x = _gaussian_blur(x, u_blur, v.blur_sigma, v.kernel_size, v.blur_prob)
    return _solarize(x, u_sol, v.solarize_prob, v.solarize_threshold)


def to_float(images: ArrayLike) -> jax.Array:
    """uint8 in [0, 255] -> float32 in [0, 1]; float input is taken to be in [0, 1] already."""
    images = jnp.asarray(images)
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 255.0
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"images must be uint8 or float in [0, 1], got dtype {images.dtype}")
    return images.astype(jnp.float32)


def augment(
    images: ArrayLike, key: jax.Array, view: ViewConfig, *, dtype: DTypeLike = jnp.float32
) -> jax.Array:
    """Augment a batch: ``[B, H, W, C]`` uint8 (or float in [0, 1]) -> ``[B, size, size, C]``
    normalised by ``view.mean`` / ``view.std``, cast to ``dtype``.

    One key per image (``split(key, B)``), so a batch sharded over a mesh gives the same views as
    an unsharded one. Jit with ``static_argnames=("view", "dtype")`` or close over ``view``.
    """
    images = jnp.asarray(images)
    _check("images.ndim", images.ndim == 4, "4 ([B, H, W, C])", images.shape)
    channels = images.shape[-1]
    _check("images channels", channels in (1, 3), "1 or 3", images.shape)
    _check("view.mean", len(view.mean) in (1, channels), f"of length 1 or {channels}", view.mean)
    keys = jax.random.split(key, images.shape[0])
    out = jax.vmap(apply_view, in_axes=(0, 0, None))(to_float(images), keys, view)
    out = (out - jnp.asarray(view.mean, jnp.float32)) / jnp.asarray(view.std, jnp.float32)
    return out.astype(dtype)


def two_views(
    images: ArrayLike,
    key: jax.Array,
    view1: ViewConfig,
    view2: ViewConfig,
    *,
    dtype: DTypeLike = jnp.float32,
) -> tuple[jax.Array, jax.Array]:
    """Two independently augmented views ``(x1, x2)``, each ``[B, size, size, C]``: the key is split
    in two, so x1 and x2 differ even when ``view1 == view2``."""
    k1, k2 = jax.random.split(key)
    return augment(images, k1, view1, dtype=dtype), augment(images, k2, view2, dtype=dtype)
