"""Random-access image sources: the base class, in-memory and synthetic sources, host resizing.

A *source* is what the grain pipeline reads from: a random-access, thread-safe, picklable object

    len(src)                      number of examples
    src[i]                        {'image': uint8 [H, W, C], 'label': int32 scalar (-1 if unknown)}
    src.read_batch(indices)       the same, stacked: {'image': [B, H, W, C], 'label': [B]}
    src.image_shape               (H, W, C) of every example
    src.num_classes               number of classes, or None when there are no labels
    src.class_names               list of class names, or None
    src.name                      a short description, e.g. 'tfds:cifar10'

Every source returns images of ONE fixed shape, so batches stack without padding; sources whose
files vary in size (image folders, ImageNet) therefore need `image_size`, and are resized on the
host (shorter side to `image_size`, then a center crop) with pillow.

Sources are opened by spec string through :func:`ssl_jax.data.registry.get_source`.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

Example = dict[str, np.ndarray]


class Source:
    """Base class of the sources: shared defaults; subclasses implement `__len__`/`__getitem__`."""

    name: str = "source"
    image_shape: tuple[int, int, int]
    num_classes: int | None = None
    class_names: list[str] | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Example:
        raise NotImplementedError

    def read_batch(self, indices: Sequence[int]) -> Example:
        """Reads `indices` and stacks them: {'image': uint8 [B, H, W, C], 'label': int32 [B]}."""
        examples = [self[int(i)] for i in indices]
        return stack_examples(examples, self.image_shape)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, len={len(self)}, "
            f"image_shape={self.image_shape}, num_classes={self.num_classes})"
        )


def stack_examples(examples: Sequence[Example], image_shape: Sequence[int]) -> Example:
    """Stacks examples into a batch; an empty list gives a [0, H, W, C] batch."""
    if not examples:
        return {
            "image": np.zeros((0, *image_shape), np.uint8),
            "label": np.zeros((0,), np.int32),
        }
    return {
        "image": np.stack([e["image"] for e in examples]).astype(np.uint8, copy=False),
        "label": np.asarray([e["label"] for e in examples], np.int32),
    }


def check_index(index: int, length: int) -> int:
    """Python-style index check (negative indices count from the end)."""
    index = int(index)
    if index < 0:
        index += length
    if not 0 <= index < length:
        raise IndexError(f"index {index} out of range for a source of {length} examples")
    return index


def resize_center_crop(image: Any, size: int) -> np.ndarray:
    """Resizes the shorter side to `size` and center-crops to [size, size, C] (pillow, bilinear).

    `image` is a PIL image or a uint8 array [H, W, C]; the result is a uint8 array [size, size, C]
    with the same number of channels. Images already of that size are returned unchanged.
    """
    from PIL import Image

    if isinstance(image, np.ndarray):
        if image.shape[0] == size and image.shape[1] == size:
            return image
        channels = image.shape[-1]
        pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    else:
        pil = image
        channels = len(pil.getbands())
    w, h = pil.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
        # reducing_gap: when shrinking a lot, box-reduce by an integer factor first (fast), then
        # bilinear (pillow's bilinear filter widens with the scale, so it is antialiased).
        pil = pil.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=3.0)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        pil = pil.crop((left, top, left + size, top + size))
    out = np.asarray(pil, np.uint8)
    return out.reshape(size, size, channels)


class ArraySource(Source):
    """A source over in-memory arrays: images uint8 [N, H, W, C], labels int [N] or None."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | None = None,
        *,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        name: str = "array",
    ):
        images = np.asarray(images)
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}"
            )
        if labels is None:
            labels = np.full((len(images),), -1, np.int32)
        labels = np.asarray(labels, np.int32)
        if labels.shape != (len(images),):
            raise ValueError(f"labels must have shape ({len(images)},), got {labels.shape}")
        self._images, self._labels = images, labels
        self.image_shape = tuple(int(d) for d in images.shape[1:])
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else None
        self.name = name

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int) -> Example:
        index = check_index(index, len(self))
        return {"image": self._images[index], "label": self._labels[index]}

    def read_batch(self, indices: Sequence[int]) -> Example:
        idx = np.asarray(indices, np.int64)
        return {"image": self._images[idx], "label": self._labels[idx]}


