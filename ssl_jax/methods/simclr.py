"""SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
Representations", arXiv:2002.05709).

Two augmented views of each image go through the encoder and projector as ONE batch of 2N (so
BatchNorm statistics span both views, as the reference implementation does), and NT-Xent is taken
over the global batch: under ``jax.jit`` on a mesh-sharded batch the 2N-2 negatives of every anchor
come from all devices.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from ssl_jax import losses
from ssl_jax.methods import common


@struct.dataclass
class SimCLRState:
    """SimCLR train state. Array fields are the checkpointed pytree; the rest is static."""

    step: jax.Array  # int32 scalar: number of updates applied
    params: nnx.State  # encoder + projector parameters
    batch_stats: nnx.State  # BatchNorm running averages
    opt_state: optax.OptState
    graphdef: nnx.GraphDef = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    schedule: Any = struct.field(pytree_node=False)
    hparams: common.StepHParams = struct.field(pytree_node=False)


def init_state(config: Any, key: jax.Array) -> SimCLRState:
    """A fresh SimCLR state from the config and a PRNG key."""
    network = common.build_network(config, nnx.Rngs(params=key))
    network.train()
    graphdef, params, batch_stats = nnx.split(network, nnx.Param, nnx.BatchStat)
    tx, schedule = common.optimizer_for(config)
    return SimCLRState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        graphdef=graphdef,
        tx=tx,
        schedule=schedule,
        hparams=common.step_hparams(config),
    )


def train_step(
    state: SimCLRState, batch: dict, key: jax.Array
) -> tuple[SimCLRState, dict[str, jax.Array]]:
    """One SimCLR update.

    Args:
      state: the current state.
      batch: ``{'image': uint8 [B, H, W, C], ...}``, the global batch (sharded or not).
      key: the run's PRNG key; the step number is folded in, so pass the same key every step.

    Returns:
      The new state and a flat dict of scalar metrics: loss, contrastive_acc, embed_std,
      learning_rate, l2_grads, l2_params, l2_updates.
    """
    hp = state.hparams
    x1, x2 = common.make_views(batch, common.step_key(key, state.step), hp)
    n = x1.shape[0]
    # The two views of an image sit side by side ([x1_0, x2_0, x1_1, ...]): each device keeps the
    # views of its own images. Concatenating [x1; x2] instead makes XLA move half of every
    # device's rows to another device (all-to-all / collective-permute) under data parallelism.
    x = jnp.stack([x1, x2], axis=1).reshape(2 * n, *x1.shape[1:])

    def loss_fn(params):
        network = nnx.merge(state.graphdef, params, state.batch_stats, copy=True)
        _, z = network(x)  # BatchNorm sees the same 2B rows as with [x1; x2]
        z = z.reshape(n, 2, -1)
        z1, z2 = z[:, 0], z[:, 1]
        loss = losses.nt_xent(z1, z2, temperature=hp.temperature, block_size=hp.loss_block_size)
        aux = (nnx.state(network, nnx.BatchStat), z1, z2)
        return loss, aux

    (loss, (batch_stats, z1, z2)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    params, opt_state, metrics = common.apply_gradients(
        state.tx, state.params, state.opt_state, grads
    )
    metrics.update(
        loss=loss,
        contrastive_acc=losses.contrastive_accuracy(z1, z2, block_size=hp.loss_block_size),
        embed_std=common.embedding_std(z1),
        learning_rate=state.schedule(state.step),
    )
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    return new_state, metrics


def encoder_of(state: SimCLRState) -> nnx.Module:
    """The trained encoder in eval mode (BatchNorm uses running averages)."""
    network = nnx.merge(state.graphdef, state.params, state.batch_stats)
    network.eval()
    return network.encoder
