"""Decoding one image file that nobody checked, with bounded time and memory.

    image = decode_image(path, image_size=224, mode="RGB", max_pixels=max_image_pixels())

- Only a regular file is read: the file is opened non-blocking and checked with fstat before a
  byte is read, so a FIFO (whose ``open()`` blocks forever) or a device is an error, not a hang.
- A pixel limit well below Pillow's decompression-bomb limit (89 Mpx warning, 179 Mpx error),
  ``MAX_IMAGE_PIXELS`` by default: a larger image is refused before it is decoded (a 144 Mpx PNG
  of 445 KB used to cost ~1 GB of RAM). Raise it with the environment variable
  ``SSL_JAX_MAX_IMAGE_PIXELS`` or ``FolderSource(max_pixels=...)``; limits above Pillow's also
  need ``PIL.Image.MAX_IMAGE_PIXELS`` raised.
- Reduced-size decoding: a JPEG is decoded at the smallest scale (1/2, 1/4, 1/8) still at least
  image_size on each side (``Image.draft``); the limit applies to that size, so big photos pass.
- 16-bit images (Pillow modes I;16* and I) are scaled to 8 bits (x * 255 / 65535, rounded), not
  clipped to white as Pillow's own conversion does; 16-bit RGB PNGs are already scaled by Pillow.
"""

from __future__ import annotations

import os
import stat
from typing import Any

import numpy as np

from ssl_jax.data.sources import resize_center_crop

MAX_IMAGE_PIXELS = 40_000_000  # default limit: 40 Mpx (RGB: 120 MB decoded), ~half of Pillow's
MAX_PIXELS_ENV = "SSL_JAX_MAX_IMAGE_PIXELS"
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def max_image_pixels() -> int:
    """The pixel limit: ``$SSL_JAX_MAX_IMAGE_PIXELS`` if set, else ``MAX_IMAGE_PIXELS``."""
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not value:
        return MAX_IMAGE_PIXELS
    try:
        limit = int(value.replace("_", ""))
    except ValueError:
        limit = 0
    if limit <= 0:
        raise ValueError(
            f"{MAX_PIXELS_ENV}={value!r} must be a positive number of pixels "
            f"(default {MAX_IMAGE_PIXELS:_})."
        )
    return limit


class ImageTooLargeError(ValueError):
    """An image with more pixels than the decoding limit (see the module docstring)."""


def open_regular_file(path: str | os.PathLike):
    """`path` opened for binary reading, or OSError when it is not a regular file (never blocks:
    a FIFO is opened non-blocking and refused)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "FIFO" if stat.S_ISFIFO(mode) else "socket, device or folder"
            raise OSError(f"not a regular file but a {kind}: {os.fspath(path)!r}")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def to_8bit(im: Any) -> Any:
    """`im` with 16-bit samples (modes I;16*, I) scaled to an 8-bit L image; others unchanged.

    Mode I values outside [0, 65535] (32-bit data) are a ValueError rather than a guess.
    """
    from PIL import Image

    if im.mode not in _SIXTEEN_BIT_MODES and im.mode != "I":
        return im
    a = np.asarray(im).astype(np.int64)
    if a.size and (a.min() < 0 or a.max() > 65535):
        raise ValueError(
            f"32-bit integer image (values {a.min()}..{a.max()}): convert it to 8 or 16 bits"
        )
    return Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), "L")


def decode_image(
    path: str | os.PathLike, *, image_size: int, mode: str, max_pixels: int
) -> np.ndarray:
    """The file at `path` as uint8 [image_size, image_size, C] (mode 'RGB': C=3, 'L': C=1),
    resized (shorter side) and centre-cropped.

    Raises:
      OSError: not a regular file, or unreadable. ImageTooLargeError: over `max_pixels` at the
      reduced decoding size. Any Pillow error for a corrupt file.
    """
    from PIL import Image

    with open_regular_file(path) as f:
        im = Image.open(f)
        im.draft(mode, (image_size, image_size))  # JPEG only: decode at a reduced scale
        w, h = im.size
        if w * h > max_pixels:
            raise ImageTooLargeError(
                f"{w}x{h} = {w * h:,} pixels is over the decoding limit of {max_pixels:,} "
                "(it guards memory): downscale the file, or raise "
                f"the limit with the environment variable {MAX_PIXELS_ENV}={w * h}"
            )
        im.load()
    im = to_8bit(im)
    if im.mode != mode:
        im = im.convert(mode)
    return resize_center_crop(im, image_size)
