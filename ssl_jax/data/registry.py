"""Data sources by spec string: ``'KIND'`` or ``'KIND:ARG'`` (``'fashion_mnist'``,
``'tfds:cifar10'``, ``'folder:/path'``, ``'synthetic'``).

Each kind is an opener ``open_KIND(arg, *, split, data_dir, image_size, seed, **kw)`` in the file
of its source, registered here lazily (TFDS takes seconds to import and only some kinds need it).
A new source is its file plus one line below and one line in :data:`SPEC_FORMS`.
"""

from __future__ import annotations

from typing import Any

from ssl_jax.data.sources import Source
from ssl_jax.registry import Registry

SOURCES: Registry[Any] = Registry("data source", field="config.dataset")
SOURCES.add("fashion_mnist", "ssl_jax.data.fashion_mnist:open_fashion_mnist")
SOURCES.add("tfds", "ssl_jax.data.tfds_sources:open_tfds")
SOURCES.add("folder", "ssl_jax.data.folder:open_folder")
SOURCES.add("synthetic", "ssl_jax.data.sources:open_synthetic")

# The spec forms, as error messages list them.
SPEC_FORMS = (
    "'fashion_mnist' (local Fashion-MNIST, built offline into TFDS format)",
    "'tfds:NAME' (a TFDS dataset already prepared in data_dir, e.g. 'tfds:cifar10')",
    "'folder:/path/to/images' (JPEG/PNG files in /path/to/images/<split>/<class>/, or "
    "/path/to/images/<class>/ for a training split only)",
    "'synthetic' (deterministic random images with a class signal, for tests)",
)
_NEEDS_ARG = ("tfds", "folder")


def get_source(
    spec: str,
    *,
    split: str = "train",
    data_dir: str | None = None,
    image_size: int | None = None,
    seed: int = 0,
    **kw: Any,
) -> Source:
    """Returns the random-access source named by `spec`.

    Args:
      spec: one of
        'fashion_mnist': Fashion-MNIST; reads a prepared TFDS copy from data_dir or builds one
          offline from the IDX files of Debian's `dataset-fashion-mnist` (see fashion_mnist.py;
          kw: idx_dir=, download=, in_memory=).
        'tfds:NAME': a TFDS dataset already prepared (array_record) in data_dir (kw: in_memory=,
          which reads the split into memory once: far faster batches for small datasets).
        'folder:/path': your own JPEG/PNG images; first-level subfolders are the classes.
          Reads /path/<split>; only the 'train' split may be /path itself (no split folders),
          any other split without its folder is a FileNotFoundError. Needs image_size (kw:
          channels=3 or 1, unreadable='substitute' or 'raise'; see folder.py).
        'synthetic': deterministic random images (kw: num_examples=, image_shape=, num_classes=).
      split: dataset split ('train', 'test', TFDS slices like 'train[:10%]').
      data_dir: TFDS data dir; default $TFDS_DATA_DIR or ~/tensorflow_datasets.
      image_size: resize (shorter side) + center-crop images to [image_size, image_size] on the
        host; None keeps the native size (TFDS/Fashion-MNIST/synthetic only).
      seed: seed of the synthetic source (the other sources are deterministic files).
      **kw: source-specific options listed above.

    Raises:
      ValueError: for an unknown spec (the message lists the accepted forms).
      FileNotFoundError: when the data is missing; the message says how to get it.
    """
    if image_size is not None and image_size <= 0:
        raise ValueError(f"image_size must be a positive int or None, got {image_size}")
    kind, colon, arg = spec.partition(":")
    if kind not in SOURCES or (kind in _NEEDS_ARG) != bool(arg) or (colon and not arg):
        raise ValueError(
            f"Unknown data source spec {spec!r}. Accepted forms: " + "; ".join(SPEC_FORMS) + "."
        )
    opener = SOURCES.get(kind)
    return opener(arg, split=split, data_dir=data_dir, image_size=image_size, seed=seed, **kw)
