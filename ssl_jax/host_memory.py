"""Host allocator setting: glibc malloc keeps freed memory (XLA:CPU train steps ~35% faster).

A train step on XLA:CPU allocates its temporaries (hundreds of MB for the Fashion-MNIST recipe)
afresh on every call. By default glibc serves each block over 32 MB with a fresh ``mmap`` and
hands it back to the kernel when freed, so every step page-faults every page in again (measured
on a 2-core CPU: 56k faults and ~150 ms of kernel time per call of a 110 MB patch extraction that
computes in ~50 ms). With one arena, no ``mmap`` and no trimming, the next step reuses the pages of
the last one: the SimCLR recipe went from ~500 to ~650-710 images/s, with identical losses
(benchmarks/RESULTS.md). The price is that the process keeps its peak heap until it exits.

``ssl-jax`` applies it when JAX will run on the CPU (:func:`configure`, called before JAX starts:
set later it does not help). ``SSL_JAX_MALLOC=default`` leaves malloc alone, ``=keep`` forces
it. A program of your own can call :func:`configure` first thing. Accelerator backends keep their
tensors in device memory, so there it is not applied.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import os

ENV = "SSL_JAX_MALLOC"  # auto (the default) | keep | default (leave malloc alone)
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


def _accelerator_expected() -> bool:
    """Will JAX pick an accelerator? Decided WITHOUT starting JAX: JAX_PLATFORMS if set, else
    whether a PJRT plugin (CUDA, ROCm, ...) or libtpu is installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() != "cpu"
    if importlib.util.find_spec("libtpu") is not None:
        return True
    return bool(importlib.metadata.entry_points(group="jax_plugins"))


_status = "malloc: default (host_memory.configure() was not called)"
_skipped_for_accelerator = False  # configure() left malloc alone because of an expected accelerator


def configure() -> bool:
    """Keep freed memory (:func:`keep_freed_memory`) if JAX will run on the CPU; returns whether
    it did. Call it BEFORE JAX starts its backend: the single arena only helps if it is set
    before XLA's threads make their own (set later, the step stayed at ~505 images/s instead of
    ~680). ``SSL_JAX_MALLOC=keep`` forces it, ``=default`` leaves malloc alone."""
    global _status, _skipped_for_accelerator
    _skipped_for_accelerator = False
    setting = os.environ.get(ENV) or "auto"
    if setting not in ("auto", "keep", "default"):
        raise ValueError(f"{ENV}={setting!r}: use auto (the default), keep or default")
    if setting == "default":
        _status = f"malloc: default ({ENV}=default)"
        return False
    if setting == "auto" and _accelerator_expected():
        _skipped_for_accelerator = True
        _status = f"malloc: default (an accelerator backend is expected; {ENV}=keep forces it)"
        return False
    if not keep_freed_memory():
        _status = "malloc: default (no glibc mallopt)"
        return False
    _status = "malloc: keeps freed memory for reuse (ssl_jax/host_memory.py)"
    return True


def status() -> str:
    """One line saying what :func:`configure` did, for the run's log (call it once JAX runs)."""
    if _skipped_for_accelerator:
        import jax

        if jax.default_backend() == "cpu":  # e.g. a CUDA plugin installed, no GPU found
            return f"{_status}, but JAX runs on the CPU: {ENV}=keep would speed it up"
    return _status
