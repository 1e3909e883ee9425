"""Data-parallel scaling of the SimCLR and BYOL train steps, read from the compiled programs.

    python benchmarks/scaling.py                   # 1, 2, 4, 8 fake CPU devices, both methods
    python benchmarks/scaling.py --quick           # a tiny model: a minute
    python benchmarks/scaling.py --json out.json   # also write every figure as JSON

For each device count n (one subprocess each: the fake-device flag must be set before JAX is
imported) the real train step is built as ``ssl_jax.train`` builds it -- the mesh of
``ssl_jax.parallel``, the batch sharded on ``'data'``, the state replicated, jitted by
``ssl_jax.run.jit_train_step`` -- from the Fashion-MNIST recipes (``configs/*_fashion_mnist``:
a 4-layer convnet on 28x28x1) at a fixed per-device batch: weak scaling, global batch = per-device
batch x n (the default, 32 per device, gives the recipes' global batch of 256 at n = 8). It is
compiled, not run, and reported:

* per-device FLOPs, from XLA's ``cost_analysis()`` of the partitioned program;
* every collective in the optimised HLO, with its shapes, its executions per step and the bytes
  each device sends per step (ring algorithms; ``ssl_jax.profiling.traffic_bytes``), classified;
* anything unexpected (``ssl_jax.profiling.data_parallel_problems``).

Expected collectives of data parallelism under SPMD ``jit`` (nothing else: no all-to-all,
collective-permute or reduce-scatter):

* the gradient all-reduce: every parameter's gradient summed over devices. XLA's all-reduce
  combiner merges them into a few tuple-shaped ops; their size depends on neither n nor the batch;
* BatchNorm statistics: under ``jit`` the batch statistics are global, so every BatchNorm layer
  all-reduces its per-channel sums in the forward pass and again in the backward pass -- tiny, but
  two per layer per network pass (BYOL: online and target, each view separately), so many;
* SimCLR: the all-gather of the ``[2, N, P]`` embeddings for NT-Xent (and another one for the
  contrastive-accuracy metric), and, with the direct loss, the all-reduce of the gradient of the
  gathered embeddings, ``[2N, P]`` (the SPMD partitioner's transpose of the gather; the streamed
  loss, ``block_size``, needs instead a gather of two scalars per anchor);
* scalars: the loss and the metrics.

Projection. The 1-device step is timed (median of ``--steps`` after a warm-up) and taken as the
compute time. Under weak scaling each device keeps its batch, so compute(n) = t1 x flops(n) /
flops(1) (the NT-Xent matrix grows with the global batch), and

    step(n) = compute(n) + sum over collectives of traffic_bytes / B

for a stated per-device bandwidth B: 100 GB/s (NVLink-class) and 25 GB/s (a 200 Gb/s network
link). It assumes no overlap of communication with compute (an upper bound: XLA on GPU overlaps
part of the gradient all-reduce) and leaves out per-collective latency, shown separately as
executions x 10 us -- at this model size larger than the bandwidth term. Fake CPU devices share
this machine's cores, so their step times say nothing about scaling and are not measured.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BANDWIDTHS = {"100GB/s": 100e9, "25GB/s": 25e9}  # bytes/s each device sends
LATENCY_S = 10e-6  # per collective execution, a typical order for NCCL on one node
# The registered methods that have a Fashion-MNIST recipe (the configs this script builds on).
METHODS = sorted(
    name[: -len("_fashion_mnist.py")]
    for name in os.listdir(os.path.join(ROOT, "configs"))
    if name.endswith("_fashion_mnist.py")
)


def build_config(method: str, n_devices: int, per_device_batch: int, quick: bool):
    """The method's Fashion-MNIST recipe at global batch per_device_batch x n_devices."""
    path = os.path.join(ROOT, "configs", f"{method}_fashion_mnist.py")
    spec = importlib.util.spec_from_file_location(f"{method}_fashion_mnist", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.dataset = "synthetic"  # the step never sees the source; keep the images 28x28x1
    config.batch_size = per_device_batch * n_devices
    if quick:  # a model that compiles in seconds; same structure
        config.model.convnet.features = (8, 16, 16, 32)
        config.model.projector_hidden, config.model.projector_dim = 64, 32
        config.model.predictor_hidden = 64
    return config


def worker(n_devices: int, per_device_batch: int, quick: bool, steps: int) -> list[dict]:
    """Compile (and on 1 device, time) each method's step on n_devices fake CPU devices."""
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n_devices}"
    ).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, ROOT)
    import jax
    import numpy as np

    from ssl_jax import parallel, profiling, run
    from ssl_jax.methods import get_method

    assert jax.device_count() == n_devices, jax.devices()
    mesh = parallel.make_mesh(n_devices)
    results = []
    for name in METHODS:
        config = build_config(name, n_devices, per_device_batch, quick)
        method = get_method(name)
        real = real_inputs(config, method, mesh) if n_devices == 1 else None
        if real is None:
            inputs = run.abstract_step_inputs(config, mesh)
        else:  # the timed step: the compiled program must take these very pytrees
            inputs = jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), real
            )
        start = time.perf_counter()
        compiled = run.jit_train_step(method, mesh).lower(*inputs).compile()
        compile_s = time.perf_counter() - start
        sizes = profiling.step_sizes(inputs[0], config)
        colls = profiling.collectives(compiled.as_text(), n_devices)
        for c in colls:
            c["class"] = profiling.classify(c, **sizes)
        params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(inputs[0].params))
        result = dict(
            method=name,
            devices=n_devices,
            global_batch=config.batch_size,
            params=params,
            flops=profiling.flops(compiled),
            temp_bytes=compiled.memory_analysis().temp_size_in_bytes,
            compile_s=compile_s,
            collectives=colls,
            problems=profiling.data_parallel_problems(colls, **sizes),
            step_s=None,
        )
        if real is not None:
            result["step_s"] = time_step(compiled, real, steps)
        results.append(result)
    return results


