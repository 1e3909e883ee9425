"""Throughput of on-device augmentation (jitted ``two_views``, SimCLR presets) and, side by side,
of lightly's CPU ``SimCLRTransform`` pipeline on the same images.

    python benchmarks/augment.py            # batch 512 at 32x32x3 and 224x224x3
    python benchmarks/augment.py --quick    # CPU smoke run: 3 repeats, batch 64 at 224
    python benchmarks/augment.py --no-lightly               # ssl_jax only (no torch needed)

ssl_jax: a call turns a uint8 batch of N source images (already on the device) into two float32
views of N images each. Reported: source images/s (N per call, the number that matches a train
step's batch) and views/s (2N per call), median over the repeats after a warm-up call (compile
time reported separately), every call ended with ``block_until_ready``.

lightly (needs the ``bench`` extra: torch, lightly): ``lightly.transforms.SimCLRTransform`` with
the matching recipe (32 px: ``cj_strength=0.5`` and no blur, as ``simclr_cifar``; 224 px: the
defaults, as ``simclr_imagenet``) applied to the same random uint8 images as PIL images, two views
per image, batched by a torch ``DataLoader`` with 0 workers (in this process) and with 2 worker
processes (spawned; one torch thread each). Reported: source images/s over the timed batches,
after the first batch (worker start-up, shown separately) and a few more that drain what the
workers prefetched. The two sides run one after the other in the same process, so load from
other jobs may differ between them: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import common
import numpy as np

common.setup_imports()

import jax  # noqa: E402

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


# ----------------------------------------------------------------------------- lightly


class PILImages:
    """A torch-style dataset: uint8 images [N, H, W, 3] -> ``transform(PIL image)``."""

    def __init__(self, images: np.ndarray, transform):
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i]))


def lightly_transform(preset: str, size: int):
    from lightly.transforms import SimCLRTransform

    if preset == "simclr_cifar":
        return SimCLRTransform(input_size=size, cj_strength=0.5, gaussian_blur=0.0)
    return SimCLRTransform(input_size=size)


def bench_lightly(preset: str, size: int, batch: int, batches: int, workers: int) -> dict:
    """Source images/s of lightly's SimCLRTransform through a DataLoader (two views each)."""
    from torch.utils.data import DataLoader

    warmup = 2 * max(workers, 1)  # prefetch_factor 2 per worker
    n = batch * (1 + warmup + batches)
    images = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    loader = DataLoader(
        PILImages(images, lightly_transform(preset, size)),
        batch_size=batch,
        num_workers=workers,
        multiprocessing_context="spawn" if workers else None,  # JAX's threads make fork unsafe
        drop_last=True,
    )
    start = time.perf_counter()
    it = iter(loader)
    views = next(it)
    first = time.perf_counter() - start
    for _ in range(warmup):
        views = next(it)
    start = time.perf_counter()
    for _ in range(batches):
        views = next(it)
    elapsed = time.perf_counter() - start
    assert len(views) == 2 and views[0].shape == (batch, 3, size, size), views[0].shape
    del it, loader
    return dict(first_s=first, images_per_s=batches * batch / elapsed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, batch 64 at 224")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=None, help="default 10 (3 with --quick)")
    parser.add_argument("--no-lightly", action="store_true", help="skip the lightly comparison")
    parser.add_argument("--lightly-workers", default="0,2", help="DataLoader worker counts")
    parser.add_argument(
        "--lightly-batches", type=int, default=None, help="timed batches (default 10; 3 quick)"
    )
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 10)
    batch_224 = min(args.batch, 64) if args.quick else args.batch

    common.header("on-device augmentation vs lightly (benchmarks/augment.py)")
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print("images/s: source images per second (batch N -> two views of N); views/s = 2x that")
    cases = [
        ("simclr_cifar", A.simclr_cifar(32), args.batch),
        ("simclr_imagenet", A.simclr_imagenet(224), batch_224),
    ]
    header = f"{'preset':16s} {'shape':>10s} {'batch':>6s} {'ms/call':>9s}"
    print(f"{header} {'images/s':>10s} {'views/s':>10s} {'compile s':>10s}")
    results = {}
    for name, view, batch in cases:
        r = bench(name, view, batch, repeats)
        results[name] = r
        print(
            f"{r['name']:16s} {r['shape']:>10s} {r['batch']:6d} {r['ms']:9.1f} "
            f"{r['images_per_s']:10.0f} {r['views_per_s']:10.0f} {r['compile_s']:10.1f}",
            flush=True,
        )
    if args.no_lightly:
        return
    try:
        import lightly  # noqa: F401
        import torch
    except ImportError:
        print("lightly comparison skipped: install the bench extra (pip install -e '.[bench]')")
        return
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    warnings.filterwarnings("ignore", message="This DataLoader will create")  # > usable CPUs
    batches = args.lightly_batches or (3 if args.quick else 10)
    print(
        f"\nlightly {lightly.__version__} SimCLRTransform, torch {torch.__version__}; "
        f"{common.load_line()}"
    )
    print(
        f"{'preset':16s} {'shape':>10s} {'batch':>6s} {'workers':>7s} {'first s':>8s} "
        f"{'images/s':>10s} {'ssl_jax/lightly':>15s}"
    )
    for name, view, batch in cases:
        for workers in (int(w) for w in args.lightly_workers.split(",")):
            r = bench_lightly(name, view.size, batch, batches, workers)
            ratio = results[name]["images_per_s"] / r["images_per_s"]
            print(
                f"{name:16s} {results[name]['shape']:>10s} {batch:6d} {workers:7d} "
                f"{r['first_s']:8.1f} {r['images_per_s']:10.0f} {ratio:15.1f}",
                flush=True,
            )
    print(f"load after: {common.load_line()}")


if __name__ == "__main__":
    main()
