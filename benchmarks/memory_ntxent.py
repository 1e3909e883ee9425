"""NT-Xent forward + backward on a global batch of 65,536 x 128 across 8 fake CPU devices.

    python benchmarks/memory_ntxent.py            # N = 65,536 (2N = 131,072), D = 128, 8 devices
    python benchmarks/memory_ntxent.py --quick    # N = 8,192: seconds

The streamed NT-Xent (``nt_xent(..., block_size=B)``) computes the loss over the whole global batch
and its gradient without any device holding the 2N x 2N similarity matrix (68.7 GB in float32 at
2N = 131,072; 8.6 GB even for one device's [2N/8, 2N] rows). It runs exactly as a train step
would: plain ``jax.jit`` of ``value_and_grad`` on arrays sharded over a ``'data'`` mesh
(``ssl_jax.parallel``).

Reported, per device, from XLA's ``memory_analysis()`` of the compiled program: the temporaries of
the streamed function, and those of the direct formula (``block_size=None``) at the same size --
compiled only, never run, since it would not fit -- against the full matrix. Also: the process's
peak resident memory (the 8 fake devices share this host's RAM, so it holds all 8 devices'
buffers), the wall time of one forward + backward after compilation, and the per-device matmul
FLOPs (counted: XLA's ``cost_analysis`` counts the body of the streaming loop once).

Value check, exact at full size: the embeddings are built from K random unit directions (each row
scaled by a random factor, which the loss's normalisation removes), so the exact loss follows in
float64 from the K x K cosines and how often each direction occurs; the float32 streamed value
must match it to ~1e-5. At ``--check-size`` rows of Gaussian data (default 2,048), loss and
gradients are checked against the direct formula and the loss against a float64 NumPy
transcription.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

_DEVICES = 8
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_DEVICES}"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ssl_jax import parallel, profiling  # noqa: E402
from ssl_jax.losses import nt_xent  # noqa: E402

GB = 1e9


def structured_views(n: int, d: int, k: int, seed: int) -> tuple[np.ndarray, ...]:
    """z1, z2: [n, d] float32 rows along k random directions; and the direction of each row."""
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(k, d))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    a = rng.integers(0, k, n)
    # Half the pairs share a direction (easy positives), half do not: a loss well away from 0.
    b = np.where(rng.random(n) < 0.5, a, rng.integers(0, k, n))
    scale1, scale2 = rng.uniform(0.5, 2.0, (2, n, 1))
    z1 = (scale1 * dirs[a]).astype(np.float32)
    z2 = (scale2 * dirs[b]).astype(np.float32)
    return z1, z2, dirs, a, b


def exact_structured_loss(dirs: np.ndarray, a: np.ndarray, b: np.ndarray, tau: float) -> float:
    """NT-Xent in float64 for embeddings along dirs[a] (first views) and dirs[b] (second views).

    An anchor along direction x has denominator sum_k count_k exp(s(x, k) / tau) minus its own
    term exp(1 / tau); its positive logit is s(a_i, b_i) / tau.
    """
    cos = dirs @ dirs.T  # [K, K], float64
    counts = np.bincount(a, minlength=len(dirs)) + np.bincount(b, minlength=len(dirs))
    shift = 1.0 / tau  # cosines <= 1: the largest possible logit
    denom = np.exp(cos / tau - shift) @ counts - np.exp(np.diag(cos) / tau - shift)
    lse = np.log(denom) + shift  # [K]: per direction
    pos = cos[a, b] / tau
    return float((np.sum(lse[a] - pos) + np.sum(lse[b] - pos)) / (2 * len(a)))


def float64_reference(z1: np.ndarray, z2: np.ndarray, tau: float) -> float:
    """NT-Xent in float64 NumPy, the whole [2N, 2N] matrix at once (for small N)."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    u = z / np.linalg.norm(z, axis=1, keepdims=True)
    logits = u @ u.T / tau
    np.fill_diagonal(logits, -np.inf)
    n = len(z1)
    pos = logits[np.arange(2 * n), (np.arange(2 * n) + n) % (2 * n)]
    top = logits.max(axis=1)
    lse = np.log(np.exp(logits - top[:, None]).sum(axis=1)) + top
    return float(np.mean(lse - pos))


def loss_and_grads(mesh, block_size: int | None, tau: float):
    """jit(value_and_grad(nt_xent)) over the batch-sharded z1, z2, as a train step runs it."""
    rows, repl = parallel.data_sharding(mesh), parallel.replicated(mesh)
    fn = jax.value_and_grad(
        lambda a, b: nt_xent(a, b, temperature=tau, block_size=block_size), argnums=(0, 1)
    )
    return jax.jit(fn, in_shardings=(rows, rows), out_shardings=(repl, (rows, rows)))


