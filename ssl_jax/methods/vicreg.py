"""VICReg (Bardes, Ponce & LeCun 2022, "VICReg: Variance-Invariance-Covariance Regularization
for Self-Supervised Learning", arXiv:2105.04906).

One network (encoder + a wide "expander", the projector); the two views' embeddings are pulled
together (invariance) while each dimension keeps a standard deviation of at least 1 over the
GLOBAL batch (variance) and the dimensions are decorrelated (covariance):
:func:`ssl_jax.losses.vicreg_loss`. Each view goes through the network on its own, as in the
official code. The three unweighted terms are logged beside the loss.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import nnx

from ssl_jax import losses
from ssl_jax.methods import network as network_lib
from ssl_jax.methods.state import TrainState, embedding_std, make_views, step_key

LOSS_SCOPES = ("vicreg_terms",)


@dataclasses.dataclass(frozen=True)
class Hparams:
    """VICReg's settings: ``config.vicreg.*`` (the paper's coefficients)."""

    sim_coeff: float = 25.0  # weight of the invariance term (mean squared distance of the views)
    std_coeff: float = 25.0  # weight of the variance hinge (std >= 1 per dimension)
    cov_coeff: float = 1.0  # weight of the covariance term (off-diagonal squares / D)

    def validate(self) -> None:
        for name in ("sim_coeff", "std_coeff", "cov_coeff"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"config.vicreg.{name}={value!r} is invalid: must be >= 0.")


def init_state(config: Any, key: jax.Array) -> TrainState:
    """A fresh VICReg state from the config and a PRNG key."""
    return network_lib.init_network_state(config, key, Hparams(**config.vicreg))


def train_step(
    state: TrainState, batch: dict, key: jax.Array
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One VICReg update.

    Args:
      state: the current state.
      batch: ``{'image': uint8 [B, H, W, C], ...}``, the global batch (sharded or not).
      key: the run's PRNG key; the step number is folded in, so pass the same key every step.

    Returns:
      The new state and scalar metrics: loss, invariance, variance, covariance (unweighted),
      embed_std, learning_rate, l2_grads, l2_params, l2_updates.
    """
    hp = state.hparams
    x1, x2 = make_views(batch, step_key(key, state.step), state.settings)

    def loss_fn(params):
        network = state.module(params, copy=True)
        _, z1 = network(x1)
        _, z2 = network(x2)
        terms = losses.vicreg_terms(
            z1, z2, sim_coeff=hp.sim_coeff, std_coeff=hp.std_coeff, cov_coeff=hp.cov_coeff
        )
        return terms["loss"], (nnx.state(network, nnx.BatchStat), z1, terms)

    (_, (batch_stats, z1, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state, metrics = state.apply_gradients(grads, batch_stats=batch_stats)
    metrics.update(terms)
    metrics.update(embed_std=embedding_std(z1), learning_rate=state.schedule(state.step))
    return new_state, metrics


encoder_of = network_lib.encoder_of
