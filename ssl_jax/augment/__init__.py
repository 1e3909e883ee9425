"""On-device image augmentation for self-supervised pretraining.

Every random op is a pure function ``op(image, key, *, ...)`` of one float32 image ``[H, W, C]``
(values in [0, 1], ``C`` = 1 or 3) and a PRNG key; the strength arguments are static Python
numbers. A view recipe (:class:`ViewConfig`) chains them in the order of the papers::

    random_resized_crop -> random_flip -> color_jitter -> random_grayscale -> gaussian_blur
    -> solarize -> normalise (mean/std)

and :func:`augment` / :func:`two_views` vmap that chain over a uint8 batch ``[B, H, W, C]`` that is
already on the device (possibly sharded over a mesh), with one key per image::

    view1, view2 = byol_views(224)
    step_views = jax.jit(two_views, static_argnames=("view1", "view2", "dtype"))
    x1, x2 = step_views(images, jax.random.fold_in(key, step), view1, view2)

Spatial ops are matmuls: the crop+bilinear resize and the gaussian blur are both separable linear
maps, computed as ``My @ img @ Mx^T`` with per-image matrices built from the sampled box / sigma.
That is a batched matmul under ``vmap``: fast on GPU/TPU, and on a 2-core CPU it was faster than
shifted-slice sums (1.4x) and grouped convolutions (6x) for a 23-tap blur at 224 px.

Semantics follow torchvision (which the SimCLR/BYOL PyTorch ports use): integer crop boxes with the
10-try rejection sampler and central-crop fallback, multiplicative brightness, blend-based
contrast/saturation with ITU-R 601 luma, hue shift in HSV, ops of the colour jitter in a random
order, clipping to [0, 1] after each op (as SimCLR's own TF code does).

Modules: :mod:`~ssl_jax.augment.ops` (the per-image ops), :mod:`~ssl_jax.augment.views` (view
recipes, ``augment``, ``two_views``) and :mod:`~ssl_jax.augment.multi_crop` (local crops besides
the two global views); everything public is re-exported here.
"""

from ssl_jax.augment.multi_crop import MultiCrop, local_views
from ssl_jax.augment.ops import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    blur,
    blur_kernel_size,
    color_jitter,
    gaussian_blur,
    hsv_to_rgb,
    random_flip,
    random_grayscale,
    random_resized_crop,
    resized_crop,
    rgb_to_grayscale,
    rgb_to_hsv,
    sample_crop_box,
    solarize,
)
from ssl_jax.augment.views import (
    VIEW_PRESETS,
    ViewConfig,
    ViewPreset,
    apply_view,
    augment,
    byol_views,
    get_views,
    grayscale_preset,
    simclr_cifar,
    simclr_imagenet,
    to_float,
    two_views,
)

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MultiCrop",
    "ViewConfig",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "apply_view",
    "augment",
    "blur",
    "blur_kernel_size",
    "byol_views",
    "color_jitter",
    "gaussian_blur",
    "VIEW_PRESETS",
    "ViewPreset",
    "get_views",
    "grayscale_preset",
    "hsv_to_rgb",
    "local_views",
    "random_flip",
    "random_grayscale",
    "random_resized_crop",
    "resized_crop",
    "rgb_to_grayscale",
    "rgb_to_hsv",
    "sample_crop_box",
    "simclr_cifar",
    "simclr_imagenet",
    "solarize",
    "to_float",
    "two_views",
]
