"""The batch of embeddings a loss starts from, and the global batch behind ``axis_name``.

Shared by every loss family: the static input checks, the cast to at least float32 and the L2
normalisation of the local rows; under ``shard_map``/``pmap``, the global batch size, the
all-gather of the rows across the axis and the mean over the global batch (``psum``, then division
by the global count); under ``jit`` on an Explicit-axis mesh, the replication of the gathered rows.
"""

from __future__ import annotations

from collections.abc import Hashable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from jax.typing import ArrayLike

# Floor on the L2 norm: a zero embedding normalises to zero (cosine 0 with everything) with a finite
# gradient instead of 0/0. Real projections have norms many orders of magnitude above it.
_NORM_EPS = 1e-6


def _check_pair(a: jax.Array, b: jax.Array, names: tuple[str, str]) -> None:
    """Raise ValueError unless a and b are non-empty [N, D] arrays of one shape (static checks)."""
    for x, name in zip((a, b), names, strict=True):
        if x.ndim != 2:
            raise ValueError(
                f"{name} must be 2-D with shape [N, D] (batch, embedding dim); "
                f"got {x.ndim}-D shape {x.shape} (jax.vmap over a leading axis of problems)."
            )
    if a.shape != b.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape [N, D]; "
            f"got {names[0]}: {a.shape} and {names[1]}: {b.shape}."
        )
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(
            f"{names[0]} and {names[1]} must have at least one row and one column; got {a.shape}."
        )


def _check_temperature(temperature: ArrayLike) -> None:
    # The rank and dtype are static, so they are checked even when the temperature is traced.
    if np.ndim(temperature) != 0:
        raise ValueError(
            f"temperature must be a scalar; got shape {np.shape(temperature)} "
            "(jax.vmap over the temperatures to compare several)."
        )
    if np.iscomplexobj(temperature):
        raise ValueError(f"temperature must be a real number; got {temperature!r}.")
    # A traced temperature (e.g. a scheduled value passed into jit) cannot be checked at trace time.
    if isinstance(temperature, jax.core.Tracer):
        return
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}.")


def _as_float(x: ArrayLike, name: str) -> jax.Array:
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        # promote_types keeps complex, and the "loss" would be a complex number.
        raise ValueError(f"{name} must be real (a float or int dtype); got {x.dtype}.")
    # Cast up before normalising: bfloat16 sums of squares and dot products lose ~3 digits.
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _l2_normalize(x: jax.Array) -> jax.Array:
    # rsqrt(max(|x|^2, eps^2)) rather than x / norm(x): the norm's gradient is NaN at x = 0, while
    # the max routes a zero row's gradient into the constant branch and stays finite.
    sq = jnp.sum(x * x, axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, jnp.asarray(_NORM_EPS**2, x.dtype)))


def _global_size(n_local: int, axis_name: Hashable | None) -> int:
    """The global batch size N (static)."""
    return n_local if axis_name is None else n_local * jax.lax.axis_size(axis_name)


def _replicated(x: jax.Array) -> jax.Array:
    """x, resharded to be whole on every device if its type is sharded over an Explicit mesh axis.

    Under ``jax.jit`` on a mesh with Explicit axes (``jax.make_mesh``'s default), the sharding is
    part of the type, and an op whose output sharding JAX cannot infer raises ShardingTypeError:
    merging the view and batch axes of a ``[2, N@data, D]`` array into ``[2N, D]`` rows, for one.
    Every anchor needs every candidate anyway, so the candidates are made replicated first (the
    all-gather XLA inserts by itself on an Auto mesh). On an Auto mesh, on one device and inside
    ``shard_map``/``pmap`` no axis is in the type, and x is returned as is (the same program).
    """
    sharding = jax.typeof(x).sharding
    if all(entry is None for entry in sharding.spec):
        return x
    return jax.sharding.reshard(x, NamedSharding(sharding.mesh, PartitionSpec()))


def _gather_rows(x: jax.Array, axis_name: Hashable | None, axis: int = 1) -> jax.Array:
    """``[2, n, ...]`` local rows -> ``[2, N, ...]`` global rows, whole on every device.

    ``axis`` is the batch axis (1: view first; 0 for ``[n, ...]`` rows). Without axis_name, the
    identity, except on an Explicit mesh (see :func:`_replicated`).
    """
    if axis_name is None:
        return _replicated(x)
    # The transpose of a tiled all_gather is a reduce-scatter, so gradients of other devices'
    # anchors w.r.t. these rows flow back here.
    return jax.lax.all_gather(x, axis_name, axis=axis, tiled=True)


def _global_mean(local_sum: jax.Array, count: int, axis_name: Hashable | None) -> jax.Array:
    # Sum of the local terms, psum, then divide by the GLOBAL count: every device gets the same
    # value, and each anchor's term is differentiated exactly once (on the device that owns it).
    if axis_name is not None:
        local_sum = jax.lax.psum(local_sum, axis_name)
    return local_sum / count
