"""Throughput of on-device augmentation: jitted ``two_views`` with the SimCLR presets.

    python benchmarks/augment.py            # batch 512 at 32x32x3 and 224x224x3
    python benchmarks/augment.py --quick    # CPU smoke run: 3 repeats, batch 64 at 224

A call turns a uint8 batch of N source images (already on the device) into two float32 views of N
images each. Reported: source images/s (N per call, the number that matches a train step's batch)
and views/s (2N per call), median over the repeats after a warm-up call (compile time reported
separately), every call ended with ``block_until_ready``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from ssl_jax import augment as A  # noqa: E402


def bench(name: str, view: A.ViewConfig, batch: int, repeats: int) -> dict:
    size = view.size
    images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    images = jax.device_put(images)
    fn = jax.jit(A.two_views, static_argnames=("view1", "view2", "dtype"))
    key = jax.random.key(0)
    start = time.perf_counter()
    jax.block_until_ready(fn(images, key, view, view))  # compile + first run
    compile_s = time.perf_counter() - start
    times = []
    for step in range(repeats):
        step_key = jax.random.fold_in(key, step)
        start = time.perf_counter()
        jax.block_until_ready(fn(images, step_key, view, view))
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return dict(
        name=name,
        shape=f"{size}x{size}x3",
        batch=batch,
        ms=1e3 * median,
        images_per_s=batch / median,
        views_per_s=2 * batch / median,
        compile_s=compile_s,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, batch 64 at 224")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=None, help="default 10 (3 with --quick)")
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 10)
    batch_224 = min(args.batch, 64) if args.quick else args.batch

    print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
    print("images/s: source images per second (batch N -> two views of N); views/s = 2x that")
    cases = [
        ("simclr_cifar", A.simclr_cifar(32), args.batch),
        ("simclr_imagenet", A.simclr_imagenet(224), batch_224),
    ]
    header = f"{'preset':16s} {'shape':>10s} {'batch':>6s} {'ms/call':>9s}"
    print(f"{header} {'images/s':>10s} {'views/s':>10s} {'compile s':>10s}")
    for name, view, batch in cases:
        r = bench(name, view, batch, repeats)
        print(
            f"{r['name']:16s} {r['shape']:>10s} {r['batch']:6d} {r['ms']:9.1f} "
            f"{r['images_per_s']:10.0f} {r['views_per_s']:10.0f} {r['compile_s']:10.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
