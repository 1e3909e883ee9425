"""One live ``pretrain`` per work directory: an advisory lock on ``WORKDIR/.lock``.

    with WorkdirLock(workdir):   # ValueError naming the holder's pid and host if taken
        ...train...

``fcntl.flock`` on a file in the work directory: the kernel releases it when the holder exits,
however it dies (``kill -9`` included), so a stale lock from a killed run is simply taken over.
The file keeps ``pid@host`` of the last holder, for the error message. Where flock is not
available (not POSIX) the lock is a no-op; on network file systems flock may not span hosts.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from ssl_jax import outputs

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

LOCK_NAME = ".lock"


class WorkdirLock:
    """Context manager holding the lock of ``workdir`` (created if missing)."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_NAME)
        self._fd: int | None = None

    def __enter__(self) -> WorkdirLock:
        if fcntl is None:
            return self
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        outputs.check_own_file(self.path)  # a planted link or FIFO: refused, never truncated
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ValueError(
                f"{os.path.dirname(self.path)} is in use by a live run ({holder}): wait for it "
                "to finish or stop it, or choose another --workdir."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None


def live_holder(workdir: str) -> str | None:
    """``'pid N on HOST'`` when a live run holds ``workdir``'s lock, else None (no lock file,
    a stale one, or no flock here). Reads only: usable on a run directory one cannot write."""
    path = os.path.join(workdir, LOCK_NAME)
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.read(fd, 200).decode(errors="replace").strip() or "another process"
    except OSError:
        return None
    finally:
        os.close(fd)  # also releases a shared lock taken above
    return None
