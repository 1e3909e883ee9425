"""Sources over TFDS datasets prepared in array_record format, read with `tfds.data_source`.

TFDS itself is imported lazily (inside the functions) since it takes seconds to import.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ssl_jax.data.sources import (
    Example,
    Source,
    check_index,
    resize_center_crop,
    stack_examples,
    to_memory,
)


class TfdsSource(Source):
    """A prepared TFDS dataset, read with `builder.as_data_source` (what tfds.data_source calls).

    Uses the features 'image' and (when present) 'label'; datasets or splits without labels
    give label -1. With `image_size`, images are resized on the host (shorter side, then center
    crop); it is required when the dataset's images vary in size (e.g. imagenet2012).
    Picklable (the TFDS ArrayRecordDataSource pickles its file instructions, not open files)
    and thread-safe (array_record readers are).
    """

    def __init__(
        self,
        builder: Any,
        *,
        split: str = "train",
        image_size: int | None = None,
        name: str | None = None,
    ):
        features = builder.info.features
        if "image" not in features:
            raise ValueError(
                f"TFDS dataset {builder.name!r} has no 'image' feature "
                f"(features: {sorted(features.keys())})"
            )
        shape = tuple(features["image"].shape)
        if len(shape) != 3 or shape[-1] is None:
            raise ValueError(f"TFDS dataset {builder.name!r}: unsupported image shape {shape}")
        if image_size is None and None in shape:
            raise ValueError(
                f"TFDS dataset {builder.name!r} has images of varying size {shape}: "
                "pass image_size=... to resize them to one shape."
            )
        self._has_label = "label" in features
        label_feature = features["label"] if self._has_label else None
        self.num_classes = getattr(label_feature, "num_classes", None)
        names = getattr(label_feature, "names", None)
        self.class_names = list(names) if names else None
        self.image_size = image_size
        self.image_shape = (
            (image_size, image_size, shape[-1]) if image_size else tuple(int(d) for d in shape)
        )
        self.name = name or f"tfds:{builder.name}"
        self.split = split
        self.builder_dir = os.fspath(builder.data_dir)
        try:
            self._ds = builder.as_data_source(split=split)
        except Exception as e:
            fmt = builder.info.file_format
            hint = (
                ""
                if str(getattr(fmt, "value", fmt)) == "array_record"
                else f" tfds.data_source reads only the array_record format, this copy is {fmt}: "
                f"prepare it with `tfds build {builder.name} --file_format array_record`."
            )
            raise ValueError(
                f"Cannot read split {split!r} of TFDS dataset {builder.name!r} at "
                f"{self.builder_dir} (available splits: {sorted(builder.info.splits.keys())}): "
                f"{str(e).rstrip('.')}.{hint}"
            ) from e

    def __len__(self) -> int:
        return len(self._ds)

    def _convert(self, record: dict[str, Any]) -> Example:
        image = np.asarray(record["image"], np.uint8)
        if image.ndim == 2:
            image = image[..., None]
        if self.image_size is not None:
            image = resize_center_crop(image, self.image_size)
        label = record["label"] if self._has_label else -1
        return {"image": image, "label": np.int32(label)}

    def __getitem__(self, index: int) -> Example:
        return self._convert(self._ds[check_index(index, len(self))])

    def read_batch(self, indices: Sequence[int]) -> Example:
        # One __getitems__ call reads all records in parallel (array_record) and is ~5x faster
        # than a loop over __getitem__ for small images.
        n = len(self)
        records = self._ds.__getitems__([check_index(i, n) for i in indices])
        return stack_examples([self._convert(r) for r in records], self.image_shape)


def default_tfds_data_dir() -> str:
    """TFDS's default data dir: $TFDS_DATA_DIR, else ~/tensorflow_datasets (read at call time)."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def tfds_source(
    name: str,
    *,
    split: str = "train",
    data_dir: str | None = None,
    image_size: int | None = None,
    in_memory: bool = False,
) -> Source:
    """Opens an already prepared TFDS dataset (`name` may carry a config/version: 'a/b:1.0.0').

    in_memory=True reads the whole split into an ArraySource (see `to_memory`).
    """
    import tensorflow_datasets as tfds

    data_dir = data_dir or default_tfds_data_dir()
    how = (
        f"Prepare it on a machine with internet with `tfds build {name} --data_dir {data_dir} "
        "--file_format array_record` (datasets with manual downloads such as imagenet2012 "
        "need the archives in <data_dir>/downloads/manual first, see the TFDS catalog page) "
        "and copy the data dir here, or pass data_dir= where it was prepared."
    )
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # unknown name and nothing on disk, or a broken builder module
        first_line = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else repr(e)
        raise FileNotFoundError(
            f"TFDS dataset {name!r} was not found in data_dir {data_dir!r} ({first_line}). {how}"
        ) from e
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"TFDS dataset {name!r} is not prepared in data_dir {data_dir!r} "
            f"(expected {builder.data_dir}). {how}"
        )
    source = TfdsSource(builder, split=split, image_size=image_size)
    return to_memory(source) if in_memory else source


def open_tfds(
    arg: str, *, split: str, data_dir: str | None, image_size: int | None, seed: int, **kw: Any
) -> TfdsSource:
    """The ``'tfds:NAME'`` spec (kw: in_memory=)."""
    del seed
    return tfds_source(arg, split=split, data_dir=data_dir, image_size=image_size, **kw)
