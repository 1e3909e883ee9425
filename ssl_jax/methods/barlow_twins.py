"""Barlow Twins (Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via Redundancy
Reduction", arXiv:2103.03230).

One network (encoder + a wide projector); the cross-correlation of the two views' projections,
each dimension standardised over the GLOBAL batch, is pulled towards the identity
(:func:`ssl_jax.losses.barlow_twins_loss`). As in the official code each view goes through the
network on its own (BatchNorm statistics per view).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import nnx

from ssl_jax import losses
from ssl_jax.methods import network as network_lib
from ssl_jax.methods.state import TrainState, embedding_std, make_views, step_key
from ssl_jax.optim import LrGroup

LOSS_SCOPES = ("barlow_twins_terms",)


@dataclasses.dataclass(frozen=True)
class Hparams:
    """Barlow Twins' settings: ``config.barlow_twins.*``."""

    lambda_: float = 0.0051  # weight of the off-diagonal (redundancy) terms
    # the loss is multiplied by this (solo-learn's scale_loss; 1 in the paper's ImageNet recipe)
    scale_loss: float = 1.0
    # the lr of biases and BatchNorm parameters relative to the weights' (the paper: 0.0048 / 0.2)
    bias_lr_scale: float = 1.0

    def validate(self) -> None:
        for name in ("lambda_", "scale_loss", "bias_lr_scale"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"config.barlow_twins.{name}={value!r} is invalid: must be > 0.")


def init_state(config: Any, key: jax.Array) -> TrainState:
    """A fresh Barlow Twins state from the config and a PRNG key."""
    hp = Hparams(**config.barlow_twins)
    group = None if hp.bias_lr_scale == 1.0 else LrGroup(None, scale=hp.bias_lr_scale)
    return network_lib.init_network_state(config, key, hp, group)


def train_step(
    state: TrainState, batch: dict, key: jax.Array
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One Barlow Twins update.

    Args:
      state: the current state.
      batch: ``{'image': uint8 [B, H, W, C], ...}``, the global batch (sharded or not).
      key: the run's PRNG key; the step number is folded in, so pass the same key every step.

    Returns:
      The new state and scalar metrics: loss (times ``scale_loss``), its unweighted terms
      on_diagonal and off_diagonal (:func:`ssl_jax.losses.barlow_twins_terms`), embed_std,
      learning_rate, l2_grads, l2_params, l2_updates.
    """
    hp = state.hparams
    x1, x2 = make_views(batch, step_key(key, state.step), state.settings)

    def loss_fn(params):
        network = state.module(params, copy=True)
        _, z1 = network(x1)
        _, z2 = network(x2)
        terms = losses.barlow_twins_terms(z1, z2, lambda_=hp.lambda_)
        loss = hp.scale_loss * terms["loss"]
        return loss, (nnx.state(network, nnx.BatchStat), z1, terms)

    (loss, (batch_stats, z1, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params
    )
    new_state, metrics = state.apply_gradients(grads, batch_stats=batch_stats)
    metrics.update(
        loss=loss,
        on_diagonal=terms["on_diagonal"],
        off_diagonal=terms["off_diagonal"],
        embed_std=embedding_std(z1),
        learning_rate=state.schedule(state.step),
    )
    return new_state, metrics


encoder_of = network_lib.encoder_of
