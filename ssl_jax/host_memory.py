"""Host allocator setting: glibc malloc keeps freed memory (XLA:CPU train steps ~35% faster).

A train step on XLA:CPU allocates its temporaries (hundreds of MB for the Fashion-MNIST recipe)
afresh on every call. By default glibc serves each block over 32 MB with a fresh ``mmap`` and
hands it back to the kernel when freed, so every step page-faults every page in again (measured
on a 2-core CPU: 56k faults and ~150 ms of kernel time per call of a 110 MB patch extraction that
computes in ~50 ms). With one arena, no ``mmap`` and no trimming, the next step reuses the pages of
the last one: the SimCLR recipe went from ~500 to ~650-710 images/s, with identical losses
(benchmarks/RESULTS.md). The price is that the process keeps its peak heap until it exits.

``ssl-jax pretrain``, ``evaluate`` and ``embed`` apply it on the CPU backend (set
``SSL_JAX_MALLOC=default`` to leave malloc alone); a program of your own can call
:func:`keep_freed_memory` early, before the allocations that matter. Accelerator backends keep
their tensors in device memory, so there it is not applied.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

ENV = "SSL_JAX_MALLOC"  # 'default': leave malloc's settings alone
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc mallopt parameters


def keep_freed_memory() -> bool:
    """Make glibc malloc keep freed memory for reuse instead of returning it to the kernel.

    Process-wide (PyTorch in the same process allocates through the same malloc). Returns False
    where there is no glibc ``mallopt`` (then nothing changed).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_ARENA_MAX, 1) and mallopt(_M_MMAP_MAX, 0)
    return bool(ok and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def tune_for_backend() -> str:
    """Apply :func:`keep_freed_memory` when JAX's default backend is the CPU; says what it did.

    Initialises JAX's backends: in a multi-process run, call it after ``jax.distributed``.
    """
    import jax

    if jax.default_backend() != "cpu":
        return "malloc: default (not the CPU backend)"
    if os.environ.get(ENV, "") == "default":
        return f"malloc: default ({ENV}=default)"
    if not keep_freed_memory():
        return "malloc: default (no glibc mallopt)"
    return "malloc: keeps freed memory for reuse (CPU backend; ssl_jax/host_memory.py)"
