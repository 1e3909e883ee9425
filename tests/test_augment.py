"""Tests for ssl_jax.augment: references in float64 NumPy, zero-strength identities, rates over a
few thousand samples, determinism, and equality of sharded and unsharded batches."""

import colorsys
import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ssl_jax import augment as A

RNG = np.random.default_rng(0)
IMG = jnp.asarray(RNG.random((16, 16, 3)), jnp.float32)  # a colour image in [0, 1]
RAW = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # no normalisation: views stay in [0, 1]
# A view that changes nothing: every probability 0, the full image as crop.
IDENTITY_VIEW = A.ViewConfig(
    size=16,
    crop_scale=(1.0, 1.0),
    crop_ratio=(1.0, 1.0),
    flip_prob=0.0,
    jitter_prob=0.0,
    grayscale_prob=0.0,
    blur_prob=0.0,
    solarize_prob=0.0,
    **RAW,
)
two_views = jax.jit(A.two_views, static_argnames=("view1", "view2", "dtype"))
augment = jax.jit(A.augment, static_argnames=("view", "dtype"))
blur = jax.jit(A.blur, static_argnames="kernel_size")
resized_crop = jax.jit(A.resized_crop, static_argnames=("size", "antialias"))


def keys(n, seed=0):
    return jax.random.split(jax.random.key(seed), n)


def over_keys(fn, n, seed=0):
    """fn(key) evaluated for n keys, jitted and vmapped."""
    return jax.jit(jax.vmap(fn))(keys(n, seed))


def uint8_batch(b, h=24, w=24, c=3, seed=1):
    images = np.random.default_rng(seed).integers(0, 256, (b, h, w, c), dtype=np.uint8)
    images[0] = 0  # black, white and gray images: the HSV and contrast corner cases
    images[1] = 255
    images[2] = 128
    return images


# Shared by several tests so that they reuse compiled functions: every op of the chain is on.
IMAGES = uint8_batch(8, 16, 16)
VIEW = dataclasses.replace(A.simclr_cifar(16), blur_prob=0.5, blur_kernel=3, solarize_prob=0.2)


# ----------------------------------------------------------------------------- batch functions


@pytest.mark.parametrize("name", ["simclr_imagenet", "byol", "grayscale"])  # cifar: VIEW below
def test_presets_shapes_ranges_no_nan(name):
    channels = 1 if name == "grayscale" else 3
    images = uint8_batch(64, c=channels)
    raw = dict(mean=(0.0,) * channels, std=(1.0,) * channels)
    for view in set(A.get_views(name, 32 if name != "grayscale" else 16)):  # 32 px: 3-tap blur
        x = augment(images, jax.random.key(0), dataclasses.replace(view, **raw))
        assert x.shape == (64, view.size, view.size, channels) and x.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(x)))  # black, white, gray images included
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def test_same_key_same_views_different_keys_different():
    a1, a2 = two_views(IMAGES, jax.random.key(7), VIEW, VIEW)
    b1, b2 = two_views(IMAGES, jax.random.key(7), VIEW, VIEW)
    c1, _ = two_views(IMAGES, jax.random.key(8), VIEW, VIEW)
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    assert a1.shape == (8, 16, 16, 3) and a1.dtype == jnp.float32
    raw = np.asarray(a1) * VIEW.std + VIEW.mean
    assert np.all(np.isfinite(raw)) and raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6
    for x, y in ((a1, c1), (a1, a2)):  # another key; the other view (independent keys)
        per_image = np.abs(np.asarray(x) - np.asarray(y)).reshape(8, -1).max(axis=1)
        assert (per_image > 1e-3).sum() >= 6  # nearly every image's view changes


def test_float_input_gives_the_views_of_its_uint8():
    key = jax.random.key(7)
    x1, x2 = two_views(IMAGES, key, VIEW, VIEW)
    f1, f2 = two_views(IMAGES / np.float32(255), key, VIEW, VIEW)
    np.testing.assert_allclose(f1, x1, atol=1e-5)
    np.testing.assert_allclose(f2, x2, atol=1e-5)