def real_inputs(config, method, mesh) -> tuple:
    """(state, batch, key) on the mesh, as the train loop makes them (random uint8 images)."""
    import jax
    import numpy as np

    from ssl_jax import parallel

    repl = parallel.replicated(mesh)
    state = jax.jit(lambda k: method.init_state(config, k), out_shardings=repl)(jax.random.key(0))
    shape = (config.batch_size, config.image_size, config.image_size, config.image_channels)
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    batch = parallel.shard_batch({"image": images}, mesh)
    return state, batch, jax.device_put(jax.random.key(1), repl)


def time_step(compiled, inputs: tuple, steps: int) -> float:
    """Median seconds of the compiled step (after one warm-up step); the state is donated."""
    import jax

    state, batch, key = inputs
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        state, metrics = compiled(state, batch, key)
        jax.block_until_ready(metrics["loss"])
        if i:  # the first call pays for allocation and warm-up
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def summarize(result: dict) -> dict[str, dict[str, float]]:
    """Per class of collective: ops, executions and bytes sent per device per step."""
    out: dict[str, dict[str, float]] = {}
    for c in result["collectives"]:
        s = out.setdefault(c["class"], dict(ops=0, executions=0, traffic_bytes=0.0))
        s["ops"] += 1
        s["executions"] += c["count"]
        s["traffic_bytes"] += c["traffic_bytes"]
    return out


def project(results: list[dict]) -> None:
    """Add the weak-scaling projection to each result (needs the 1-device step time)."""
    base = {r["method"]: r for r in results if r["devices"] == 1}
    for r in results:
        one = base.get(r["method"])
        if one is None or not one["step_s"] or not one["flops"]:
            continue
        compute = one["step_s"] * (r["flops"] or one["flops"]) / one["flops"]
        traffic = sum(c["traffic_bytes"] for c in r["collectives"])
        executions = sum(c["count"] for c in r["collectives"])
        r["projection"] = dict(
            compute_s=compute,
            traffic_bytes=traffic,
            latency_s=executions * LATENCY_S,
            **{f"step_s@{k}": compute + traffic / b for k, b in BANDWIDTHS.items()},
            **{
                f"efficiency@{k}": one["step_s"] / (compute + traffic / b)
                for k, b in BANDWIDTHS.items()
            },
        )


