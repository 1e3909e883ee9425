"""Checkpoint integrity: a manifest of every saved file's size and SHA-256, checked at restore.

Orbax's OCDBT/zstd files carry no checksum: a truncated, zeroed or bit-flipped file either loads
silently (changed weights) or fails deep inside TensorStore. So each step directory gets
``ssl_jax_manifest.json`` when its save is complete::

    {"format": 1, "algorithm": "sha256",
     "files": {"state/_METADATA": [36229, "9f2c..."], "data/process_0-of-1.json": [244, "..."]}}

It lists the files of the items a restore reads (``state/``, ``data/``), not Orbax's bookkeeping
(``_CHECKPOINT_METADATA`` and ``commit_success.txt``, rewritten while Orbax finalizes the step and
not needed to restore). :func:`write_manifest` writes it atomically (temporary file, fsync,
rename); :func:`check` reads it back. A step written before manifests existed has none: it is
*unverified*, and only its structure is checked here (its restore then decides).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat

from ssl_jax import outputs

MANIFEST = "ssl_jax_manifest.json"
ITEMS = ("state", "data")  # the item directories a restore reads
_UNLISTED = {"commit_success.txt"}  # Orbax writes these while committing; a restore ignores them
_CHUNK = 1 << 20


def file_sha256(path: str) -> str:
    """The SHA-256 of a file's bytes, as hex (read in 1 MiB chunks; ~1.4 GB/s on one core)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _item_files(step_dir: str) -> list[str]:
    """The files under the item directories of ``step_dir``, relative to it ('/'-separated)."""
    out = []
    for item in ITEMS:
        for root, dirs, files in os.walk(os.path.join(step_dir, item)):
            dirs.sort()
            for name in sorted(files):
                if name not in _UNLISTED:
                    rel = os.path.relpath(os.path.join(root, name), step_dir)
                    out.append(rel.replace(os.sep, "/"))
    return out


def write_manifest(step_dir: str) -> None:
    """Hash the item files of a step directory whose save is complete and write its manifest
    atomically (a crash leaves either no manifest or the whole one)."""
    files = {}
    for rel in _item_files(step_dir):
        path = os.path.join(step_dir, rel)
        files[rel] = [os.path.getsize(path), file_sha256(path)]
    text = json.dumps({"format": 1, "algorithm": "sha256", "files": files}, indent=0)
    final = os.path.join(step_dir, MANIFEST)
    outputs.write_text(final, text)  # a new file renamed over it: no link is followed


def has_manifest(step_dir: str) -> bool:
    """Whether the step directory has a manifest (written since integrity checks exist)."""
    return os.path.exists(os.path.join(step_dir, MANIFEST))


def check(step_dir: str) -> str | None:
    """What is wrong with the checkpoint in ``step_dir`` (a short phrase), or None when it is
    intact: every file its manifest lists has the size and SHA-256 it had when saved. Without a
    manifest (a checkpoint written before manifests), only the item directories and
    ``state/_METADATA`` must exist; the restore itself then finds other damage."""
    if not os.path.isdir(os.path.join(step_dir, "state")):
        return "no state/ directory: not a complete checkpoint"
    if not has_manifest(step_dir):
        for rel in ("state/_METADATA", "data"):
            if not os.path.exists(os.path.join(step_dir, rel)):
                return f"{rel} is missing"
        return None
    files = _read_manifest(os.path.join(step_dir, MANIFEST))
    if files is None:
        return f"its integrity manifest {MANIFEST} is unreadable"
    for rel, (size, digest) in files.items():
        path = os.path.join(step_dir, rel)
        try:
            st = os.stat(path)
        except OSError:
            return f"{rel} is missing"
        if not stat.S_ISREG(st.st_mode):  # never open a FIFO or device named in a manifest
            return f"{rel} is not a regular file"
        if (actual := st.st_size) != size:
            return f"{rel} has {actual} bytes, {size} when saved"
        if file_sha256(path) != digest:
            return f"{rel} does not match its SHA-256 of save time (changed on disk)"
    return None


def _read_manifest(path: str) -> dict[str, tuple[int, str]] | None:
    """The manifest's ``{relative path: (size, sha256)}``, or None when it is not a manifest."""
    try:
        with open(path) as f:
            doc = json.load(f)
        files = doc["files"]
        out = {str(rel): (int(size), str(digest)) for rel, (size, digest) in files.items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    if doc.get("algorithm") != "sha256" or not any(r.startswith("state/") for r in out):
        return None
    if any(os.path.isabs(r) or ".." in r.split("/") for r in out):  # only files of the step
        return None
    return out
