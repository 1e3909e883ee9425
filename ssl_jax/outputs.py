"""How ssl_jax writes files into a work directory: never half a file, never through a link.

A work directory may come from someone else, and a run may be killed or meet a full disk at any
moment. So every file ssl_jax writes goes through this module:

- whole files (``config.json``, ``eval.json``, ``eval.md``, the figures, ``embed``'s arrays,
  ``metrics.jsonl`` when a restart rewrites it) are written to a new temporary file beside the
  target and renamed over it (:func:`replacing`, :func:`write_text`, :func:`write_bytes`). The
  rename replaces whatever the name was, a planted symbolic link included, without touching what
  the link points to; a killed run leaves the old file or the new one.
- the one file appended to, ``metrics.jsonl``, is opened without following links
  (:class:`AppendFile`). A link, a FIFO or a file with other hard links in its place is refused
  with one line naming it: replacing it would drop the run's history, and copying what it points
  to would copy a stranger's file into the run. A record that cannot be written whole is cut off
  again, so the file always ends at a record boundary.
- a failed write (disk full, read-only place, no permission) is an :class:`OutputError`: one line
  naming the file and the fix, which the ``ssl-jax`` commands print without a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from typing import IO, Any


class OutputError(OSError, ValueError):
    """A file of a run could not be written, or would have been written through a link: an
    OSError (``errno`` that of the failure, if any) whose text is one line naming the file and
    the fix, and a ValueError, which the ``ssl-jax`` commands print as that line."""


def error(path: str, e: OSError) -> OutputError:
    """The one-line :class:`OutputError` for an OSError met while writing ``path``."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        why = "no space left on the device (or the disk quota is used up)"
        fix = "Free some space and run the same command again"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "no permission to write there" if e.errno != errno.EROFS else "read-only file system"
        fix = "Choose a directory you can write (--workdir, --out) or change its permissions"
    else:
        why, fix = e.strerror or str(e), "Check the path and run the same command again"
    out = OutputError(
        f"Cannot write {path}: {why}. {fix}; the files already there are as they were."
    )
    out.errno = e.errno
    return out


_UMASK: int | None = None


def _umask() -> int:
    global _UMASK
    if _UMASK is None:  # the only way to read the umask is to set it: once, then put it back
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


@contextlib.contextmanager
def replacing(path: str, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """A file object to write ``path``'s new content to; on leaving the block it is flushed to
    disk and renamed over ``path`` (a link there is replaced, never followed). An exception in
    the block leaves ``path`` as it was; an OSError becomes :class:`OutputError`.

        with outputs.replacing(run.figure("curves"), "wb") as f:
            fig.savefig(f, format="png")
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"replacing() writes whole files: mode 'w' or 'wb', got {mode!r}")
    path = os.path.abspath(path)
    directory, name = os.path.split(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{name}.tmp-", dir=directory)  # O_EXCL: a new file
    except OSError as e:
        raise error(path, e) from e
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from the group
        with os.fdopen(fd, mode, **open_kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError) and not isinstance(e, OutputError):
            raise error(path, e) from e
        raise


def write_text(path: str, text: str) -> None:
    """Replace ``path`` by a file holding ``text`` (UTF-8), atomically (:func:`replacing`)."""
    with replacing(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_bytes(path: str, data: bytes) -> None:
    """Replace ``path`` by a file holding ``data``, atomically (:func:`replacing`)."""
    with replacing(path, "wb") as fh:
        fh.write(data)


def write_npy(path: str, array: Any) -> None:
    """Replace ``path`` by the ``.npy`` file of ``array``, atomically (:func:`replacing`)."""
    import numpy as np

    with replacing(path, "wb") as fh:
        np.save(fh, array)


def check_own_file(path: str) -> None:
    """Raise :class:`OutputError` unless ``path`` is missing or a regular file with no other
    name: a symbolic link, a FIFO or device, or a hard link may lead to someone else's file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise OutputError(
            f"{path} is a symbolic link (to {os.readlink(path)}); ssl_jax never writes through a "
            f"link in a work directory. Remove the link (rm {path}) if this run is yours, or "
            "choose another --workdir."
        )
    if not stat.S_ISREG(st.st_mode):
        raise OutputError(
            f"{path} is not a regular file; remove it if this run is yours, or choose another "
            "--workdir."
        )
    if st.st_nlink > 1:
        raise OutputError(
            f"{path} has {st.st_nlink - 1} other hard link(s), so appending to it would change "
            f"another file too. Give it its own copy (cp {path} {path}.own && mv {path}.own "
            f"{path}) if this run is yours, or choose another --workdir."
        )


def read_own(path: str) -> bytes:
    """The content of ``path``, a regular file of the run: a link, FIFO or device there is an
    :class:`OutputError` (never followed, never blocks)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:
            check_own_file(path)  # the link's message
        raise
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OutputError(f"{path} is not a regular file.")
        return fh.read()


def check_own_dir(path: str) -> None:
    """Raise :class:`OutputError` when ``path`` exists and is not a directory of its own (a
    symbolic link to a directory elsewhere, a file); make it when missing."""
    if os.path.islink(path) or (os.path.exists(path) and not os.path.isdir(path)):
        what = f"a symbolic link (to {os.readlink(path)})" if os.path.islink(path) else "a file"
        raise OutputError(
            f"{path} is {what}, not a directory of this run; remove it if this run is yours, or "
            "choose another --workdir."
        )
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise error(path, e) from e


class AppendFile:
    """``path`` opened to append whole records: never through a link, and refused unless it is
    a regular file of its own (:func:`check_own_file`); made if missing (``new``: must be
    missing). A record that cannot be written whole (disk full) is cut off again and raises
    :class:`OutputError`."""

    def __init__(self, path: str, *, new: bool = False):
        self.path = os.path.abspath(path)
        check_own_file(self.path)
        # O_NOFOLLOW: a link put there since the check fails to open (ELOOP) instead of being
        # followed; O_NONBLOCK: a FIFO put there cannot block the open.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
        flags |= getattr(os, "O_CLOEXEC", 0) | (os.O_EXCL if new else 0)
        try:
            self._fd = os.open(self.path, flags, 0o666)
        except OSError as e:
            if e.errno == errno.ELOOP:
                check_own_file(self.path)  # the link's message
            raise error(self.path, e) from e
        if not stat.S_ISREG(os.fstat(self._fd).st_mode):
            os.close(self._fd)
            check_own_file(self.path)

    def write(self, data: str | bytes) -> None:
        """Append ``data`` (str as UTF-8) whole, or not at all and raise :class:`OutputError`."""
        view = memoryview(data.encode() if isinstance(data, str) else data)
        size = os.fstat(self._fd).st_size
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)  # no half record left behind
            raise error(self.path, e) from e

    def close(self, *, sync: bool = False) -> None:
        """Close the file (idempotent); ``sync``: first make it durable (fsync)."""
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        try:
            if sync:
                os.fsync(fd)
        except OSError as e:
            raise error(self.path, e) from e
        finally:
            os.close(fd)
