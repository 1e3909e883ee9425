"""A source over a folder tree of the user's own images (JPEG, PNG, ...), decoded with pillow.

Layout (the torchvision ImageFolder convention), with one sub-folder per split:

    root/
      train/
        cat/  a.jpg  b.png  sub/c.jpg   -> class 'cat'  (the FIRST-level folder names the class)
        dog/  d.jpeg                    -> class 'dog'
        e.jpg                           -> no class: label -1
      test/
        cat/ ...  dog/ ...              -> the held-out split that evaluation scores

`split='test'` reads root/test. Only the training split (`split` None or 'train') may be the
root itself, for a folder with no split sub-folders (root/cat/, root/dog/): any other split must
have its own sub-folder, or FileNotFoundError says how to make one, because scoring the training
images as a 'test' split inflates every result. Folders named like splits (train, test, val,
valid, validation) are never read as classes.

Files are found recursively and sorted by their relative path, so the order (and thus the
shuffles of the pipeline) is the same on every machine. Class indices are the sorted names of the
first-level folders that contain images. Images are converted to RGB (channels=3, the default,
also for grayscale files, so that mixed folders stack) or to grayscale L (channels=1), then
resized (shorter side to image_size) and center-cropped to [image_size, image_size].

Unreadable or corrupt files, `unreadable=`:
  'substitute' (default; for training): the example is replaced by the next readable file
    (index i+1, i+2, ... wrapping around), which keeps batch shapes and is deterministic; each
    bad file gives one RuntimeWarning naming it. Fine for a shuffled training stream; wrong for
    anything that maps rows to files (the row belongs to another image, maybe another class).
  'raise' (for evaluation and `ssl-jax embed`): UnreadableImageError (a ValueError) naming the file.
Bad files seen so far are listed by `corrupt_files` / `num_corrupt`. These counters are per
process: with grain worker processes each worker keeps its own, so call `find_corrupt()`
(decodes every file once) for a complete report. A folder in which no image decodes is a
ValueError when the source is built (a few files spread over the folder are decoded then).
"""

from __future__ import annotations

import copy
import os
import threading
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ssl_jax.data.sources import Example, Source, check_index, resize_center_crop

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# First-level folders with these names (any case) are splits, never classes.
SPLIT_FOLDER_NAMES = ("train", "test", "val", "valid", "validation")
UNREADABLE_MODES = ("substitute", "raise")
_PROBE_FILES = 8  # files decoded when a source is built: one must decode


class UnreadableImageError(ValueError):
    """An image file that pillow cannot decode (``FolderSource(..., unreadable='raise')``).

    ``path`` is the file's path relative to the source's root.
    """

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.path = path


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


def split_folder(root: str | os.PathLike, split: str | None) -> Path:
    """The folder that holds `split` of the image folder `root` (see the module docstring).

    Raises:
      FileNotFoundError: `split` has no sub-folder and is not the training split, or the root
        has split sub-folders but not this one; the message shows the expected layout.
    """
    root = Path(root)
    name = split or "train"
    if (root / name).is_dir():
        return root / name
    split_dirs = sorted(
        d.name + "/"
        for d in root.iterdir()
        if d.name.lower() in SPLIT_FOLDER_NAMES and d.is_dir() and not d.name.startswith(".")
    )
    layout = (
        f"Lay the images out as {os.fspath(root / 'train')}/<class>/... and "
        f"{os.fspath(root / 'test')}/<class>/... (one sub-folder per class in each split)."
    )
    if split_dirs:
        raise FileNotFoundError(
            f"Image folder {os.fspath(root)!r} has the split sub-folders {', '.join(split_dirs)} "
            f"but no '{name}/': the {name!r} split has no images (split folders are never read "
            f"as classes). Create {os.fspath(root / name)}/<class>/... or use one of the "
            "existing splits."
        )
    if name != "train":
        raise FileNotFoundError(
            f"Image folder {os.fspath(root)!r} has no '{name}/' sub-folder, so it has no {name!r} "
            "split: the whole folder is the training split, and scoring it would score the "
            f"training images. {layout}"
        )
    return root


