"""Per-image augmentation ops: pure functions of one float32 image ``[H, W, C]`` in [0, 1] and a
PRNG key (``random_*``, ``color_jitter``, ``gaussian_blur``, ``solarize``), and the deterministic
colour/geometry ops they are built from. See :mod:`ssl_jax.augment` for the semantics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as torchvision / PIL "L"
# The resize and blur matmuls: exact float32 on CPU; TF32 on GPU (a relative error of at most
# 2^-11, ~0.1 of a grey level, where HIGHEST's float32 emulation made them ~4 ms of a ResNet-50
# step's 9 ms of augmentation on an H100); bfloat16 x3 (~float32) on TPU.
_HI = jax.lax.Precision.HIGH
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)


def _check(name: str, ok: bool, allowed: str, value: object) -> None:
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _check_prob(name: str, p: float) -> None:
    _check(name, 0.0 <= p <= 1.0, "a probability in [0, 1]", p)


def _check_interval(name: str, lo_hi: Sequence[float]) -> None:
    ok = len(lo_hi) == 2 and 0 < lo_hi[0] <= lo_hi[1]
    _check(name, ok, "(lo, hi) with 0 < lo <= hi", lo_hi)


def _off(p: float) -> bool:
    """True if a static probability is 0, so the op can be left out of the graph."""
    return isinstance(p, int | float) and p == 0


# ----------------------------------------------------------------------------- colour primitives


def rgb_to_grayscale(image: ArrayLike) -> jax.Array:
    """Luma ``[..., C] -> [..., 1]`` (ITU-R 601 weights; a 1-channel image is returned as is)."""
    image = jnp.asarray(image)
    if image.shape[-1] == 1:
        return image
    r, g, b = image[..., 0:1], image[..., 1:2], image[..., 2:3]
    return _LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b


def _blend(image: jax.Array, target: ArrayLike, factor: ArrayLike) -> jax.Array:
    # factor == 1 gives 1 * x + 0 * target == x exactly, which the random-order jitter relies on.
    return jnp.clip(factor * image + (1.0 - factor) * target, 0.0, 1.0)


def adjust_brightness(image: ArrayLike, factor: ArrayLike) -> jax.Array:
    """``clip(factor * image)`` (torchvision: blend with black)."""
    return _blend(jnp.asarray(image), 0.0, factor)


def adjust_contrast(image: ArrayLike, factor: ArrayLike) -> jax.Array:
    """Blend with the mean luma of the image ``[H, W, C]`` (torchvision)."""
    image = jnp.asarray(image)
    return _blend(image, jnp.mean(rgb_to_grayscale(image)), factor)


def adjust_saturation(image: ArrayLike, factor: ArrayLike) -> jax.Array:
    """Blend with the per-pixel luma; identity for 1-channel images."""
    image = jnp.asarray(image)
    if image.shape[-1] == 1:
        return image
    return _blend(image, rgb_to_grayscale(image), factor)


def _frac(x: jax.Array) -> jax.Array:
    return x - jnp.floor(x)  # x mod 1, lighter to compile than jnp.remainder


def rgb_to_hsv(image: ArrayLike) -> jax.Array:
    """``[..., 3]`` RGB in [0, 1] -> HSV in [0, 1] as ``colorsys`` (gray pixels: hue 0, no NaN)."""
    image = jnp.asarray(image)
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    # The branch comes from comparing the channels, not from `r == max(...)`: XLA may recompute r
    # in another fusion with different rounding, and then no channel would equal the max.
    r_max = (r >= g) & (r >= b)
    g_max = ~r_max & (g >= b)
    maxc = jnp.where(r_max, r, jnp.where(g_max, g, b))
    delta = maxc - jnp.minimum(jnp.minimum(r, g), b)
    s = delta / jnp.where(maxc > 0, maxc, 1.0)
    safe = jnp.where(delta > 0, delta, 1.0)
    h = jnp.where(
        r_max, (g - b) / safe, jnp.where(g_max, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe)
    )
    h = jnp.where(delta > 0, _frac(h / 6.0), 0.0)
    return jnp.stack([h, s, maxc], axis=-1)


def hsv_to_rgb(image: ArrayLike) -> jax.Array:
    """``[..., 3]`` HSV in [0, 1] -> RGB, branch-free: ``c_n = v - v s clip(min(k, 4 - k), 0, 1)``
    with ``k = (n + 6 h) mod 6`` and n = 5, 3, 1 for R, G, B."""
    image = jnp.asarray(image)
    h, s, v = image[..., 0:1], image[..., 1:2], image[..., 2:3]
    k = 6.0 * _frac((jnp.array([5.0, 3.0, 1.0], image.dtype) + 6.0 * h) / 6.0)
    return v - v * s * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)


def adjust_hue(image: ArrayLike, delta: ArrayLike) -> jax.Array:
    """Rotate the hue by ``delta`` turns (in [-0.5, 0.5]); identity for 1-channel images."""
    image = jnp.asarray(image)
    if image.shape[-1] == 1:
        return image
    hsv = rgb_to_hsv(image)
    hsv = hsv.at[..., 0].set(_frac(hsv[..., 0] + delta))
    return jnp.clip(hsv_to_rgb(hsv), 0.0, 1.0)


# ----------------------------------------------------------------------------- spatial primitives


def _separable(image: jax.Array, my: jax.Array, mx: jax.Array) -> jax.Array:
    """``my @ image @ mx^T`` per channel: [S, H] x [H, W, C] x [T, W] -> [S, T, C]."""
    out = jnp.einsum("sh,hwc->swc", my, image, precision=_HI)
    return jnp.einsum("tw,swc->stc", mx, out, precision=_HI)


def _interp_matrix(start: jax.Array, length: jax.Array, n_in: int, n_out: int, antialias: bool):
    """[n_out, n_in] bilinear weights resampling pixels [start, start + length) to n_out pixels.

    Half-pixel centres (align_corners=False); the triangle is widened by the scale when
    downscaling with ``antialias`` (PIL / torchvision antialias=True). Weights outside the crop are
    dropped and rows renormalised, which equals clamping at the crop's edges.
    """
    scale = length / n_out
    centre = start + (jnp.arange(n_out, dtype=jnp.float32) + 0.5) * scale - 0.5
    support = jnp.maximum(scale, 1.0) if antialias else 1.0
    k = jnp.arange(n_in, dtype=jnp.float32)
    w = jnp.maximum(0.0, 1.0 - jnp.abs(centre[:, None] - k[None, :]) / support)
    w = jnp.where((k >= start) & (k < start + length), w, 0.0)
    return w / jnp.sum(w, axis=1, keepdims=True)


def resized_crop(
    image: ArrayLike, box: ArrayLike, size: int, *, antialias: bool = True
) -> jax.Array:
    """Crop ``box = (y0, x0, h, w)`` from ``image [H, W, C]`` and resize it to ``[size, size, C]``
    bilinearly (antialiased when downscaling). A full-image box with ``size == H == W`` is the
    identity (exact on CPU; within TF32 rounding on GPU)."""
    image = jnp.asarray(image, jnp.float32)
    height, width, _ = image.shape
    y0, x0, h, w = jnp.asarray(box, jnp.float32)
    my = _interp_matrix(y0, h, height, size, antialias)
    mx = _interp_matrix(x0, w, width, size, antialias)
    return jnp.clip(_separable(image, my, mx), 0.0, 1.0)


def _crop_box(u: jax.Array, height: int, width: int, scale, ratio) -> jax.Array:
    """Box from uniforms ``u [4, tries]`` (area, log-aspect, y, x of each try): sample_crop_box."""
    _check_interval("scale", scale)
    _check_interval("ratio", ratio)
    area = (scale[0] + (scale[1] - scale[0]) * u[0]) * (height * width)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = jnp.exp(log_lo + (log_hi - log_lo) * u[1])
    w = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    h = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    # uniform integer offsets in [0, height - h] and [0, width - w] (clamped for rejected tries)
    y = jnp.clip(
        jnp.floor(u[2] * (height - h + 1)).astype(jnp.int32), 0, jnp.maximum(height - h, 0)
    )
    x = jnp.clip(jnp.floor(u[3] * (width - w + 1)).astype(jnp.int32), 0, jnp.maximum(width - w, 0))
    first = jnp.argmax(fits)
    # Fallback (static shapes, so plain Python): central crop with the aspect clamped to `ratio`.
    fw, fh = width, height
    if width / height < ratio[0]:
        fh = round(width / ratio[0])
    elif width / height > ratio[1]:
        fw = round(height * ratio[1])
    fallback = jnp.array([(height - fh) // 2, (width - fw) // 2, fh, fw], jnp.int32)
    return jnp.where(fits.any(), jnp.stack([y[first], x[first], h[first], w[first]]), fallback)


def sample_crop_box(
    key: jax.Array,
    height: int,
    width: int,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    tries: int = 10,
) -> jax.Array:
    """Sample an Inception-style crop box, torchvision ``RandomResizedCrop.get_params`` semantics.

    Area fraction ~ U(scale), aspect w/h log-uniform in ``ratio``, integer sides rounded; the first
    of ``tries`` samples (drawn at once, vectorised) that fits the image wins, else the central crop
    with the aspect clamped to ``ratio``. Returns int32 ``[4]`` = (y0, x0, h, w).
    """
    u = jax.random.uniform(key, (4, tries))
    return _crop_box(u, height, width, scale, ratio)


def blur_kernel_size(side: int) -> int:
    """SimCLR's rule: 10% of the image side, made odd (``2 * (side // 10 // 2) + 1``; 23 at 224)."""
    return 2 * (side // 10 // 2) + 1


def _blur_matrix(sigma: jax.Array, n: int, kernel_size: int) -> jax.Array:
    """[n, n] matrix of a 1-D gaussian blur with reflect padding (numpy 'reflect': no edge repeat).

    Output i takes pixel reflect(i + t) with weight g(t), |t| <= r; a mirrored pixel j is reached at
    t = -j - i (left edge) and t = 2(n - 1) - j - i (right edge). Valid for r < n.
    """
    r = kernel_size // 2
    t = jnp.arange(-r, r + 1, dtype=jnp.float32)
    norm = jnp.sum(jnp.exp(-0.5 * (t / sigma) ** 2))

    def g(d):
        return jnp.where(jnp.abs(d) <= r, jnp.exp(-0.5 * (d / sigma) ** 2), 0.0)

    i = jnp.arange(n, dtype=jnp.float32)[:, None]
    j = jnp.arange(n, dtype=jnp.float32)[None, :]
    m = (
        g(j - i)
        + jnp.where(j > 0, g(-j - i), 0.0)
        + jnp.where(j < n - 1, g(2 * (n - 1) - j - i), 0)
    )
    return m / norm


def _check_kernel(kernel_size: int, height: int, width: int) -> None:
    _check("kernel_size", kernel_size >= 1 and kernel_size % 2 == 1, "odd and >= 1", kernel_size)
    side = min(height, width)
    _check("kernel_size", kernel_size // 2 < side, f"< 2 * {side} (one reflection)", kernel_size)


def blur(image: ArrayLike, sigma: ArrayLike, kernel_size: int) -> jax.Array:
    """Separable gaussian blur of ``[H, W, C]`` with std ``sigma`` (pixels), odd ``kernel_size``
    taps and reflect padding (torchvision GaussianBlur)."""
    image = jnp.asarray(image, jnp.float32)
    height, width, _ = image.shape
    _check_kernel(kernel_size, height, width)
    if kernel_size == 1:
        return image
    sigma = jnp.asarray(sigma, jnp.float32)
    my, mx = _blur_matrix(sigma, height, kernel_size), _blur_matrix(sigma, width, kernel_size)
    return jnp.clip(_separable(image, my, mx), 0.0, 1.0)


# ----------------------------------------------------------------------------- random per-image ops
#
# Each op draws all its random numbers with ONE jax.random.uniform call (and apply_view one for the
# whole chain), mapped to coins, factors, offsets and a permutation by arithmetic. A first version
# with ~25 threefry calls per view (split, bernoulli, randint, permutation) took twice as long to
# compile (6.9 s vs 3.6 s for one view on the shared 2-core CPU), and compile time is most of the
# test suite's time.

_TRIES = 10  # crop samples before the central-crop fallback (torchvision)
_N_CROP, _N_FLIP, _N_JITTER, _N_GRAY, _N_BLUR, _N_SOLARIZE = 4 * _TRIES, 1, 9, 1, 2, 1


def _resized_crop(image, u, size, scale, ratio, antialias):
    image = jnp.asarray(image, jnp.float32)
    box = _crop_box(u.reshape(4, -1), image.shape[0], image.shape[1], scale, ratio)
    return resized_crop(image, box, size, antialias=antialias)


def random_resized_crop(
    image: ArrayLike,
    key: jax.Array,
    *,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    antialias: bool = True,
) -> jax.Array:
    """``[H, W, C] -> [size, size, C]``: a :func:`sample_crop_box` box, then :func:`resized_crop`
    (the same box as ``sample_crop_box`` with the same key)."""
    u = jax.random.uniform(key, (_N_CROP,))
    return _resized_crop(image, u, size, scale, ratio, antialias)


def _flip(image, u, p):
    _check_prob("p", p)
    image = jnp.asarray(image)
    if _off(p):
        return image
    return jnp.where(u[0] < p, image[:, ::-1], image)


def random_flip(image: ArrayLike, key: jax.Array, *, p: float = 0.5) -> jax.Array:
    """Horizontal flip of ``[H, W, C]`` with probability ``p``."""
    return _flip(image, jax.random.uniform(key, (_N_FLIP,)), p)


def _jitter_params(u: jax.Array, brightness, contrast, saturation, hue):
    """From uniforms ``u [8]``: a uniformly random ``order`` [4] of the ops (0 brightness,
    1 contrast, 2 saturation, 3 hue; order[j] = op at step j) and their ``factors`` [4]."""
    v, i = u[:4], jnp.arange(4)
    # step of op i: the rank of v_i (ties, p ~ 1e-6, broken by the op id so order stays a perm)
    before = (v[None, :] < v[:, None]) | ((v[None, :] == v[:, None]) & (i[None, :] < i[:, None]))
    rank = jnp.sum(before, axis=1)
    order = jnp.sum(i * (rank[None, :] == i[:, None]), axis=1)
    lo = jnp.array([max(0.0, 1 - brightness), max(0.0, 1 - contrast), max(0.0, 1 - saturation)])
    hi = jnp.array([1 + brightness, 1 + contrast, 1 + saturation])
    lo, hi = jnp.append(lo, -hue), jnp.append(hi, hue)
    return order, lo + (hi - lo) * u[4:8]


def _jitter_in_order(image: jax.Array, order: jax.Array, factors: jax.Array, use_hue: bool):
    """Apply brightness/contrast/saturation/hue (op ids 0-3) in ``order`` with ``factors``.

    Under vmap, lax.switch on a per-image index evaluates every branch: 16 ops for 4 steps.
    Instead: b/c/s are all "blend with a target" (0, mean luma, luma), so one blend whose target is
    selected by the op id serves every step, and a factor of 1 makes a step an exact no-op. The
    hue (the only costly op) runs once, in the middle: steps 0-2 run before it as blends (active
    if they come before the hue's step) and steps 1-3 after it (active if they come after).
    """

    def blend_step(x, op, active):
        gray = rgb_to_grayscale(x)
        target = jnp.where(op == 2, gray, jnp.where(op == 1, jnp.mean(gray), 0.0))
        factor = jnp.sum(factors[:3] * (jnp.arange(3) == op))  # factors[op], 0 for the hue
        return _blend(x, target, jnp.where(active, factor, 1.0))

    if not use_hue:  # the hue step (op 3) is an inactive blend
        for j in range(4):
            image = blend_step(image, order[j], order[j] != 3)
        return image
    hue_step = jnp.sum(jnp.arange(4) * (order == 3))
    for j in range(3):
        image = blend_step(image, order[j], j < hue_step)
    image = adjust_hue(image, factors[3])
    for j in range(1, 4):
        image = blend_step(image, order[j], j > hue_step)
    return image


def _color_jitter(image, u, brightness, contrast, saturation, hue, p):
    _check_prob("p", p)
    for name, s in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        _check(name, s >= 0, ">= 0", s)
    _check("hue", 0 <= hue <= 0.5, "in [0, 0.5]", hue)
    image = jnp.asarray(image)
    if image.shape[-1] == 1:
        saturation, hue = 0.0, 0.0
    if _off(p) or brightness == contrast == saturation == hue == 0:
        return image
    order, factors = _jitter_params(u[1:], brightness, contrast, saturation, hue)
    jittered = _jitter_in_order(image, order, factors, use_hue=hue > 0)
    return jnp.where(u[0] < p, jittered, image)


def color_jitter(
    image: ArrayLike,
    key: jax.Array,
    *,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    p: float = 0.8,
) -> jax.Array:
    """With probability ``p``, apply brightness, contrast, saturation and hue in a random order
    (SimCLR appendix A / torchvision ColorJitter), clipping to [0, 1] after each.

    Factors ~ U[max(0, 1 - s), 1 + s] for brightness/contrast/saturation strength s and the hue
    shift ~ U[-hue, hue] turns. On 1-channel images only brightness and contrast apply.
    ``image``: [H, W, C] in [0, 1].
    """
    u = jax.random.uniform(key, (_N_JITTER,))
    return _color_jitter(image, u, brightness, contrast, saturation, hue, p)


def _grayscale(image, u, p):
    _check_prob("p", p)
    image = jnp.asarray(image)
    if _off(p) or image.shape[-1] == 1:
        return image
    return jnp.where(u[0] < p, jnp.broadcast_to(rgb_to_grayscale(image), image.shape), image)


def random_grayscale(image: ArrayLike, key: jax.Array, *, p: float) -> jax.Array:
    """With probability ``p`` replace every channel by the ITU-R 601 luma (keeps C channels)."""
    return _grayscale(image, jax.random.uniform(key, (_N_GRAY,)), p)


def _gaussian_blur(image, u, sigma, kernel_size, p):
    _check_prob("p", p)
    _check_interval("sigma", sigma)
    image = jnp.asarray(image, jnp.float32)
    height, width, _ = image.shape
    _check_kernel(kernel_size, height, width)
    if _off(p) or kernel_size == 1:
        return image
    apply = u[0] < p
    s = sigma[0] + (sigma[1] - sigma[0]) * u[1]
    # Not applied: identity matrices. The matmuls run for every image anyway (under vmap both
    # sides of a select would), and no select over two results is needed.
    my = jnp.where(apply, _blur_matrix(s, height, kernel_size), jnp.eye(height))
    mx = jnp.where(apply, _blur_matrix(s, width, kernel_size), jnp.eye(width))
    return jnp.clip(_separable(image, my, mx), 0.0, 1.0)


def gaussian_blur(
    image: ArrayLike,
    key: jax.Array,
    *,
    sigma: tuple[float, float] = (0.1, 2.0),
    kernel_size: int,
    p: float,
) -> jax.Array:
    """With probability ``p`` blur ``[H, W, C]`` (:func:`blur`) with sigma ~ U(sigma) pixels and
    ``kernel_size`` taps (SimCLR / BYOL; see :func:`blur_kernel_size`)."""
    return _gaussian_blur(image, jax.random.uniform(key, (_N_BLUR,)), sigma, kernel_size, p)


def _solarize(image, u, p, threshold):
    _check_prob("p", p)
    image = jnp.asarray(image)
    if _off(p):
        return image
    return jnp.where(u[0] < p, jnp.where(image < threshold, image, 1.0 - image), image)


def solarize(image: ArrayLike, key: jax.Array, *, p: float, threshold: float = 0.5) -> jax.Array:
    """With probability ``p`` invert the pixels >= ``threshold`` (BYOL table 6)."""
    return _solarize(image, jax.random.uniform(key, (_N_SOLARIZE,)), p, threshold)
