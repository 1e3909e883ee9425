"""Throughput of ssl_jax's SimCLR and BYOL train steps (on-device augmentation included).

    python benchmarks/train_step.py            # accelerator sweep (ResNet-18 cifar 32 px and
                                               # ResNet-50 224 px, float32 and bfloat16)
    python benchmarks/train_step.py --quick    # CPU: convnet 28 px (breakdown) and ResNet-18
                                               # 32 px at batch 16, float32
    python benchmarks/train_step.py --models resnet50 --dtypes bfloat16 --batches 128,256

Needs only jax, flax, optax and numpy (no grain, TFDS or ml_collections: see ``common.py``).
The full sweep compiles ~30 steps; within a 10-minute slot on a GPU run it in parts, e.g.
``--models resnet18`` then ``--models resnet50 --methods simclr``. A configuration that does not
fit in device memory prints "out of memory" and the sweep goes on.

For every (method, model, compute dtype, batch) the script builds the recipe's config
(``configs/{simclr,byol}_{fashion_mnist,cifar10,imagenet}.py``, dataset switched to synthetic),
jits ``method.train_step`` with the state donated (as ``ssl_jax.train`` does) on a batch of
random uint8 images of the recipe's input size, and reports:

* compile: seconds to lower + compile the step (``jit(...).lower(...).compile()``);
* ms/step and images/s per device: median over timed windows of back-to-back steps (each window
  ended by blocking on the metrics), after one warm-up step; images are source images (each
  gives two augmented views), divided by the number of devices;
* GFLOP/step: XLA's cost analysis of the step lowered for the CPU platform (``common.step_flops``:
  the same count on every backend; a GPU-compiled module hides its convolutions in cuDNN calls),
  augmentation and optimizer included, and MFU = GFLOP/step / (step time x peak), the peak
  being measured once per dtype on this device by a large jitted matmul (printed first: it is a
  practical peak, below the data-sheet number);
* memory: XLA's memory analysis of the compiled step (arguments + outputs + temporaries - aliased)
  and, where the backend keeps allocator statistics (GPU/TPU), ``peak_bytes_in_use`` of the
  device: a process-wide peak, so configurations run from small to large;
* the breakdown, for one batch per (method, model, dtype) (``--breakdown-batch``): the pieces
  TIMED SEPARATELY as their own jitted functions: augmentation only (``make_views``), forward +
  loss + backward only (the step with ready-made views and the optimizer update left out, see
  a batch with premade views / ``common.without_optimizer_update``), the optimizer update only
  (``apply_gradients`` on gradients shaped like the parameters). Fused into one step they overlap
  and share memory traffic, so their sum need not equal the step time: on the H100 the ResNet-50
  update alone took 11-13 ms, and 1.2-1.6 ms inside the fused step (``profile_step.py`` splits
  the fused step itself).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import common
import numpy as np

common.setup_imports()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from ssl_jax import host_memory  # noqa: E402

# model name -> (recipe suffix, overrides, default batches); methods pick simclr_/byol_ recipes.
MODELS = {
    "convnet": ("fashion_mnist", {}, (128, 256)),
    "resnet18": ("cifar10", {}, (256, 512, 1024)),
    "resnet50": ("imagenet", {}, (64, 128, 256)),  # 256 px host images, 224 px views
}


def build_config(method: str, model: str, dtype: str, batch: int):
    recipe, overrides, _ = MODELS[model]
    config = common.load_config(f"{method}_{recipe}", **overrides)
    config.dataset = "synthetic"
    config.batch_size = batch
    config.model.compute_dtype = dtype
    return config


def timed(fn, args, *, windows: int, iters: int) -> float:
    """Median seconds per call of a jitted function with fixed arguments (not donated)."""

    def run(n):
        out = None
        for _ in range(n):
            out = fn(*args)
        jax.block_until_ready(out)

    return common.median(common.interleave({"f": run}, windows=windows, iters=iters)["f"]["wall"])


def build_step(method_name: str, model: str, dtype: str, batch: int):
    """The recipe's config, method and fresh state, a batch of random uint8 images of the
    recipe's input size, a key, and the train step jitted with the state donated."""
    config = build_config(method_name, model, dtype, batch)
    in_size = config.data_image_size or config.image_size
    images = np.random.default_rng(0).integers(
        0, 256, (batch, in_size, in_size, config.image_channels), dtype=np.uint8
    )
    method, state = common.init_state(config)
    step = jax.jit(method.train_step, donate_argnums=(0,))
    return config, method, state, {"image": jnp.asarray(images)}, jax.random.key(0), step