def test_identity_view_normalisation_and_bfloat16():
    images = IMAGES.astype(np.float32) / np.float32(255)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    view = dataclasses.replace(IDENTITY_VIEW, mean=mean, std=std)
    out = augment(IMAGES, jax.random.key(0), view)
    np.testing.assert_allclose(out, (images - mean) / std, atol=1e-5)
    bf16 = augment(IMAGES, jax.random.key(0), view, dtype=jnp.bfloat16)
    assert bf16.dtype == jnp.bfloat16
    np.testing.assert_allclose(bf16.astype(jnp.float32), out, rtol=1e-2, atol=1e-2)


def test_input_checks():
    view = A.simclr_cifar(16)
    with pytest.raises(ValueError, match="uint8 or float"):
        A.augment(np.zeros((2, 16, 16, 3), np.int32), jax.random.key(0), view)
    with pytest.raises(ValueError, match="ndim"):
        A.augment(np.zeros((16, 16, 3), np.uint8), jax.random.key(0), view)
    with pytest.raises(ValueError, match="mean"):  # 3-channel statistics on a 1-channel batch
        A.augment(np.zeros((2, 16, 16, 1), np.uint8), jax.random.key(0), view)


def test_sharded_batch_equals_unsharded():
    mesh = Mesh(np.array(jax.devices()), ("data",))
    assert mesh.size == 8
    sharded = jax.device_put(IMAGES, NamedSharding(mesh, P("data")))  # one image per device
    key = jax.random.key(7)
    x1, x2 = two_views(IMAGES, key, VIEW, VIEW)
    s1, s2 = two_views(sharded, key, VIEW, VIEW)
    assert len(s1.sharding.device_set) == 8
    np.testing.assert_allclose(s1, x1, atol=1e-5)  # fusions differ: a few ulps
    np.testing.assert_allclose(s2, x2, atol=1e-5)


# ----------------------------------------------------------------------------- presets and config


def test_presets_follow_the_papers():
    sim = A.simclr_imagenet()
    assert (sim.brightness, sim.contrast, sim.saturation, sim.hue) == (0.8, 0.8, 0.8, 0.2)
    assert (sim.jitter_prob, sim.grayscale_prob, sim.blur_prob) == (0.8, 0.2, 0.5)
    assert sim.kernel_size == 23 and sim.crop_scale == (0.08, 1.0)
    cifar = A.simclr_cifar()
    assert cifar.size == 32 and cifar.blur_prob == 0.0 and cifar.brightness == 0.4
    b1, b2 = A.byol_views()
    assert (b1.blur_prob, b2.blur_prob, b1.solarize_prob, b2.solarize_prob) == (1, 0.1, 0, 0.2)
    assert (b1.brightness, b1.contrast, b1.saturation, b1.hue) == (0.4, 0.4, 0.2, 0.1)
    gray = A.grayscale_preset()
    assert gray.saturation == gray.hue == gray.grayscale_prob == 0 and len(gray.mean) == 1
    assert A.get_views("byol", 64) == A.byol_views(64)
    assert A.get_views("simclr_cifar") == (cifar, cifar)
    with pytest.raises(ValueError, match="simclr_imagenet"):
        A.get_views("mocov2")
    assert [A.blur_kernel_size(s) for s in (16, 28, 32, 96, 224)] == [1, 3, 3, 9, 23]


def test_view_config_is_hashable_and_validated():
    view = A.ViewConfig(crop_scale=[0.2, 1.0])
    assert view.crop_scale == (0.2, 1.0) and hash(view) == hash(A.ViewConfig(crop_scale=(0.2, 1)))
    for bad in [
        dict(flip_prob=1.5),
        dict(hue=0.7),
        dict(crop_scale=(0.5, 0.1)),
        dict(blur_kernel=4),
        dict(std=(0.0, 1.0, 1.0)),
        dict(size=0),
    ]:
        with pytest.raises(ValueError, match=next(iter(bad))):
            A.ViewConfig(**bad)


