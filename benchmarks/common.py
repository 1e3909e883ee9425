"""Helpers the benchmark scripts share: importing ssl_jax, configs, states, timing, machine facts.

Not a benchmark itself. The scripts run as ``python benchmarks/<name>.py`` and import this module
from their own folder.

Importing with only jax, flax, optax, orbax and numpy installed (the lent GPU machine):
``import ssl_jax`` needs none of grain, TFDS or ml_collections (``load_encoder``, which does, is
imported on first use), and neither does the train step (``ssl_jax.methods``, ``models``,
``augment``, ``losses``, ``optim``). ``ssl_jax.config``, which the recipes in ``configs/`` build
on, imports ml_collections: when it is missing, :func:`setup_imports` registers a stand-in whose
``ConfigDict`` is a plain attribute bag, so the real recipe files build the real config values
and the methods read them by attribute as they read a ConfigDict.

Timing: :func:`interleave` alternates the candidates window by window (the order reversed every
other window), so a load that comes and goes on a shared machine hits all of them alike; each
window runs ``iters`` calls and ends by blocking on the result; the figure kept is the median
window.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


class _AttrConfig(types.SimpleNamespace):
    """Stand-in for ``ml_collections.ConfigDict`` (attribute access is all the methods use)."""

    def to_dict(self) -> dict:
        return {k: v.to_dict() if isinstance(v, _AttrConfig) else v for k, v in vars(self).items()}


def setup_imports() -> list[str]:
    """Make ``ssl_jax.methods`` and ``ssl_jax.config`` importable; returns the stand-ins used.

    With ml_collections installed this only puts the repository on ``sys.path``.
    """
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)
    # `import ssl_jax` needs only jax, flax and optax (load_encoder, which needs grain and TFDS,
    # is imported on first use); ssl_jax.config needs ml_collections, stood in for here.
    used = []
    if not _installed("ml_collections") and "ml_collections" not in sys.modules:
        shim = types.ModuleType("ml_collections")
        shim.ConfigDict = _AttrConfig
        config_dict = types.ModuleType("ml_collections.config_dict")
        config_dict.placeholder = lambda *args, **kwargs: None
        shim.config_dict = config_dict
        sys.modules["ml_collections"] = shim
        sys.modules["ml_collections.config_dict"] = config_dict
        used.append("ml_collections stand-in (attribute bag)")
    return used


def load_config(name: str, arg: str | None = None, **overrides: Any) -> Any:
    """``configs/<name>.py``'s ``get_config(arg)`` with dotted overrides (``model__encoder=...``
    is written ``**{"model.encoder": ...}``)."""
    setup_imports()
    path = os.path.join(REPO_ROOT, "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_bench_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = config
        for p in parents:
            node = getattr(node, p)
        setattr(node, leaf, value)
    return config


def init_state(config: Any, seed: int = 0) -> tuple[types.ModuleType, Any]:
    """``(method module, fresh state)`` for the config, initialised under jit as train.py does."""
    import functools

    import jax

    from ssl_jax.methods import get_method

    method = get_method(config.method)
    state = jax.jit(functools.partial(method.init_state, config))(jax.random.key(seed))
    return method, state


@contextlib.contextmanager
def without_optimizer_update() -> Iterator[None]:
    """While tracing inside it, a method's optimizer update is left out: the parameters and the
    optimizer state come back unchanged and the metrics keep only ``l2_grads`` (which keeps the
    gradients alive, so the step is exactly forward + loss + backward). For the time breakdown."""
    import optax

    from ssl_jax.methods.state import TrainState

    original = TrainState.apply_gradients

    def no_update(self, grads, *, scale_updates=None, **changes):
        del scale_updates
        new = self.replace(step=self.step + 1, **changes)
        return new, {"l2_grads": optax.tree.norm(grads)}

    TrainState.apply_gradients = no_update
    try:
        yield
    finally:
        TrainState.apply_gradients = original


def num_params(tree: Any) -> int:
    """Number of scalars in a pytree of arrays."""
    import jax

    return sum(int(x.size) for x in jax.tree.leaves(tree))


# ----------------------------------------------------------------------------- timing


def interleave(
    runners: dict[str, Callable[[int], Any]], *, windows: int, iters: int, warmup: int = 1
) -> dict[str, dict[str, list[float]]]:
    """Seconds per call of each runner in each timed window, the runners alternated.

    ``runners[name](n)`` must run n calls and return only when they are finished (block on the
    device). Each runner first runs ``warmup`` calls untimed (compilation, caches). Returns
    ``{name: {'wall': [...], 'cpu': [...]}}``: wall-clock seconds per call, and the CPU seconds
    this process used per call (all its threads; on a CPU backend, the compute itself, which
    other jobs on a shared machine inflate much less than the wall clock).
    """
    names = list(runners)
    for name in names:
        if warmup:
            runners[name](warmup)
    seconds: dict[str, dict[str, list[float]]] = {n: {"wall": [], "cpu": []} for n in names}
    for w in range(windows):
        for name in names if w % 2 == 0 else names[::-1]:
            cpu, start = time.process_time(), time.perf_counter()
            runners[name](iters)
            seconds[name]["wall"].append((time.perf_counter() - start) / iters)
            seconds[name]["cpu"].append((time.process_time() - cpu) / iters)
    return seconds


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    """``min-max`` of per-window seconds as a percentage around the median."""
    m = statistics.median(values)
    return f"{100 * (min(values) / m - 1):+.0f}/{100 * (max(values) / m - 1):+.0f}%"


def jax_step_runner(step: Callable, state: Any, batch: Any, key: Any) -> Callable[[int], Any]:
    """A runner for :func:`interleave` over a donated-state step ``(state, batch, key) ->
    (state, metrics)``; the state is carried from call to call."""
    import jax

    holder = [state]

    def run(n: int) -> None:
        s, metrics = holder[0], None
        for _ in range(n):
            s, metrics = step(s, batch, key)
        jax.block_until_ready(metrics)
        holder[0] = s

    return run


# ----------------------------------------------------------------------------- device facts


def compiled_flops(compiled: Any) -> float | None:
    """FLOPs of one call from XLA's cost analysis of a compiled function (None if unavailable)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):
        analysis = analysis[0] if analysis else None
    if not analysis or "flops" not in analysis:
        return None
    return float(analysis["flops"])


