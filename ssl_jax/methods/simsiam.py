"""SimSiam (Chen & He 2021, "Exploring Simple Siamese Representation Learning",
arXiv:2011.10566).

One network (encoder + projector) and a predictor; each view's prediction is pulled towards the
other view's projection under a stop-gradient, symmetrised (:func:`ssl_jax.losses.simsiam_loss`).
No negatives, no momentum encoder: the stop-gradient alone keeps it from collapsing. As in the
official code each view goes through the network on its own (BatchNorm statistics per view).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import nnx

from ssl_jax import losses
from ssl_jax.methods import network as network_lib
from ssl_jax.methods.state import TrainState, embedding_std, make_views, step_key
from ssl_jax.optim import LrGroup, TopLevel

LOSS_SCOPES = ("simsiam_loss",)


@dataclasses.dataclass(frozen=True)
class Hparams:
    """SimSiam's settings: ``config.simsiam.*`` (the predictor's width is
    ``config.model.predictor_hidden``)."""

    # hold the predictor's lr at the peak, no decay (Chen & He 2021, sec. 4.2: it does better)
    fix_predictor_lr: bool = False

    def validate(self) -> None:
        if not isinstance(self.fix_predictor_lr, bool):
            raise ValueError(
                f"config.simsiam.fix_predictor_lr={self.fix_predictor_lr!r} is invalid: must be "
                "True or False."
            )


def init_state(config: Any, key: jax.Array) -> TrainState:
    """A fresh SimSiam state from the config and a PRNG key."""
    hp = Hparams(**config.simsiam)
    group = LrGroup(TopLevel("predictor"), constant=True) if hp.fix_predictor_lr else None
    return network_lib.init_predictor_state(config, key, hp, group=group)


def train_step(
    state: TrainState, batch: dict, key: jax.Array
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SimSiam update.

    Args:
      state: the current state.
      batch: ``{'image': uint8 [B, H, W, C], ...}``, the global batch (sharded or not).
      key: the run's PRNG key; the step number is folded in, so pass the same key every step.

    Returns:
      The new state and scalar metrics: loss, embed_std, learning_rate, l2_grads, l2_params,
      l2_updates.
    """
    x1, x2 = make_views(batch, step_key(key, state.step), state.settings)

    def loss_fn(params):
        module = state.module(params, copy=True)
        z1, p1 = module(x1)
        z2, p2 = module(x2)
        loss = losses.simsiam_loss(p1, p2, z1, z2)
        return loss, (nnx.state(module, nnx.BatchStat), z1)

    (loss, (batch_stats, z1)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state, metrics = state.apply_gradients(grads, batch_stats=batch_stats)
    metrics.update(loss=loss, embed_std=embedding_std(z1), learning_rate=state.schedule(state.step))
    return new_state, metrics


encoder_of = network_lib.encoder_of
