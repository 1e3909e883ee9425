"""The grain host pipeline's images/s against what the train step consumes.

    python benchmarks/input.py            # Fashion-MNIST + synthetic, 200 batches per setting
    python benchmarks/input.py --quick    # CPU smoke run: 30 batches per setting

Needs the full install (grain, TFDS): this measures the host side. Fashion-MNIST is read from the
TFDS copy that ``ssl_jax.data`` prepares offline from Debian's IDX files
(``/usr/share/datasets/fashion-mnist``; built into the TFDS data dir on first use, ~10 s).

For each source (real Fashion-MNIST 28x28x1; synthetic 28x28x1 and 32x32x3 images generated on
the fly by ``SyntheticSource``), read from its records (``in_memory=False``) or from an in-memory
copy (``in_memory=True``: ``to_memory``), with ``num_workers`` 0 (reading threads in this process)
and 2 (grain worker processes), the script iterates ``ssl_jax.data.train_iterator`` at global
batch 256 (the Fashion-MNIST recipe's) and reports the first batch's latency (pipeline start) and
the steady rate: images/s over the following batches (wall clock; the iterator prefetches, so
this is the rate at which a train loop that never waits could take batches).

It then jits the real SimCLR train step of ``configs/simclr_fashion_mnist.py`` (on-device
augmentation included) and measures the images/s it consumes on this machine, and prints, for
every pipeline setting, pipeline images/s / step images/s: above 1 the host keeps the step fed.
The two are measured one after the other, not overlapped: in training they share the CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import common
import numpy as np

common.setup_imports()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from ssl_jax import data  # noqa: E402

BATCH = 256
WARMUP = 10  # batches skipped after the first, before timing


def pipeline_rate(source, workers: int, batches: int) -> tuple[float, float]:
    """(seconds to the first batch, images/s over ``batches`` after ``WARMUP`` more)."""
    start = time.perf_counter()
    it = data.train_iterator(source, global_batch_size=BATCH, seed=0, worker_count=workers)
    batch = next(it)
    first = time.perf_counter() - start
    for _ in range(WARMUP):  # drain what the workers prefetched while the first batch came
        batch = next(it)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
    rate = batches * batch["image"].shape[0] / (time.perf_counter() - start)
    it.close()
    return first, rate


def step_rate(windows: int, iters: int) -> float:
    """Source images/s of the jitted SimCLR Fashion-MNIST step (augmentation included)."""
    config = common.load_config("simclr_fashion_mnist")
    config.batch_size = BATCH
    method, state = common.init_state(config)
    images = np.random.default_rng(0).integers(0, 256, (BATCH, 28, 28, 1), dtype=np.uint8)
    batch = {"image": jnp.asarray(images)}
    key = jax.random.key(0)
    step = jax.jit(method.train_step, donate_argnums=(0,))
    run = common.jax_step_runner(step, state, batch, key)
    seconds = common.interleave({"step": run}, windows=windows, iters=iters)["step"]["wall"]
    return BATCH / common.median(seconds)


def sources(quick: bool):
    """(name, factory) of each source; factories so that a source is built only when used."""
    n_synth = 8192 if quick else 32768
    yield "fashion_mnist", lambda mem: data.get_source("fashion_mnist", in_memory=mem)
    for shape in ((28, 28, 1), (32, 32, 3)):
        name = f"synthetic {'x'.join(map(str, shape))}"

        def make(mem, shape=shape):
            src = data.SyntheticSource(num_examples=n_synth, image_shape=shape)
            return data.to_memory(src) if mem else src

        yield name, make


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer batches per setting")
    parser.add_argument("--batches", type=int, default=None, help="timed batches (200 / 30)")
    parser.add_argument("--workers", default="0,2", help="grain worker counts to try")
    args = parser.parse_args()
    batches = args.batches or (30 if args.quick else 200)
    workers = [int(w) for w in args.workers.split(",")]

    common.header("grain host pipeline vs train step (benchmarks/input.py)")
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(f"global batch {BATCH}; {batches} timed batches per setting", flush=True)
    rows = []
    print(
        f"{'source':20s} {'in_memory':>9s} {'workers':>7s} {'first batch':>11s} {'images/s':>10s}"
    )
    for name, make in sources(args.quick):
        for mem in (False, True):
            start = time.perf_counter()
            source = make(mem)
            build = time.perf_counter() - start
            for w in workers:
                first, rate = pipeline_rate(source, w, batches)
                rows.append((name, mem, w, rate))
                note = f"  (source built in {build:.1f} s)" if mem and w == workers[0] else ""
                print(
                    f"{name:20s} {mem!s:>9s} {w:7d} {first:10.2f}s {rate:10.0f}{note}", flush=True
                )

    consumed = step_rate(3 if args.quick else 5, 2 if args.quick else 5)
    print(
        f"\ntrain step (SimCLR, configs/simclr_fashion_mnist.py, batch {BATCH}, augmentation on "
        f"device) consumes {consumed:.0f} images/s on {jax.devices()[0].device_kind}"
    )
    print(f"{'source':20s} {'in_memory':>9s} {'workers':>7s} {'pipeline / step':>15s}")
    for name, mem, w, rate in rows:
        print(f"{name:20s} {mem!s:>9s} {w:7d} {rate / consumed:15.1f}")
    print(f"load after: {common.load_line()}")


if __name__ == "__main__":
    main()
