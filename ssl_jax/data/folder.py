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
shuffles of the pipeline) is the same on every machine. The scan is safe on trees nobody checked
(`folder_scan`): symlinked folders are followed but no folder is entered twice (loops end), and
only regular files are opened (a FIFO named x.png is skipped, with a warning).

Class indices are the sorted names of the class folders of ALL splits together (the union of
train/<class>, test/<class>, ...), so label i is the same class in every split even when test/
lacks a class; this is what a user of torchvision's ImageFolder gets by passing one class list to
both splits, and what a kNN or linear probe needs. A class folder of test/ that train/ lacks is
kept (its images count as errors: no probe trained on train/ can predict it) with a warning.
Like ImageFolder's, a class is a folder name: a class folder without images keeps its index.

Images are decoded by `image_file.decode_image`: 16-bit files scaled to 8 bits, JPEGs decoded at
reduced size, and a pixel limit (`max_pixels`, default `image_file.MAX_IMAGE_PIXELS`, or
$SSL_JAX_MAX_IMAGE_PIXELS) that keeps memory bounded: a larger image is an unreadable file. They
are converted to RGB (channels=3, the default, also for grayscale files, so that mixed folders
stack) or to grayscale L (channels=1), then resized (shorter side to image_size) and
center-cropped to [image_size, image_size].

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

from ssl_jax.data.folder_scan import (
    IMAGE_EXTENSIONS,
    SPLIT_FOLDER_NAMES,
    class_folders,
    scan_image_folder,
)
from ssl_jax.data.image_file import decode_image, max_image_pixels
from ssl_jax.data.sources import Example, Source, check_index

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLIT_FOLDER_NAMES",
    "FolderSource",
    "UnreadableImageError",
    "open_folder",
    "scan_image_folder",
    "split_folder",
]
UNREADABLE_MODES = ("substitute", "raise")
_PROBE_FILES = 8  # files decoded when a source is built: one must decode


class UnreadableImageError(ValueError):
    """An image file that pillow cannot decode (``FolderSource(..., unreadable='raise')``).

    ``path`` is the file's path relative to the source's root.
    """

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.path = path


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


def _classes(top: Path, split_root: Path, files: list[str]) -> list[str]:
    """The class names of every split of `top` (sorted union, see the module docstring); warns
    when the split read (`split_root`) has class folders that train/ lacks."""
    per_split = class_folders(top, split_root)
    classes = set().union(*per_split.values())
    classes |= {f.split("/", 1)[0] for f in files if "/" in f}  # a folder made since the listing
    train = per_split.get("train")
    if train is not None and split_root.name != "train":
        extra = sorted(set(per_split.get(split_root.name, ())) - set(train))
        if extra:
            warnings.warn(
                f"Image folder {os.fspath(split_root)!r} has class folder(s) that "
                f"{os.fspath(top / 'train')!r} lacks: {', '.join(extra[:10])}. Their images keep "
                "their own labels but count as errors: no probe trained on train/ can predict "
                "them. Add training images of these classes, or check the folder names.",
                RuntimeWarning,
                stacklevel=3,
            )
    return sorted(classes)


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
      max_pixels: the largest image decoded (pixels, after JPEG's reduced-size decoding); a
        larger one is an unreadable file. None: $SSL_JAX_MAX_IMAGE_PIXELS, else
        `image_file.MAX_IMAGE_PIXELS` (40 Mpx).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        image_size: int | None,
        split: str | None = None,
        channels: int = 3,
        unreadable: str = "substitute",
        max_pixels: int | None = None,
    ):
        top = Path(path).expanduser()
        if not top.is_dir():
            raise FileNotFoundError(f"Image folder {os.fspath(top)!r} does not exist.")
        root = split_folder(top, split)
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
        max_pixels = max_image_pixels() if max_pixels is None else int(max_pixels)
        if max_pixels <= 0:
            raise ValueError(f"max_pixels must be a positive number of pixels, got {max_pixels}")
        scan = scan_image_folder(root)
        problems = scan.problems(os.fspath(root))
        if problems:
            warnings.warn(problems, RuntimeWarning, stacklevel=2)
        files = scan.files
        if not files:
            raise FileNotFoundError(
                f"No images found in {os.fspath(root)!r} (searched recursively for the "
                f"extensions {', '.join(IMAGE_EXTENSIONS)}, case-insensitive)."
            )
        classes = _classes(top, root, files)
        class_index = {c: i for i, c in enumerate(classes)}
        self.root = os.fspath(root)
        self.files = files
        self.max_pixels = max_pixels
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
        return decode_image(
            os.path.join(self.root, self.files[index]),
            image_size=self.image_size,
            mode="RGB" if self.channels == 3 else "L",
            max_pixels=self.max_pixels,
        )

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