# ----------------------------------------------------------------------------- per-op identities


def test_every_op_is_identity_at_zero_strength():
    zero = dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)

    @jax.jit
    def all_ops(img, key):  # one compilation for all of them
        return {
            "crop": A.random_resized_crop(img, key, size=16, scale=(1.0, 1.0), ratio=(1.0, 1.0)),
            "flip": A.random_flip(img, key, p=0.0),
            "jitter 0": A.color_jitter(img, key, **zero, p=1.0),
            "jitter p=0": A.color_jitter(img, key, **{**zero, "brightness": 1.0}, p=0.0),
            "grayscale": A.random_grayscale(img, key, p=0.0),
            "blur p=0": A.gaussian_blur(img, key, kernel_size=5, p=0.0),
            "blur k=1": A.gaussian_blur(img, key, kernel_size=1, p=1.0),
            "solarize p=0": A.solarize(img, key, p=0.0),
            "solarize t>1": A.solarize(img, key, p=1.0, threshold=1.01),
            "brightness": A.adjust_brightness(img, 1.0),
            "contrast": A.adjust_contrast(img, 1.0),
            "saturation": A.adjust_saturation(img, 1.0),
            "hue": A.adjust_hue(img, 0.0),
        }

    for seed in range(3):
        for name, out in all_ops(IMG, jax.random.key(seed)).items():
            atol = 1e-6 if name == "hue" else 0.0  # an RGB -> HSV -> RGB round trip
            np.testing.assert_allclose(out, IMG, atol=atol, rtol=0, err_msg=name)


# ----------------------------------------------------------------------------- rates


def test_flip_rate_and_result():
    img = jnp.asarray(RNG.random((8, 8, 3)), jnp.float32)  # not mirror-symmetric
    out = over_keys(lambda k: A.random_flip(img, k, p=0.3), 4000)
    flipped = np.all(out == img[:, ::-1], axis=(1, 2, 3))
    kept = np.all(out == img, axis=(1, 2, 3))
    assert np.all(flipped ^ kept)
    assert abs(flipped.mean() - 0.3) < 0.03


def test_grayscale_rate_and_luma():
    out = over_keys(lambda k: A.random_grayscale(IMG, k, p=0.25), 4000)
    gray = np.all(out[..., :1] == out, axis=(1, 2, 3))
    assert abs(gray.mean() - 0.25) < 0.03
    luma = np.asarray(IMG, np.float64) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(out[np.argmax(gray), ..., 1], luma, atol=1e-6)
    np.testing.assert_array_equal(out[np.argmin(gray)], IMG)


def test_jitter_rate_and_factor_range():
    img = jnp.full((4, 4, 3), 0.5, jnp.float32)
    strengths = dict(brightness=0.5, contrast=0.0, saturation=0.0, hue=0.0)
    out = over_keys(lambda k: A.color_jitter(img, k, **strengths, p=0.3), 4000)
    factor = np.asarray(out[:, 0, 0, 0]) / 0.5
    changed = factor != 1.0
    assert abs(changed.mean() - 0.3) < 0.03
    assert factor.min() >= 0.5 and factor.max() <= 1.5
    assert factor[changed].min() < 0.55 and factor[changed].max() > 1.45


def test_blur_rate():
    out = over_keys(lambda k: A.gaussian_blur(IMG, k, kernel_size=5, p=0.4), 1000)
    blurred = np.any(out != IMG, axis=(1, 2, 3))
    assert abs(blurred.mean() - 0.4) < 0.05


# ----------------------------------------------------------------------------- crop