def step_flops(jitted: Any, *args: Any) -> float | None:
    """FLOPs of one call of a jitted function as written, whatever the backend.

    XLA's cost analysis of the module lowered for the CPU platform, before any backend pass. Not
    the compiled module's: on GPU its convolutions are cuDNN custom calls that cost analysis
    counts as 0 FLOPs (ResNet-50 showed 0.3% "MFU" on an H100), and the lowered GPU module has no
    cost analysis at all. The arguments are given to the trace as shapes placed on the CPU
    device, so that the cost analysis runs on the CPU backend too (it follows the arguments'
    devices, and a GPU plugin's has none); the traced function is still the one the current
    backend runs (e.g. the library convolution that ``conv_impl='auto'`` picks on GPU), less the
    zero channels that 'auto' adds to a GPU stem (model FLOPs, not the padding's: 3% of
    ResNet-50's step).
    """
    import jax
    import numpy as np

    from ssl_jax.models.layers import without_gpu_channel_padding

    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])

    def on_cpu(x: Any) -> Any:
        if isinstance(x, jax.Array | np.ndarray):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=cpu)
        return x

    shapes = jax.tree.map(on_cpu, args)
    # The model's own FLOPs: the 'auto' convolutions of the graph definitions in the arguments
    # (a train state's) are set not to pad a GPU stem's input channels. A different graph
    # definition, so a padded trace made before is not reused, nor is this one later.
    traced = jitted.trace(*without_gpu_channel_padding(shapes))
    return compiled_flops(traced.lower(lowering_platforms=("cpu",)))


def compiled_memory(compiled: Any) -> dict[str, int] | None:
    """XLA's memory analysis: argument, output, temp bytes, and their sum less aliasing."""
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    out = {
        "argument": int(stats.argument_size_in_bytes),
        "output": int(stats.output_size_in_bytes),
        "alias": int(stats.alias_size_in_bytes),
        "temp": int(stats.temp_size_in_bytes),
    }
    out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out


def peak_bytes_in_use() -> int | None:
    """The device allocator's peak (GPU/TPU); None where the backend keeps no statistics."""
    import jax

    stats = jax.devices()[0].memory_stats()
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def measure_peak_flops(dtype: Any, n: int, repeats: int = 5) -> float:
    """FLOP/s of a jitted n x n x n matmul in ``dtype`` on the default device (best of repeats):
    the practical peak used for MFU. Stated with the result, since it depends on the machine."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
    matmul = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(matmul(a, b))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a, b))
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


def git_commit() -> str:
    """Short HEAD of the repository, with ``+ uncommitted`` when the tree has changes."""
    try:
        head = subprocess.run(
            ["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", REPO_ROOT, "status", "--porcelain"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    return f"{head} + uncommitted" if dirty else head


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_line() -> str:
    """``nproc``, the CPUs this process may use, and the 1/5/15-minute load averages."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "n/a"
    return f"nproc {os.cpu_count()}, usable CPUs {usable}, load average {load}"


def header(title: str) -> None:
    """Print what the figures below depend on: date, commit, machine, load, versions."""
    import jax

    device = jax.devices()[0]
    print(f"# {title}")
    print(f"date {datetime.date.today().isoformat()}, commit {git_commit()}")
    print(f"host: {cpu_model()}; {load_line()}")
    print(
        f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} "
        f"device(s): {device.device_kind}"
    )
    for note in setup_imports():
        print(f"note: {note}")
    sys.stdout.flush()