def to_memory(source: Source, *, chunk_size: int = 4096) -> ArraySource:
    """Reads a whole source into an ArraySource (fast random access; costs N*H*W*C bytes).

    For small datasets (Fashion-MNIST: 47 MB, CIFAR-10: 150 MB) this takes the per-record
    deserialization of TFDS out of the training loop.
    """
    n = len(source)
    parts = [source.read_batch(range(i, min(n, i + chunk_size))) for i in range(0, n, chunk_size)]
    return ArraySource(
        np.concatenate([p["image"] for p in parts]),
        np.concatenate([p["label"] for p in parts]),
        num_classes=source.num_classes,
        class_names=source.class_names,
        name=source.name,
    )


class SyntheticSource(Source):
    """Deterministic random images with a learnable class signal, generated on the fly.

    Example i of (seed, split) is a pure function of (seed, split, i): nothing is stored, so any
    size is free. Label = i % num_classes (balanced). Each class has a fixed mean colour and a
    fixed stripe orientation (the same for every seed and split, so a 'test' split shares the
    classes of 'train'); each example adds a random stripe phase, a brightness offset and
    pixel noise. Colour alone separates the classes in raw pixels; the stripe orientation is a
    signal that survives colour augmentation.
    """

    def __init__(
        self,
        *,
        num_examples: int = 1024,
        image_shape: Sequence[int] = (32, 32, 3),
        num_classes: int = 10,
        seed: int = 0,
        split: str = "train",
    ):
        if num_examples <= 0:
            raise ValueError(f"num_examples must be > 0, got {num_examples}")
        if num_classes <= 0:
            raise ValueError(f"num_classes must be > 0, got {num_classes}")
        if len(image_shape) != 3 or min(image_shape) <= 0:
            raise ValueError(f"image_shape must be (H, W, C) > 0, got {tuple(image_shape)}")
        self.num_examples = int(num_examples)
        self.image_shape = tuple(int(d) for d in image_shape)
        self.num_classes = int(num_classes)
        self.seed = int(seed)
        self.split = split
        self.name = "synthetic"
        self._split_id = zlib.crc32(split.encode())
        h, w, c = self.image_shape
        # Class parameters depend on nothing but the class index (fixed generator seed).
        class_rng = np.random.default_rng(20240611)
        self._colours = class_rng.uniform(60.0, 195.0, size=(self.num_classes, c))
        angles = np.pi * np.arange(self.num_classes) / self.num_classes
        yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        freq = 2 * np.pi / max(4.0, max(h, w) / 3.0)
        # [K, H, W]: position along each class's stripe direction, in radians.
        self._ramps = freq * (
            np.cos(angles)[:, None, None] * xx + np.sin(angles)[:, None, None] * yy
        )

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> Example:
        index = check_index(index, len(self))
        label = index % self.num_classes
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, self._split_id, index])
        phase = rng.uniform(0.0, 2 * np.pi)
        brightness = rng.normal(0.0, 8.0)
        stripes = 40.0 * np.sin(self._ramps[label] + phase)[..., None]
        noise = rng.normal(0.0, 12.0, size=self.image_shape)
        image = self._colours[label] + stripes + brightness + noise
        return {
            "image": np.clip(np.rint(image), 0, 255).astype(np.uint8),
            "label": np.int32(label),
        }


def open_synthetic(
    arg: str, *, split: str, data_dir: str | None, image_size: int | None, seed: int, **kw: Any
) -> SyntheticSource:
    """The ``'synthetic'`` spec (kw: num_examples=, image_shape=, num_classes=); ``image_size``
    overrides the side of ``image_shape``."""
    del arg, data_dir
    if image_size is not None:
        channels = tuple(kw.get("image_shape", (32, 32, 3)))[-1]
        kw = {**kw, "image_shape": (image_size, image_size, channels)}
    return SyntheticSource(seed=seed, split=split, **kw)