def np_crop_box(rng, height, width, scale, ratio):
    """torchvision RandomResizedCrop.get_params, transcribed."""
    for _ in range(10):
        area = height * width * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        w, h = round(np.sqrt(area * aspect)), round(np.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w
    w, h = width, height
    if width / height < ratio[0]:
        h = round(w / ratio[0])
    elif width / height > ratio[1]:
        w = round(h * ratio[1])
    return (height - h) // 2, (width - w) // 2, h, w


def test_crop_box_statistics_match_torchvision():
    height, width, scale, ratio = 48, 64, (0.08, 1.0), (3 / 4, 4 / 3)
    boxes = np.asarray(
        over_keys(lambda k: A.sample_crop_box(k, height, width, scale=scale, ratio=ratio), 4000)
    )
    y, x, h, w = boxes.T
    assert np.all((y >= 0) & (x >= 0) & (h > 0) & (w > 0))
    assert np.all((y + h <= height) & (x + w <= width))
    frac = h * w / (height * width)
    tol = 0.02  # integer rounding of h and w
    assert frac.min() >= scale[0] - tol and frac.max() <= 1.0
    assert frac.min() < 0.1 and frac.max() > 0.9  # covers the range
    fits = frac < 1.0  # the rest are central-crop fallbacks (full image here: in-range aspect)
    aspect = w[fits] / h[fits]
    assert aspect.min() > ratio[0] * 0.9 and aspect.max() < ratio[1] * 1.1
    rng = np.random.default_rng(0)
    ref = np.array([np_crop_box(rng, height, width, scale, ratio) for _ in range(4000)])
    ref_frac = ref[:, 2] * ref[:, 3] / (height * width)
    assert abs(frac.mean() - ref_frac.mean()) < 0.02  # std ~0.27: 4 standard errors
    assert abs(np.mean(frac == 1.0) - np.mean(ref_frac == 1.0)) < 0.02
    # offsets are uniform over the free range: the box centre sits in the middle on average, and
    # boxes touch every edge of the image
    assert abs(np.mean((y + h / 2) / height) - 0.5) < 0.02
    assert abs(np.mean((x + w / 2) / width) - 0.5) < 0.02
    assert ((y == 0) & (h < height)).any() and ((y + h == height) & (h < height)).any()
    assert ((x == 0) & (w < width)).any() and ((x + w == width) & (w < width)).any()


def test_crop_box_fallback_is_the_central_crop():
    # area >= 0.9 with aspect >= 2 never fits a square image: torchvision's fallback
    box = A.sample_crop_box(jax.random.key(0), 32, 32, scale=(0.9, 1.0), ratio=(2.0, 3.0))
    np.testing.assert_array_equal(box, [8, 0, 16, 32])
    box = A.sample_crop_box(jax.random.key(0), 30, 10, scale=(0.95, 1.0), ratio=(0.5, 0.5))
    np.testing.assert_array_equal(box, [5, 0, 20, 10])
    box = A.sample_crop_box(jax.random.key(0), 10, 40, scale=(1.0, 1.0), ratio=(0.5, 0.6))
    np.testing.assert_array_equal(box, [0, 17, 10, 6])  # too wide: full height
    box = A.sample_crop_box(jax.random.key(0), 12, 16, scale=(1.5, 2.0), ratio=(0.5, 2.0))
    np.testing.assert_array_equal(box, [0, 0, 12, 16])  # aspect in range: the whole image


def np_bilinear(img, out_h, out_w):
    """align_corners=False bilinear, edges clamped (torch F.interpolate, antialias=False)."""

    def taps(n_in, n_out):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        i0 = np.floor(src).astype(int)
        return i0, np.minimum(i0 + 1, n_in - 1), src - i0

    y0, y1, fy = taps(img.shape[0], out_h)
    x0, x1, fx = taps(img.shape[1], out_w)
    rows = img[y0] * (1 - fy)[:, None, None] + img[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


@pytest.mark.parametrize("shape,size", [((16, 16), 24), ((32, 20), 16), ((12, 12), 12)])
def test_resize_full_box_matches_numpy_bilinear(shape, size):
    img = RNG.random(shape + (3,))
    box = (0, 0) + shape
    out = resized_crop(img.astype(np.float32), box, size, antialias=False)
    np.testing.assert_allclose(out, np_bilinear(img, size, size), atol=1e-5)


def test_resized_crop_is_crop_then_resize():
    img = RNG.random((40, 36, 3))
    y0, x0, h, w = 5, 3, 30, 21
    crop = img[y0 : y0 + h, x0 : x0 + w]
    box = (y0, x0, h, w)
    out = resized_crop(img.astype(np.float32), box, 14, antialias=False)
    np.testing.assert_allclose(out, np_bilinear(crop, 14, 14), atol=1e-5)
    # antialiased downscale = jax.image.resize's triangle kernel scaled by the factor (PIL)
    out = resized_crop(img.astype(np.float32), box, 14, antialias=True)
    ref = jax.image.resize(crop.astype(np.float32), (14, 14, 3), "linear", antialias=True)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    assert not np.allclose(out, np_bilinear(crop, 14, 14), atol=1e-3)  # the antialias matters


# ----------------------------------------------------------------------------- colour


def np_luma(img):
    return img @ np.array([0.299, 0.587, 0.114])


def np_adjust(img, op, factor):
    """float64 NumPy transcription of torchvision's four colour ops (op 0 b, 1 c, 2 s, 3 hue)."""
    if op == 3:
        hsv = np.array([colorsys.rgb_to_hsv(*p) for p in img.reshape(-1, 3)])
        hsv[:, 0] = (hsv[:, 0] + factor) % 1.0
        return np.array([colorsys.hsv_to_rgb(*p) for p in hsv]).reshape(img.shape)
    target = [0.0, np_luma(img).mean(), np_luma(img)[..., None]][op]
    return np.clip(factor * img + (1 - factor) * target, 0, 1)


def test_hsv_matches_colorsys_and_round_trips():
    pixels = np.concatenate(
        [RNG.random((500, 3)), np.eye(3), 1 - np.eye(3), [[0, 0, 0], [1, 1, 1], [0.3] * 3]]
    )
    hsv = np.asarray(A.rgb_to_hsv(pixels.astype(np.float32)), np.float64)
    ref = np.array([colorsys.rgb_to_hsv(*p) for p in pixels])
    hue_err = np.abs((hsv[:, 0] - ref[:, 0] + 0.5) % 1.0 - 0.5)  # hue is circular
    assert hue_err.max() < 1e-5
    np.testing.assert_allclose(hsv[:, 1:], ref[:, 1:], atol=1e-5)
    rgb = A.hsv_to_rgb(ref.astype(np.float32))
    ref_rgb = np.array([colorsys.hsv_to_rgb(*p) for p in ref])
    np.testing.assert_allclose(rgb, ref_rgb, atol=1e-5)
    round_trip = A.hsv_to_rgb(A.rgb_to_hsv(pixels.astype(np.float32)))
    np.testing.assert_allclose(round_trip, pixels, atol=1e-5)
    assert np.all(np.isfinite(hsv))


@pytest.mark.parametrize("op,factor", [(0, 1.3), (1, 0.6), (1, 1.7), (2, 0.2), (2, 1.8), (3, 0.3)])
def test_colour_ops_match_numpy(op, factor):
    fn = [A.adjust_brightness, A.adjust_contrast, A.adjust_saturation, A.adjust_hue][op]
    ref = np_adjust(np.asarray(IMG, np.float64), op, factor)
    np.testing.assert_allclose(fn(IMG, factor), ref, atol=1e-5)


def test_jitter_applies_the_ops_in_the_given_order():
    factors = jnp.array([1.4, 0.5, 1.9, 0.15])
    run = jax.jit(A.ops._jitter_in_order, static_argnames="use_hue")
    img = np.asarray(IMG, np.float64)
    outcomes = set()
    for order in itertools.permutations(range(4)):
        ref = img
        for op in order:
            ref = np_adjust(ref, op, float(factors[op]))
        out = run(IMG, jnp.array(order), factors, use_hue=True)
        np.testing.assert_allclose(out, ref, atol=1e-5, err_msg=str(order))
        outcomes.add(np.asarray(out).round(4).tobytes())
        ref = img  # without the hue, op 3 is skipped wherever it stands
        for op in order:
            ref = ref if op == 3 else np_adjust(ref, op, float(factors[op]))
        out = run(IMG, jnp.array(order), factors, use_hue=False)
        np.testing.assert_allclose(out, ref, atol=1e-5)
    assert len(outcomes) > 12  # the order matters for these factors, so the test can fail


def test_jitter_order_is_uniform_over_permutations():
    strengths = (0.4, 0.4, 0.4, 0.1)
    orders, _ = over_keys(
        lambda k: A.ops._jitter_params(jax.random.uniform(k, (8,)), *strengths), 2400
    )
    codes = np.asarray(orders) @ np.array([64, 16, 4, 1])
    counts = np.unique(codes, return_counts=True)[1]
    assert len(counts) == 24 and counts.min() > 60  # expected 100 each
    tied, _ = A.ops._jitter_params(jnp.array([0.5, 0.5, 0.1, 0.5, 0, 0, 0, 0]), *strengths)
    np.testing.assert_array_equal(tied, [2, 0, 1, 3])  # ties keep it a permutation


def test_jitter_on_grayscale_uses_only_brightness_and_contrast():
    img = jnp.asarray(RNG.random((8, 8, 1)), jnp.float32)
    b_c = dict(brightness=0.5, contrast=0.5, p=1.0)
    for seed in range(3):
        key = jax.random.key(seed)
        full = A.color_jitter(img, key, saturation=0.8, hue=0.3, **b_c)
        np.testing.assert_array_equal(full, A.color_jitter(img, key, saturation=0, hue=0, **b_c))
        assert full.shape == img.shape and not np.array_equal(full, img)


# ----------------------------------------------------------------------------- blur, solarize


def np_blur(img, sigma, kernel_size):
    r = kernel_size // 2
    kernel = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    out = img
    for axis in (0, 1):
        pad = [(0, 0)] * 3
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="reflect")
        n = img.shape[axis]
        out = sum(kernel[t] * np.take(padded, range(t, t + n), axis=axis) for t in range(2 * r + 1))
    return out


@pytest.mark.parametrize("shape,sigma,kernel_size", [((12, 15), 0.7, 5), ((16, 16), 1.5, 9)])
def test_blur_matches_numpy(shape, sigma, kernel_size):
    img = RNG.random(shape + (3,))
    out = blur(img.astype(np.float32), sigma, kernel_size)
    np.testing.assert_allclose(out, np_blur(img, sigma, kernel_size), atol=1e-5)


def test_blur_kernel_wider_than_half_the_image():
    img = RNG.random((4, 5, 1))  # radius 3 reflects past the middle of a 4-pixel side
    np.testing.assert_allclose(
        blur(img.astype(np.float32), 2.0, 7), np_blur(img, 2.0, 7), atol=1e-5
    )
    with pytest.raises(ValueError, match="kernel_size"):
        A.blur(img.astype(np.float32), 2.0, 9)
    with pytest.raises(ValueError, match="kernel_size"):
        A.gaussian_blur(IMG, jax.random.key(0), kernel_size=4, p=1.0)


def test_gaussian_blur_uses_a_sigma_in_range():
    out = A.gaussian_blur(IMG, jax.random.key(2), sigma=(0.5, 0.5), kernel_size=5, p=1.0)
    ref = np_blur(np.asarray(IMG, np.float64), 0.5, 5)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_solarize_matches_numpy():
    img = np.asarray(IMG)
    for threshold in (0.5, 0.25):
        out = A.solarize(IMG, jax.random.key(0), p=1.0, threshold=threshold)
        np.testing.assert_allclose(out, np.where(img < threshold, img, 1 - img), atol=1e-7)
    out = over_keys(lambda k: A.solarize(IMG, k, p=0.2), 2000)
    assert abs(np.any(out != IMG, axis=(1, 2, 3)).mean() - 0.2) < 0.03
