"""SupCon (Khosla et al. 2020, "Supervised Contrastive Learning", arXiv:2004.11362).

SimCLR's network and views, with the labels of the batch: every other view of the same class is
a positive, not only the other view of the same image (:func:`ssl_jax.losses.supcon_loss`,
``L^sup_out``). The only method here that trains on labels: it declares ``BATCH_KEYS`` with
``'label'``, so the train loop passes the batch's labels into the step, and a dataset without
labels stops the run before it starts with a one-line error. As in SimCLR the two views go
through the network as one batch of 2N rows, the views of an image side by side, and the loss is
over the GLOBAL batch (under ``jax.jit`` on a mesh-sharded batch, positives and negatives come
from every device).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ssl_jax import losses
from ssl_jax.methods import network as network_lib
from ssl_jax.methods.state import TrainState, embedding_std, make_views, step_key

LOSS_SCOPES = ("supcon_loss",)
# The batch entries the step reads: the train loop ships these to the device and checks that the
# dataset has labels.
BATCH_KEYS = ("image", "label")


@dataclasses.dataclass(frozen=True)
class Hparams:
    """SupCon's settings: ``config.supcon.*``."""

    temperature: float = 0.1  # the paper's ImageNet value

    def validate(self) -> None:
        if not self.temperature > 0:
            raise ValueError(
                f"config.supcon.temperature={self.temperature!r} is invalid: must be > 0."
            )


def init_state(config: Any, key: jax.Array) -> TrainState:
    """A fresh SupCon state (encoder + projector) from the config and a PRNG key."""
    return network_lib.init_network_state(config, key, Hparams(**config.supcon))


def train_step(
    state: TrainState, batch: dict, key: jax.Array
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SupCon update.

    Args:
      state: the current state.
      batch: ``{'image': uint8 [B, H, W, C], 'label': int [B], ...}``, the global batch
        (sharded or not); every label a class index (the train loop checks this).
      key: the run's PRNG key; the step number is folded in, so pass the same key every step.

    Returns:
      The new state and scalar metrics: loss, positives (the mean number of positives per
      anchor), embed_std, learning_rate, l2_grads, l2_params, l2_updates.
    """
    x1, x2 = make_views(batch, step_key(key, state.step), state.settings)
    n = x1.shape[0]
    x = jnp.stack([x1, x2], axis=1).reshape(2 * n, *x1.shape[1:])  # views of an image together
    labels = jnp.repeat(batch["label"], 2)  # [2B], in the rows' order

    def loss_fn(params):
        network = state.module(params, copy=True)
        _, z = network(x)
        loss = losses.supcon_loss(z, labels, temperature=state.hparams.temperature)
        return loss, (nnx.state(network, nnx.BatchStat), z)

    (loss, (batch_stats, z)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state, metrics = state.apply_gradients(grads, batch_stats=batch_stats)
    same_class = labels[:, None] == labels[None, :]
    metrics.update(
        loss=loss,
        positives=same_class.sum(dtype=jnp.float32) / labels.shape[0] - 1.0,
        embed_std=embedding_std(z),
        learning_rate=state.schedule(state.step),
    )
    return new_state, metrics


encoder_of = network_lib.encoder_of