class FolderSource(Source):
    """Images under `path` (recursive), labelled by their first-level subfolder.

    Args:
      path: the image folder.
      image_size: side of the square [image_size, image_size] every image is resized and
        center-cropped to (required: files vary in size).
      split: the sub-folder to read ('test' reads path/test; None means 'train'). The training
        split reads `path` itself when it has no split sub-folders; see `split_folder`.
      channels: 3 (RGB) or 1 (grayscale L).
      unreadable: 'substitute' (the next readable file, with a warning) or 'raise'.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        image_size: int | None,
        split: str | None = None,
        channels: int = 3,
        unreadable: str = "substitute",
    ):
        root = Path(path).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"Image folder {os.fspath(root)!r} does not exist.")
        root = split_folder(root, split)
        if image_size is None:
            raise ValueError(
                f"Image folder {os.fspath(root)!r} needs an image size: set "
                "--config.data_image_size=N (image_size=N in get_source / FolderSource). Files "
                "vary in size; every example is resized and center-cropped to N x N."
            )
        if channels not in (1, 3):
            raise ValueError(f"channels must be 3 (RGB) or 1 (grayscale L), got {channels}")
        if unreadable not in UNREADABLE_MODES:
            raise ValueError(f"unreadable must be one of {UNREADABLE_MODES}, got {unreadable!r}")
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
        self.unreadable = unreadable
        self.name = f"folder:{self.root}"
        self._lock = threading.Lock()
        self._corrupt: dict[str, str] = {}
        self._probe()

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

    def without(self, paths: Iterable[str]) -> FolderSource:
        """A copy without the files `paths` (relative to root, e.g. `find_corrupt()`'s list).

        Labels and class names are unchanged, so the copy's rows are a subset of this one's.
        """
        drop = set(paths)
        keep = [i for i, f in enumerate(self.files) if f not in drop]
        if not keep:
            raise ValueError(f"Image folder {self.root!r}: no image left without {sorted(drop)}")
        new = copy.copy(self)
        new.files = [self.files[i] for i in keep]
        new.labels = self.labels[keep]
        new._corrupt = {}
        return new

    def _decode(self, index: int) -> np.ndarray:
        from PIL import Image

        mode = "RGB" if self.channels == 3 else "L"
        with Image.open(os.path.join(self.root, self.files[index])) as im:
            # JPEG only: decode at a reduced scale that is still >= image_size (much faster).
            im.draft(mode, (self.image_size, self.image_size))
            im = im.convert(mode)
        return resize_center_crop(im, self.image_size)

    def _record(self, index: int, error: Exception) -> bool:
        """Records file `index` as unreadable; True the first time."""
        path = self.files[index]
        with self._lock:
            new = path not in self._corrupt
            self._corrupt[path] = f"{type(error).__name__}: {error}"
        return new

    def _mark_corrupt(self, index: int, error: Exception) -> None:
        if self._record(index, error) and self.unreadable == "substitute":
            warnings.warn(
                f"Skipping unreadable image {os.path.join(self.root, self.files[index])!r} "
                f"({type(error).__name__}: {error}); using the next readable file instead.",
                RuntimeWarning,
                stacklevel=3,
            )

    def _probe(self) -> None:
        """Decodes files spread over the folder until one works: a ValueError if none does."""
        n = len(self)
        failed: list[tuple[int, Exception]] = []
        for i in np.unique(np.linspace(0, n - 1, min(n, _PROBE_FILES)).round().astype(int)):
            try:
                self._decode(int(i))
            except Exception as e:  # noqa: BLE001 - any decoding failure is a corrupt file
                failed.append((int(i), e))
                continue
            for j, e in failed:  # reported as they would be when read
                self._mark_corrupt(j, e)
            return
        errors = [f"{self.files[i]} ({type(e).__name__}: {e})" for i, e in failed]
        if n == 1:
            which = f"The only image file in {self.root!r} cannot be decoded"
        elif len(failed) == n:
            which = f"None of the {n} image files in {self.root!r} could be decoded"
        else:
            which = (
                f"None of {len(failed)} image files sampled across the {n} in {self.root!r} "
                "could be decoded"
            )
        raise ValueError(
            f"{which}: "
            + "; ".join(errors[:3])
            + (f"; and {len(errors) - 3} more" if len(errors) > 3 else "")
            + ". Are they really images? Replace or remove the broken files."
        )

    def __getitem__(self, index: int) -> Example:
        n = len(self)
        index = check_index(index, n)
        if self.unreadable == "raise":
            try:
                image = self._decode(index)
            except Exception as e:  # noqa: BLE001
                self._mark_corrupt(index, e)
                path = os.path.join(self.root, self.files[index])
                raise UnreadableImageError(
                    f"Cannot decode the image {path!r} ({type(e).__name__}: {e}). Remove or "
                    "repair it (FolderSource(...).find_corrupt() lists every unreadable file).",
                    self.files[index],
                ) from e
            return {"image": image, "label": self.labels[index]}
        for k in range(n):
            j = (index + k) % n
            try:
                image = self._decode(j)
            except Exception as e:  # noqa: BLE001 - any decoding failure is a corrupt file
                self._mark_corrupt(j, e)
                continue
            return {"image": image, "label": self.labels[j]}
        raise ValueError(f"None of the {n} images in {self.root!r} could be decoded.")

    def find_corrupt(self, *, num_threads: int = 8) -> list[str]:
        """Decodes every file once (in `num_threads` threads) and returns the sorted relative
        paths of the bad ones; no warnings."""

        def check(i: int) -> None:
            try:
                self._decode(i)
            except Exception as e:  # noqa: BLE001
                self._record(i, e)

        with ThreadPoolExecutor(max(1, num_threads)) as pool:
            list(pool.map(check, range(len(self))))
        return self.corrupt_files


def open_folder(
    arg: str, *, split: str, data_dir: str | None, image_size: int | None, seed: int, **kw: Any
) -> FolderSource:
    """The ``'folder:/path'`` spec (kw: channels=, unreadable=)."""
    del data_dir, seed
    return FolderSource(arg, split=split, image_size=image_size, **kw)
