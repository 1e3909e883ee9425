"""Multi-crop (Caron et al. 2020, SwAV, arXiv:2006.09882; DINO, arXiv:2104.14294): besides the
two global views, ``local_crops`` small crops of each image, all made on the device in the jitted
step from the same uint8 batch.

    crops = MultiCrop(local_crops=6, local_size=12)
    g1, g2, local = crops.views(view1, view2)    # the global pair with crop scale (0.4, 1)
    xl = local_views(images, key, local, 6)      # [6, B, 12, 12, C]

The local view is DINO's: the first global view's colour recipe at ``local_size`` px with crop
scale ``local_scale``, gaussian blur with probability ``min(view1.blur_prob, 0.5)`` (DINO's 0.5
for its ImageNet views; none where the preset has none) and no solarisation. A method that uses
the local crops declares ``MULTI_CROP = True``; turning them on for another is an error.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from ssl_jax.augment.ops import _check, _check_interval
from ssl_jax.augment.views import ViewConfig, augment


@dataclasses.dataclass(frozen=True)
class MultiCrop:
    """The multi-crop settings: ``config.multi_crop.*`` (frozen, hashable)."""

    local_crops: int = 0  # small crops per image besides the two global views (0: off)
    local_size: int = 96  # side of the local crops in px (DINO: 96 at 224)
    global_scale: tuple = (0.4, 1.0)  # crop scale of the two global views when local_crops > 0
    local_scale: tuple = (0.05, 0.4)  # crop scale of the local crops

    def __post_init__(self):
        for name in ("global_scale", "local_scale"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
            _check_interval(f"config.multi_crop.{name}", getattr(self, name))
            _check(
                f"config.multi_crop.{name}",
                getattr(self, name)[1] <= 1,
                "<= 1",
                getattr(self, name),
            )
        _check("config.multi_crop.local_crops", self.local_crops >= 0, ">= 0", self.local_crops)
        _check("config.multi_crop.local_size", self.local_size >= 1, ">= 1", self.local_size)

    def views(
        self, view1: ViewConfig, view2: ViewConfig
    ) -> tuple[ViewConfig, ViewConfig, ViewConfig | None]:
        """``(global1, global2, local)``: the pair with ``global_scale`` and the local view
        (None, and the pair unchanged, when ``local_crops == 0``)."""
        if not self.local_crops:
            return view1, view2, None
        g1, g2 = (dataclasses.replace(v, crop_scale=self.global_scale) for v in (view1, view2))
        local = dataclasses.replace(
            view1,
            size=self.local_size,
            crop_scale=self.local_scale,
            blur_prob=min(view1.blur_prob, 0.5),
            blur_kernel=None,
            solarize_prob=0.0,
        )
        return g1, g2, local


def local_views(
    images: ArrayLike,
    key: jax.Array,
    view: ViewConfig,
    count: int,
    *,
    dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    """``count`` independently augmented views of every image: ``[B, H, W, C]`` uint8 ->
    ``[count, B, view.size, view.size, C]`` normalised, in ``dtype``. One key per crop (split
    from ``key``), then one per image as :func:`ssl_jax.augment.augment`."""
    keys = jax.random.split(key, count)
    return jax.vmap(lambda k: augment(images, k, view, dtype=dtype))(keys)
