"""BYOL (Grill et al. 2020, "Bootstrap Your Own Latent", arXiv:2006.07733).

The online network (encoder, projector, predictor) predicts the target network's projection of
the other view; the target (encoder, projector) is an exponential moving average of the online
weights with a rate tau that rises from ``base_tau`` to 1 on a cosine schedule. The loss is
symmetrised over the two view orders. As in DeepMind's implementation, each view goes through the
encoder on its own, so BatchNorm statistics are per view.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from ssl_jax import losses, models
from ssl_jax.methods import common


class BYOLOnline(nnx.Module):
    """Online network: encoder + projector (an SSLNetwork) followed by the predictor."""

    def __init__(self, network: common.SSLNetwork, predictor: nnx.Module):
        self.network = network
        self.predictor = predictor

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x: [B, H, W, C] -> (projection z: [B, P], prediction q: [B, P])."""
        _, z = self.network(x)
        return z, self.predictor(z)


@struct.dataclass
class BYOLState:
    """BYOL train state. Array fields are the checkpointed pytree; the rest is static."""

    step: jax.Array
    params: nnx.State  # online: {'network': encoder + projector, 'predictor': ...}
    batch_stats: nnx.State
    target_params: nnx.State  # EMA of params['network']
    target_batch_stats: nnx.State
    opt_state: optax.OptState
    graphdef: nnx.GraphDef = struct.field(pytree_node=False)  # online
    target_graphdef: nnx.GraphDef = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    schedule: Any = struct.field(pytree_node=False)
    hparams: common.StepHParams = struct.field(pytree_node=False)


def target_decay(step: jax.Array, base_tau: float, total_steps: int) -> jax.Array:
    """tau_k = 1 - (1 - base_tau) (cos(pi k / K) + 1) / 2 (BYOL sec. 3.2)."""
    progress = jnp.minimum(step.astype(jnp.float32) / max(total_steps, 1), 1.0)
    return 1.0 - (1.0 - base_tau) * (jnp.cos(math.pi * progress) + 1.0) / 2.0


def init_state(config: Any, key: jax.Array) -> BYOLState:
    """A fresh BYOL state; the target starts as an exact copy of the online encoder+projector."""
    rngs = nnx.Rngs(params=key)
    network = common.build_network(config, rngs)
    m = config.model
    predictor = models.Predictor(
        m.projector_dim,
        m.predictor_hidden,
        m.projector_dim,
        dtype=common.compute_dtype(config),
        rngs=rngs,
    )
    online = BYOLOnline(network, predictor)
    online.train()
    target_graphdef, target_params, target_stats = nnx.split(network, nnx.Param, nnx.BatchStat)
    graphdef, params, batch_stats = nnx.split(online, nnx.Param, nnx.BatchStat)
    tx, schedule = common.optimizer_for(config)
    copy = lambda tree: jax.tree.map(jnp.array, tree)  # noqa: E731 - distinct buffers (donation)
    return BYOLState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        target_params=copy(target_params),
        target_batch_stats=copy(target_stats),
        opt_state=tx.init(params),
        graphdef=graphdef,
        target_graphdef=target_graphdef,
        tx=tx,
        schedule=schedule,
        hparams=common.step_hparams(config),
    )


def train_step(
    state: BYOLState, batch: dict, key: jax.Array
) -> tuple[BYOLState, dict[str, jax.Array]]:
    """One BYOL update: online gradient step, then the EMA update of the target.

    Args:
      state: the current state.
      batch: ``{'image': uint8 [B, H, W, C], ...}``, the global batch (sharded or not).
      key: the run's PRNG key; the step number is folded in, so pass the same key every step.

    Returns:
      The new state and scalar metrics: loss, tau, embed_std, learning_rate, l2_grads,
      l2_params, l2_updates.
    """
    hp = state.hparams
    x1, x2 = common.make_views(batch, common.step_key(key, state.step), hp)

    # The target needs no gradient: run it first, outside the differentiated function.
    target = nnx.merge(
        state.target_graphdef, state.target_params, state.target_batch_stats, copy=True
    )
    with jax.named_scope("target_forward"):  # for profiles
        _, t1 = target(x1)
        _, t2 = target(x2)
    target_batch_stats = nnx.state(target, nnx.BatchStat)

    def loss_fn(params):
        online = nnx.merge(state.graphdef, params, state.batch_stats, copy=True)
        z1, q1 = online(x1)
        _, q2 = online(x2)
        loss = losses.byol_loss(q1, t2) + losses.byol_loss(q2, t1)
        return loss, (nnx.state(online, nnx.BatchStat), z1)

    (loss, (batch_stats, z1)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    params, opt_state, metrics = common.apply_gradients(
        state.tx, state.params, state.opt_state, grads
    )
    tau = target_decay(state.step, hp.base_tau, hp.total_steps)
    with jax.named_scope("target_ema"):
        target_params = optax.incremental_update(params["network"], state.target_params, 1.0 - tau)
    metrics.update(
        loss=loss,
        tau=tau,
        embed_std=common.embedding_std(z1),
        learning_rate=state.schedule(state.step),
    )
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        batch_stats=batch_stats,
        target_params=target_params,
        target_batch_stats=target_batch_stats,
        opt_state=opt_state,
    )
    return new_state, metrics


def encoder_of(state: BYOLState) -> nnx.Module:
    """The trained ONLINE encoder in eval mode (what BYOL evaluates)."""
    online = nnx.merge(state.graphdef, state.params, state.batch_stats)
    online.eval()
    return online.network.encoder
