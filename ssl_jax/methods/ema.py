"""An exponential-moving-average copy of a network: the target of BYOL, the momentum encoder of
MoCo v3 and the teacher of DINO.

    target = EMATarget.of(network)                       # an exact copy at step 0
    t = target.module()(x)                               # forward pass (train-mode BatchNorm)
    target = target.update(online_params, tau)           # xi <- tau xi + (1 - tau) theta

The rate tau rises from ``base_tau`` to 1 on a cosine (BYOL, Grill et al. 2020,
arXiv:2006.07733, sec. 3.2; MoCo v3 and DINO use the same schedule): :func:`cosine_tau`.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from ssl_jax.models.stochastic_depth import DropPath


@struct.dataclass
class EMATarget:
    """Target parameters and BatchNorm statistics (arrays) with the graph that merges them."""

    params: nnx.State
    batch_stats: nnx.State
    graphdef: nnx.GraphDef = struct.field(pytree_node=False)

    @classmethod
    def of(cls, module: nnx.Module) -> EMATarget:
        """An exact copy of ``module``'s parameters and statistics, in distinct buffers (so that
        donating the online state does not donate the target)."""
        graphdef, params, batch_stats = nnx.split(module, nnx.Param, nnx.BatchStat)
        copy = lambda tree: jax.tree.map(jnp.array, tree)  # noqa: E731
        return cls(params=copy(params), batch_stats=copy(batch_stats), graphdef=graphdef)

    def module(self) -> nnx.Module:
        """The target network (a fresh module per call; its statistics update on a forward
        pass in train mode: read them back with ``nnx.state(module, nnx.BatchStat)``). Its
        drop-path layers are off, as DINO's teacher and MoCo v3's momentum encoder."""
        module = nnx.merge(self.graphdef, self.params, self.batch_stats, copy=True)
        module.set_attributes(DropPath, deterministic=True, raise_if_not_found=False)
        return module

    def update(self, online_params: Any, tau: jax.Array, batch_stats: Any = None) -> EMATarget:
        """``tau * target + (1 - tau) * online`` for the parameters (the ops carry the name
        scope ``target_ema``); ``batch_stats``, if given, replace the target's statistics."""
        with jax.named_scope("target_ema"):
            params = optax.incremental_update(online_params, self.params, 1.0 - tau)
        stats = self.batch_stats if batch_stats is None else batch_stats
        return self.replace(params=params, batch_stats=stats)


def cosine_tau(step: jax.Array, base_tau: float, total_steps: int) -> jax.Array:
    """tau_k = 1 - (1 - base_tau) (cos(pi k / K) + 1) / 2 (BYOL sec. 3.2): base_tau at step 0,
    1 at step K = ``total_steps`` and after.

    >>> [round(float(cosine_tau(jnp.asarray(k), 0.99, 100)), 6) for k in (0, 50, 100, 200)]
    [0.99, 0.995, 1.0, 1.0]
    """
    progress = jnp.minimum(step.astype(jnp.float32) / max(total_steps, 1), 1.0)
    return 1.0 - (1.0 - base_tau) * (jnp.cos(math.pi * progress) + 1.0) / 2.0
