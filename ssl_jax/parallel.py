"""Data parallelism: one device mesh, a batch-sharded global array, replicated state.

The train step is a single ``jax.jit`` over arrays placed on a ``Mesh`` with one ``'data'`` axis
(the big_vision way). The global batch is sharded over that axis and the state replicated, so XLA
inserts the gradient all-reduce and the all-gathers that make contrastive negatives and BatchNorm
statistics span every device: no hand-written collectives. Several processes (GPU nodes, TPU
hosts) each feed their slice of the global batch through
``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Start multi-process JAX when asked to; returns True if it did.

    Arguments win over the environment variables ``SSL_JAX_COORDINATOR``,
    ``SSL_JAX_NUM_PROCESSES`` and ``SSL_JAX_PROCESS_ID``. With none of them set, nothing happens
    unless the cluster is one JAX detects by itself (SLURM, Cloud TPU, ...), for which
    ``SSL_JAX_DISTRIBUTED=1`` calls ``jax.distributed.initialize()`` with no arguments.
    """
    coordinator_address = coordinator_address or os.environ.get("SSL_JAX_COORDINATOR")
    if num_processes is None and os.environ.get("SSL_JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["SSL_JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("SSL_JAX_PROCESS_ID"):
        process_id = int(os.environ["SSL_JAX_PROCESS_ID"])
    if coordinator_address:
        if num_processes is None or process_id is None:
            raise ValueError(
                "A coordinator address was given but not the number of processes and this "
                "process's id: pass --num_processes and --process_id (or set "
                "SSL_JAX_NUM_PROCESSES and SSL_JAX_PROCESS_ID)."
            )
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
        return True
    if os.environ.get("SSL_JAX_DISTRIBUTED") == "1":
        jax.distributed.initialize()
        return True
    return False


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh named ``'data'`` over all (or the first ``num_devices``) global devices.

    Auto axis types: under the Explicit default of ``jax.make_mesh``, ``z @ z.T`` on a
    batch-sharded ``z`` is a sharding type error; Auto lets XLA choose the collectives.
    """
    devices = jax.devices()
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(f"num_devices={num_devices} but {len(devices)} devices are available.")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the ``'data'`` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """The same full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def check_global_batch(global_batch_size: int, mesh: Mesh) -> int:
    """Validate the global batch against the mesh and process count; return the per-process size."""
    n_dev = mesh.devices.size
    if global_batch_size <= 0 or global_batch_size % n_dev:
        lower = max(n_dev, global_batch_size // n_dev * n_dev)
        raise ValueError(
            f"config.batch_size={global_batch_size} (the global batch) is not divisible by the "
            f"{n_dev} devices of the mesh. Use a multiple of {n_dev}, e.g. "
            f"--config.batch_size={lower} or {lower + n_dev}."
        )
    return global_batch_size // jax.process_count()


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Turn this process's slice of the batch (host NumPy) into global, batch-sharded arrays."""
    sharding = data_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