def measure(method_name: str, model: str, dtype: str, batch: int, args, peaks, breakdown: bool):
    config, method, state, data, key, step = build_step(method_name, model, dtype, batch)
    start = time.perf_counter()
    compiled = step.lower(state, data, key).compile()
    compile_s = time.perf_counter() - start
    flops = common.step_flops(step, state, data, key)
    memory = common.compiled_memory(compiled)
    run = common.jax_step_runner(compiled, state, data, key)
    seconds = common.interleave({"step": run}, windows=args.windows, iters=args.iters)
    t = common.median(seconds["step"]["wall"])
    n_dev = jax.device_count()
    row = dict(
        method=method_name,
        model=model,
        px=config.image_size,
        dtype=dtype,
        batch=batch,
        compile_s=compile_s,
        ms=1e3 * t,
        spread=common.spread(seconds["step"]["wall"]),
        img_s_dev=batch / t / n_dev,
        gflop=flops / 1e9 if flops else float("nan"),
        mfu=flops / t / peaks[dtype] if flops else float("nan"),
        xla_mem_gib=memory["total"] / 2**30 if memory else float("nan"),
        dev_peak_gib=peak / 2**30 if (peak := common.peak_bytes_in_use()) else float("nan"),
    )
    if breakdown:
        row.update(pieces(method, config, data=data, key=key, args=args))
    return row


