"""Finding the image files and class folders of an image folder that nobody checked.

The walk follows symlinked folders (datasets assembled from links are common) but enters every
directory at most once, keyed by its (device, inode) like ``find -L``: a link to an ancestor
(``a/loop -> ..``) or to a folder already scanned is skipped, so the scan ends and no image is
read twice under two labels. Real sub-folders are walked before any symlinked one, so a link to a
sibling class never takes that class's images. Only regular files (or links to them) named like
images are listed: a FIFO, socket, device or broken link named ``x.png`` is skipped, never opened
(``open()`` on a FIFO blocks forever). What was skipped is reported by ``FolderScan.problems``.

Class indices come from the union of the class folders of EVERY split (``class_folders``), so
label i means the same class in train/ and test/ even when a split lacks a class.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# First-level folders with these names (any case) are splits, never classes.
SPLIT_FOLDER_NAMES = ("train", "test", "val", "valid", "validation")


@dataclasses.dataclass
class FolderScan:
    """What `scan_image_folder` found; all paths are posix paths relative to the root.

    files: the image files, sorted (the source's row order).
    repeated_dirs: symlinked (or bind-mounted) folders not entered: already scanned.
    not_regular: entries named like images that are not regular files (FIFO, socket, device,
      broken link): never opened.
    unreadable_dirs: folders that could not be listed (permissions): their images are missing.
    """

    files: list[str] = dataclasses.field(default_factory=list)
    repeated_dirs: list[str] = dataclasses.field(default_factory=list)
    not_regular: list[str] = dataclasses.field(default_factory=list)
    unreadable_dirs: list[str] = dataclasses.field(default_factory=list)

    def problems(self, root: str) -> str | None:
        """One line naming what was skipped under `root`, or None when nothing was."""

        def some(paths: list[str]) -> str:
            return ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")

        parts = []
        if self.repeated_dirs:
            parts.append(
                f"{len(self.repeated_dirs)} symlinked folder(s) that lead to a folder already "
                f"scanned (a loop or a second link), not entered: {some(self.repeated_dirs)}"
            )
        if self.not_regular:
            parts.append(
                f"{len(self.not_regular)} name(s) like images that are not regular files "
                f"(FIFO, socket, device or broken link), never opened: {some(self.not_regular)}"
            )
        if self.unreadable_dirs:
            parts.append(
                f"{len(self.unreadable_dirs)} folder(s) that cannot be listed (their images are "
                f"left out): {some(self.unreadable_dirs)}"
            )
        return f"Image folder {root!r}: skipped " + "; ".join(parts) + "." if parts else None


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def scan_image_folder(root: str | os.PathLike) -> FolderScan:
    """The image files under `root`, recursively, hidden names (".x") excluded; see the module
    docstring for links, loops and special files. Ends on every tree: each directory (by device
    and inode) is listed at most once."""
    root = os.fspath(root)
    scan = FolderScan()
    seen: set[tuple[int, int]] = set()
    links: list[str] = []  # symlinked folders, walked after the real tree that holds them
    _walk(root, "", seen, links, scan)
    while links:
        _walk(root, links.pop(0), seen, links, scan)
    scan.files.sort()
    return scan


def _walk(root: str, start: str, seen: set, links: list[str], scan: FolderScan) -> None:
    """Depth-first over the real (non-link) folders from `start`; links found are queued."""
    stack = [start]
    while stack:
        rel = stack.pop()
        path = os.path.join(root, rel) if rel else root
        try:
            st = os.stat(path)
            key = (st.st_dev, st.st_ino)
            if key in seen:
                scan.repeated_dirs.append(rel)
                continue
            seen.add(key)
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            scan.unreadable_dirs.append(rel or ".")
            continue
        subdirs = []
        for e in entries:
            if e.name.startswith("."):
                continue
            child = f"{rel}/{e.name}" if rel else e.name
            try:
                if e.is_dir():  # follows links: a link to a folder is a folder
                    (links if e.is_symlink() else subdirs).append(child)
                elif _is_image_name(e.name):
                    (scan.files if e.is_file() else scan.not_regular).append(child)
            except OSError:
                if _is_image_name(e.name):
                    scan.not_regular.append(child)
        stack.extend(reversed(subdirs))


def _subfolders(path: Path) -> list[str]:
    """Names of the non-hidden folders (or links to folders) directly in `path`."""
    try:
        with os.scandir(path) as it:
            return sorted(e.name for e in it if not e.name.startswith(".") and _is_dir(e))
    except OSError:
        return []


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def class_folders(top: Path, split_root: Path) -> dict[str, list[str]]:
    """{split folder name: its class folder names} for the image folder `top`, whose split being
    read is `split_root`. A folder without split sub-folders (``split_root == top``) gives
    ``{"": classes}``. The classes of a source are the sorted union of all these lists (the
    torchvision ImageFolder rule, class = folder name, applied to every split at once), so that a
    class missing from one split does not shift the labels of the others."""
    if Path(split_root) == Path(top):
        return {"": _subfolders(Path(top))}
    splits = [s for s in _subfolders(Path(top)) if s.lower() in SPLIT_FOLDER_NAMES]
    return {s: _subfolders(Path(top) / s) for s in splits}
