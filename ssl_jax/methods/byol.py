"""BYOL (Grill et al. 2020, "Bootstrap Your Own Latent", arXiv:2006.07733).

The online network (encoder, projector, predictor) predicts the target network's projection of
the other view; the target (encoder, projector) is an exponential moving average of the online
weights with a rate tau that rises from ``base_tau`` to 1 on a cosine schedule
(:mod:`ssl_jax.methods.ema`). The loss is symmetrised over the two view orders. As in DeepMind's
implementation, each view goes through the encoder on its own, so BatchNorm statistics are per
view.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import nnx

from ssl_jax import losses
from ssl_jax.methods import network as network_lib
from ssl_jax.methods.ema import cosine_tau
from ssl_jax.methods.state import (
    TrainState,
    embedding_std,
    local_crops_of,
    make_views,
    rows_as_crops,
    step_key,
)

LOSS_SCOPES = ("byol_loss",)
MULTI_CROP = True  # config.multi_crop: each local crop also predicts both targets


@dataclasses.dataclass(frozen=True)
class Hparams:
    """BYOL's settings: ``config.byol.*``."""

    base_tau: float = 0.996  # target EMA rate at step 0 (rises to 1 on a cosine)

    def validate(self) -> None:
        if not 0.0 <= self.base_tau <= 1.0:
            raise ValueError(
                f"config.byol.base_tau={self.base_tau!r} is invalid: must be in [0, 1]."
            )


def target_decay(step: jax.Array, base_tau: float, total_steps: int) -> jax.Array:
    """BYOL's tau at ``step`` (:func:`ssl_jax.methods.ema.cosine_tau`)."""
    return cosine_tau(step, base_tau, total_steps)


def init_state(config: Any, key: jax.Array) -> TrainState:
    """A fresh BYOL state; the target starts as an exact copy of the online encoder+projector."""
    return network_lib.init_predictor_state(
        config, key, Hparams(**config.byol), momentum_target=True
    )


def train_step(
    state: TrainState, batch: dict, key: jax.Array
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One BYOL update: online gradient step, then the EMA update of the target.

    Args:
      state: the current state.
      batch: ``{'image': uint8 [B, H, W, C], ...}``, the global batch (sharded or not).
      key: the run's PRNG key; the step number is folded in, so pass the same key every step.

    Returns:
      The new state and scalar metrics: loss, tau, embed_std, learning_rate, l2_grads,
      l2_params, l2_updates.
    """
    k = step_key(key, state.step)
    x1, x2 = make_views(batch, k, state.settings)
    local = local_crops_of(batch, k, state.settings)  # multi-crop: [B * V, L, L, C] or None

    # The target needs no gradient: run it first, outside the differentiated function.
    target = state.target.module()
    with jax.named_scope("target_forward"):  # for profiles
        _, t1 = target(x1)
        _, t2 = target(x2)
    target_batch_stats = nnx.state(target, nnx.BatchStat)

    def loss_fn(params):
        online = state.module(params, copy=True)
        z1, q1 = online(x1)
        _, q2 = online(x2)
        loss = losses.byol_loss(q1, t2) + losses.byol_loss(q2, t1)
        if local is not None:  # each local crop predicts both targets; mean over the pairs x 2
            v = local.shape[0] // q1.shape[0]
            q_local = rows_as_crops(online(local)[1], v)
            for q in q_local:
                loss += losses.byol_loss(q, t1) + losses.byol_loss(q, t2)
            loss /= v + 1
        return loss, (nnx.state(online, nnx.BatchStat), z1)

    (loss, (batch_stats, z1)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state, metrics = state.apply_gradients(grads, batch_stats=batch_stats)
    tau = cosine_tau(state.step, state.hparams.base_tau, state.settings.total_steps)
    target = state.target.update(new_state.params["network"], tau, target_batch_stats)
    metrics.update(
        loss=loss,
        tau=tau,
        embed_std=embedding_std(z1),
        learning_rate=state.schedule(state.step),
    )
    return new_state.replace(target=target), metrics


encoder_of = network_lib.encoder_of  # the online encoder: what BYOL evaluates