def pieces(method, config, *, data, key, args) -> dict:
    """Augmentation, forward+backward and optimizer timed as separate jitted functions."""
    from ssl_jax.methods.state import make_views

    _, state = common.init_state(config)
    step_key = jax.random.fold_in(key, 0)
    augment = jax.jit(functools.partial(make_views, settings=state.settings))
    views = augment(data, step_key)
    aug_s = timed(augment, (data, step_key), windows=args.windows, iters=args.iters)

    premade = {"view1": views[0], "view2": views[1]}
    with common.without_optimizer_update():  # the views come premade in the batch
        fwd_bwd = jax.jit(method.train_step, donate_argnums=(0,)).lower(state, premade, key)
        fwd_bwd = fwd_bwd.compile()
    run = common.jax_step_runner(fwd_bwd, state, premade, key)
    fb = common.interleave({"fb": run}, windows=args.windows, iters=args.iters)["fb"]["wall"]

    _, state = common.init_state(config)
    grads = jax.tree.map(lambda p: p * 1e-3, state.params)
    optimizer = jax.jit(lambda state, grads: state.apply_gradients(grads))
    opt_s = timed(optimizer, (state, grads), windows=args.windows, iters=args.iters)
    return dict(aug_ms=1e3 * aug_s, fwd_bwd_ms=1e3 * common.median(fb), opt_ms=1e3 * opt_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small CPU sweep (a few minutes)")
    parser.add_argument("--methods", default="simclr,byol")
    parser.add_argument("--models", default=None, help=f"comma list of {sorted(MODELS)}")
    parser.add_argument("--dtypes", default=None, help="float32,bfloat16 (quick: float32)")
    parser.add_argument("--batches", default=None, help="comma list; default per model")
    parser.add_argument(
        "--breakdown-batch", type=int, default=None, help="batch of the breakdown (default: middle)"
    )
    parser.add_argument("--windows", type=int, default=None, help="timed windows (default 5/3)")
    parser.add_argument("--iters", type=int, default=None, help="steps per window (default 5/2)")
    parser.add_argument("--peak-n", type=int, default=None, help="side of the peak matmul")
    parser.add_argument(
        "--malloc",
        choices=("default", "keep"),
        default="default",
        help="'keep': glibc keeps freed memory for reuse (ssl_jax.host_memory.keep_freed_memory)",
    )
    args = parser.parse_args()
    if args.malloc == "keep" and not host_memory.keep_freed_memory():
        raise SystemExit("--malloc keep needs glibc")
    quick = args.quick
    models = (args.models or ("convnet,resnet18" if quick else "resnet18,resnet50")).split(",")
    dtypes = (args.dtypes or ("float32" if quick else "float32,bfloat16")).split(",")
    methods = args.methods.split(",")
    args.windows = args.windows or (3 if quick else 5)
    args.iters = args.iters or (2 if quick else 5)
    on_cpu = jax.default_backend() == "cpu"

    common.header("ssl_jax train step throughput (benchmarks/train_step.py)")
    print(
        f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}; malloc {args.malloc}"
    )
    peak_n = args.peak_n or (2048 if on_cpu else 8192)
    peaks = {}
    for dtype in dtypes:
        peaks[dtype] = common.measure_peak_flops(jnp.dtype(dtype), peak_n)
        print(f"peak for MFU, {dtype}: {peaks[dtype] / 1e12:.3f} TFLOP/s ({peak_n}^3 matmul)")
    sys.stdout.flush()

    head = (
        f"{'method':6s} {'model':8s} {'px':>3s} {'dtype':8s} {'batch':>5s} {'compile':>7s} "
        f"{'ms/step':>8s} {'windows':>9s} {'img/s/dev':>9s} {'GFLOP':>8s} {'MFU':>6s} "
        f"{'XLA GiB':>7s} {'peak GiB':>8s} | {'aug ms':>7s} {'f+b ms':>7s} {'opt ms':>7s}"
    )
    print(head)
    for model in models:
        batches = [int(b) for b in args.batches.split(",")] if args.batches else None
        if batches is None:
            batches = list(MODELS[model][2])
            if quick:
                batches = [16] if model != "convnet" else [256]
        middle = args.breakdown_batch or batches[len(batches) // 2]
        if quick and model != models[0]:
            middle = None  # --quick: the breakdown for the first model only
        for method in methods:
            for dtype in dtypes:
                for batch in batches:
                    try:
                        r = measure(method, model, dtype, batch, args, peaks, batch == middle)
                    except Exception as e:  # noqa: BLE001 - report an out-of-memory, go on
                        if "RESOURCE_EXHAUSTED" not in str(e) and "emory" not in str(e):
                            raise
                        print(f"{method:6s} {model:8s} {'':3s} {dtype:8s} {batch:5d} out of memory")
                        continue
                    tail = (
                        f"{r['aug_ms']:7.1f} {r['fwd_bwd_ms']:7.1f} {r['opt_ms']:7.1f}"
                        if "aug_ms" in r
                        else f"{'':7s} {'':7s} {'':7s}"
                    )
                    print(
                        f"{r['method']:6s} {r['model']:8s} {r['px']:3d} {r['dtype']:8s} "
                        f"{r['batch']:5d} {r['compile_s']:6.1f}s {r['ms']:8.1f} "
                        f"{r['spread']:>9s} {r['img_s_dev']:9.1f} {r['gflop']:8.1f} "
                        f"{100 * r['mfu']:5.1f}% {r['xla_mem_gib']:7.2f} "
                        f"{r['dev_peak_gib']:8.2f} | {tail}".replace(" nan", "   -"),
                        flush=True,
                    )
    print(
        "aug / f+b / opt: augmentation, forward+loss+backward, optimizer update, each TIMED "
        "SEPARATELY as its own jitted function (not a split of the fused step: profile_step.py "
        "gives that)."
    )
    print(f"load after: {common.load_line()}")


if __name__ == "__main__":
    main()