def check_small(mesh, n: int, d: int, block_size: int, tau: float) -> dict:
    rng = np.random.default_rng(1)
    base = rng.normal(size=(n, d))
    z1 = (base + 0.5 * rng.normal(size=(n, d))).astype(np.float32)
    z2 = (base + 0.5 * rng.normal(size=(n, d))).astype(np.float32)
    value, grads = loss_and_grads(mesh, block_size, tau)(z1, z2)
    ref_value, ref_grads = loss_and_grads(mesh, None, tau)(z1, z2)
    grad_err = max(
        float(np.max(np.abs(np.asarray(g) - np.asarray(r))) / np.max(np.abs(np.asarray(r))))
        for g, r in zip(grads, ref_grads, strict=True)
    )
    f64 = float64_reference(z1, z2, tau)
    return dict(
        n=n,
        value=float(value),
        direct=float(ref_value),
        float64=f64,
        rel_err_float64=abs(float(value) - f64) / f64,
        rel_err_direct=abs(float(value) - float(ref_value)) / float(ref_value),
        grad_rel_err_direct=grad_err,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 8,192 instead of 65,536")
    parser.add_argument("--n", type=int, default=None, help="global batch N (rows of z1)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=2048)
    parser.add_argument("--temperature", type=float, default=0.1)
    parser.add_argument("--directions", type=int, default=4096, help="K for the exact check")
    parser.add_argument("--check-size", type=int, default=2048, help="N of the Gaussian check")
    args = parser.parse_args()
    n = args.n or (8192 if args.quick else 65536)
    d, block, tau = args.dim, args.block_size, args.temperature
    assert jax.device_count() == _DEVICES, jax.devices()
    mesh = parallel.make_mesh(_DEVICES)
    full = (2 * n) ** 2 * 4
    print(
        f"NT-Xent forward+backward, N = {n:,} (2N = {2 * n:,}), D = {d}, block {block}, "
        f"tau {tau}, {_DEVICES} fake CPU devices, plain jit on the batch-sharded arrays"
    )
    print(f"full 2N x 2N float32 matrix: {full / GB:.1f} GB ({full / _DEVICES / GB:.2f} GB/device)")

    small = check_small(mesh, args.check_size, d, block, tau)
    print(
        f"check at N = {small['n']:,} (Gaussian): streamed {small['value']:.6f}, direct "
        f"{small['direct']:.6f}, float64 {small['float64']:.6f}; rel. err vs float64 "
        f"{small['rel_err_float64']:.1e}, vs direct {small['rel_err_direct']:.1e}; gradients "
        f"vs direct: max rel. err {small['grad_rel_err_direct']:.1e}"
    )

    spec = jax.ShapeDtypeStruct((n, d), jnp.float32, sharding=parallel.data_sharding(mesh))
    start = time.perf_counter()
    streamed = loss_and_grads(mesh, block, tau).lower(spec, spec).compile()
    compile_s = time.perf_counter() - start
    direct = loss_and_grads(mesh, None, tau).lower(spec, spec).compile()  # never run
    mem_s, mem_d = streamed.memory_analysis(), direct.memory_analysis()
    print(
        f"per-device temporaries (memory_analysis): streamed {mem_s.temp_size_in_bytes / GB:.3f} "
        f"GB, direct {mem_d.temp_size_in_bytes / GB:.1f} GB (compiled only), full matrix "
        f"{full / GB:.1f} GB; streamed args {mem_s.argument_size_in_bytes / GB:.3f} GB, outputs "
        f"{mem_s.output_size_in_bytes / GB:.3f} GB"
    )
    # Three [2n, D] x [D, 2N] products per device: the forward logits, their recomputation in the
    # backward pass and the gradient product (XLA's cost_analysis counts a loop body once).
    flops = 3 * 2 * (2 * n // _DEVICES) * (2 * n) * d
    colls = profiling.collectives(streamed.as_text(), _DEVICES)
    print(
        "collectives: "
        + ", ".join(f"{c['kind']} {'+'.join(c['shapes'])} x{c['count']}" for c in colls)
    )

    z1, z2, dirs, a, b = structured_views(n, d, args.directions, seed=0)
    z1 = jax.device_put(z1, parallel.data_sharding(mesh))
    z2 = jax.device_put(z2, parallel.data_sharding(mesh))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    value, (g1, g2) = streamed(z1, z2)
    jax.block_until_ready((value, g1, g2))
    run_s = time.perf_counter() - start
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    exact = exact_structured_loss(dirs, a, b, tau)
    finite = bool(np.isfinite(np.asarray(g1)).all() and np.isfinite(np.asarray(g2)).all())
    print(
        f"run: {run_s:.1f} s (compile {compile_s:.1f} s); matmul FLOPs {flops / 1e12:.2f} T per "
        f"device, {_DEVICES * flops / run_s / 1e9:.0f} GFLOP/s in all; peak RSS "
        f"{rss_peak / GB:.2f} GB for all {_DEVICES} devices (before the run "
        f"{rss_before / GB:.2f} GB)"
    )
    print(
        f"value {float(value):.6f}, exact float64 {exact:.6f}, rel. err "
        f"{abs(float(value) - exact) / exact:.1e}; gradients finite: {finite}"
    )


if __name__ == "__main__":
    main()
