"""A source over a folder tree of the user's own images (JPEG, PNG, ...), decoded with pillow.

Layout (the torchvision ImageFolder convention):

    root/
      cat/  a.jpg  b.png  sub/c.jpg     -> class 'cat'  (the FIRST-level folder names the class)
      dog/  d.jpeg                      -> class 'dog'
      e.jpg                             -> no class: label -1

Files are found recursively and sorted by their relative path, so the order (and thus the
shuffles of the pipeline) is the same on every machine. Class indices are the sorted names of the
first-level folders that contain images. Images are converted to RGB (channels=3, the default,
also for grayscale files, so that mixed folders stack) or to grayscale L (channels=1), then
resized (shorter side to image_size) and center-cropped to [image_size, image_size].

Unreadable or corrupt files never crash a run: the example is replaced by the next readable
file (index i+1, i+2, ... wrapping around), which keeps batch shapes and is deterministic; each
bad file gives one RuntimeWarning naming it, and is listed by `corrupt_files` / `num_corrupt`.
These counters are per process: with grain worker processes each worker keeps its own, so call
`find_corrupt()` (decodes every file once) for a complete report.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import numpy as np

from ssl_jax.data.sources import Example, Source, check_index, resize_center_crop

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def scan_image_folder(root: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Returns (sorted relative paths of the image files under root, sorted class names)."""
    root = os.fspath(root)
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS):
                files.append(os.path.relpath(os.path.join(dirpath, f), root))
    files = sorted(Path(f).as_posix() for f in files)
    classes = sorted({f.split("/", 1)[0] for f in files if "/" in f})
    return files, classes


class FolderSource(Source):
    """Images under `path` (recursive), labelled by their first-level subfolder."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        image_size: int | None,
        split: str | None = None,
        channels: int = 3,
    ):
        root = Path(path).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"Image folder {os.fspath(root)!r} does not exist.")
        if split and (root / split).is_dir():
            root = root / split
        if image_size is None:
            raise ValueError(
                f"Image folder {os.fspath(root)!r}: image_size is required for folder sources "
                "(files vary in size; every example is resized and center-cropped to it)."
            )
        if channels not in (1, 3):
            raise ValueError(f"channels must be 3 (RGB) or 1 (grayscale L), got {channels}")
        files, classes = scan_image_folder(root)
        if not files:
            raise FileNotFoundError(
                f"No images found in {os.fspath(root)!r} (searched recursively for the "
                f"extensions {', '.join(IMAGE_EXTENSIONS)}, case-insensitive)."
            )
        class_index = {c: i for i, c in enumerate(classes)}
        self.root = os.fspath(root)
        self.files = files
        self.labels = np.asarray(
            [class_index[f.split("/", 1)[0]] if "/" in f else -1 for f in files], np.int32
        )
        self.class_names = classes or None
        self.num_classes = len(classes) or None
        self.image_size = int(image_size)
        self.channels = channels
        self.image_shape = (self.image_size, self.image_size, channels)
        self.name = f"folder:{self.root}"
        self._lock = threading.Lock()
        self._corrupt: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.files)

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def corrupt_files(self) -> list[str]:
        """Paths (relative to root) of the files that failed to decode so far, sorted."""
        with self._lock:
            return sorted(self._corrupt)

    @property
    def num_corrupt(self) -> int:
        with self._lock:
            return len(self._corrupt)

    def _decode(self, index: int) -> np.ndarray:
        from PIL import Image

        mode = "RGB" if self.channels == 3 else "L"
        with Image.open(os.path.join(self.root, self.files[index])) as im:
            # JPEG only: decode at a reduced scale that is still >= image_size (much faster).
            im.draft(mode, (self.image_size, self.image_size))
            im = im.convert(mode)
        return resize_center_crop(im, self.image_size)

    def _mark_corrupt(self, index: int, error: Exception) -> None:
        path = self.files[index]
        with self._lock:
            new = path not in self._corrupt
            self._corrupt[path] = f"{type(error).__name__}: {error}"
        if new:
            warnings.warn(
                f"Skipping unreadable image {os.path.join(self.root, path)!r} "
                f"({type(error).__name__}: {error}); using the next readable file instead.",
                RuntimeWarning,
                stacklevel=3,
            )

    def __getitem__(self, index: int) -> Example:
        n = len(self)
        index = check_index(index, n)
        for k in range(n):
            j = (index + k) % n
            try:
                image = self._decode(j)
            except Exception as e:  # noqa: BLE001 - any decoding failure is a corrupt file
                self._mark_corrupt(j, e)
                continue
            return {"image": image, "label": self.labels[j]}
        raise RuntimeError(f"None of the {n} images in {self.root!r} could be decoded.")

    def find_corrupt(self) -> list[str]:
        """Decodes every file once and returns the sorted relative paths of the bad ones."""
        for i in range(len(self)):
            try:
                self._decode(i)
            except Exception as e:  # noqa: BLE001
                self._mark_corrupt(i, e)
        return self.corrupt_files