def print_report(results: list[dict]) -> None:
    kb = 1e3
    print(
        "\nmethod  n  global  GFLOP/dev  collectives  sent KB/dev  comm ms @100 / @25 GB/s  "
        "latency ms  step ms (proj.) @100 / @25  unexpected"
    )
    for r in results:
        p = r.get("projection", {})
        execs = sum(c["count"] for c in r["collectives"])
        comm = [p.get("traffic_bytes", 0) / b * 1e3 for b in BANDWIDTHS.values()]
        steps = [p.get(f"step_s@{k}", float("nan")) * 1e3 for k in BANDWIDTHS]
        print(
            f"{r['method']:<7}{r['devices']:>2}  {r['global_batch']:>6}  "
            f"{(r['flops'] or 0) / 1e9:>9.2f}  {len(r['collectives']):>5} ({execs:>3})  "
            f"{p.get('traffic_bytes', 0) / kb:>11.1f}  {comm[0]:>9.3f} / {comm[1]:>6.3f}  "
            f"{p.get('latency_s', 0) * 1e3:>10.2f}  {steps[0]:>14.1f} / {steps[1]:>6.1f}  "
            f"{len(r['problems']) or 'none'}"
        )
    for r in results:
        if r["step_s"]:
            print(
                f"\n{r['method']}: 1-device step {r['step_s'] * 1e3:.1f} ms at batch "
                f"{r['global_batch']}; {r['params']:,} parameters"
            )
    print("\ncollectives by class (ops, executions, KB sent per device per step):")
    for r in results:
        parts = [
            f"{k}: {v['ops']} ({v['executions']}), {v['traffic_bytes'] / kb:.1f}"
            for k, v in sorted(summarize(r).items())
        ]
        print(f"  {r['method']} n={r['devices']}: " + ("; ".join(parts) or "none"))
    for r in results:
        counts: dict[str, int] = {}
        for problem in r["problems"]:
            # One line per kind and source: a re-layout often takes several similar ops.
            key = problem.split(" [")[0] + " from " + problem.split(" from ")[-1]
            counts[key] = counts.get(key, 0) + 1
        for key, count in counts.items():
            print(f"  UNEXPECTED {r['method']} n={r['devices']}: {count} x {key}")
    print("\nlargest collectives at the largest n:")
    top = max(r["devices"] for r in results)
    for r in (r for r in results if r["devices"] == top):
        for c in sorted(r["collectives"], key=lambda c: -c["traffic_bytes"])[:4]:
            shapes = ", ".join(c["shapes"][:3]) + (" ..." if len(c["shapes"]) > 3 else "")
            print(
                f"  {r['method']}: {c['kind']} [{shapes}] ({len(c['shapes'])} arrays, "
                f"{c['bytes'] / kb:.1f} KB) -> {c['traffic_bytes'] / kb:.1f} KB sent; {c['class']}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model; fewer timed steps")
    parser.add_argument("--devices", default="1,2,4,8", help="comma-separated device counts")
    parser.add_argument("--per-device-batch", type=int, default=None, help="default 32 (8 quick)")
    parser.add_argument("--steps", type=int, default=None, help="timed 1-device steps (10/3)")
    parser.add_argument("--json", default=None, help="write all results to this file")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    per_device = args.per_device_batch or (8 if args.quick else 32)
    steps = args.steps or (3 if args.quick else 10)
    if args.worker is not None:
        json.dump(worker(args.worker, per_device, args.quick, steps), sys.stdout)
        return

    results = []
    for n in (int(x) for x in args.devices.split(",")):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(n)]
        cmd += ["--per-device-batch", str(per_device), "--steps", str(steps)]
        cmd += ["--quick"] if args.quick else []
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode:
            sys.exit(f"worker for {n} device(s) failed:\n{out.stderr[-4000:]}")
        results.extend(json.loads(out.stdout))
        print(f"{n} device(s): compiled in {time.perf_counter() - start:.0f} s", flush=True)
    project(results)
    print_report(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
