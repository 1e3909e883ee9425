"""SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
Representations", arXiv:2002.05709).

Two augmented views of each image go through the encoder and projector as ONE batch of 2N (so
BatchNorm statistics span both views, as the reference implementation does), and NT-Xent is taken
over the global batch: under ``jax.jit`` on a mesh-sharded batch the 2N-2 negatives of every anchor
come from all devices.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ssl_jax import losses
from ssl_jax.methods import network as network_lib
from ssl_jax.methods.state import (
    TrainState,
    embedding_std,
    local_crops_of,
    make_views,
    step_key,
)

# Named scopes of the losses in the step (profiling: where the embeddings may be gathered).
LOSS_SCOPES = ("nt_xent", "contrastive_accuracy")
MULTI_CROP = True  # config.multi_crop's local crops are extra positives (supcon_loss by image)


@dataclasses.dataclass(frozen=True)
class Hparams:
    """SimCLR's settings: ``config.simclr.*``."""

    temperature: float = 0.2  # NT-Xent temperature
    # stream NT-Xent over candidate blocks of this many columns (exact; memory per device
    # O(rows x block), not O(rows x 2N)); None: the direct [2N, 2N] formula. Set it for 2N > ~16k.
    loss_block_size: int | None = None

    def validate(self) -> None:
        if not self.temperature > 0:
            raise ValueError(
                f"config.simclr.temperature={self.temperature!r} is invalid: must be > 0."
            )
        if self.loss_block_size is not None and self.loss_block_size < 1:
            raise ValueError(
                f"config.simclr.loss_block_size={self.loss_block_size!r} is invalid: must be "
                "None (direct) or >= 1."
            )


def init_state(config: Any, key: jax.Array) -> TrainState:
    """A fresh SimCLR state from the config and a PRNG key."""
    return network_lib.init_network_state(config, key, Hparams(**config.simclr))


def _multi_crop_loss(z: jax.Array, z_local: jax.Array, n: int, temperature: float) -> jax.Array:
    """NT-Xent over all crops with every crop of an image a positive of its others:
    :func:`ssl_jax.losses.supcon_loss` with the image index as the label (equal to nt_xent for
    two crops). ``z``: the global crops' rows ``[2B, D]``, ``z_local``: ``[B * V, D]``."""
    v = z_local.shape[0] // n
    labels = jnp.concatenate([jnp.repeat(jnp.arange(n), 2), jnp.repeat(jnp.arange(n), v)])
    return losses.supcon_loss(jnp.concatenate([z, z_local]), labels, temperature=temperature)


def train_step(
    state: TrainState, batch: dict, key: jax.Array
) -> tuple[TrainState, dict[str, jax.Array]]:
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
    k = step_key(key, state.step)
    x1, x2 = make_views(batch, k, state.settings)
    local = local_crops_of(batch, k, state.settings)  # multi-crop: [B * V, L, L, C] or None
    n = x1.shape[0]
    # The two views of an image sit side by side ([x1_0, x2_0, x1_1, ...]): each device keeps the
    # views of its own images. Concatenating [x1; x2] instead makes XLA move half of every
    # device's rows to another device (all-to-all / collective-permute) under data parallelism.
    x = jnp.stack([x1, x2], axis=1).reshape(2 * n, *x1.shape[1:])

    def loss_fn(params):
        network = state.module(params, copy=True)
        _, z = network(x)  # BatchNorm sees the same 2B rows as with [x1; x2]
        z = z.reshape(n, 2, -1)
        z1, z2 = z[:, 0], z[:, 1]
        if local is None:
            loss = losses.nt_xent(z1, z2, temperature=hp.temperature, block_size=hp.loss_block_size)
        else:  # every crop of an image is a positive of the others (SwAV's multi-crop SimCLR)
            loss = _multi_crop_loss(z.reshape(2 * n, -1), network(local)[1], n, hp.temperature)
        aux = (nnx.state(network, nnx.BatchStat), z1, z2)
        return loss, aux

    (loss, (batch_stats, z1, z2)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state, metrics = state.apply_gradients(grads, batch_stats=batch_stats)
    metrics.update(
        loss=loss,
        contrastive_acc=losses.contrastive_accuracy(z1, z2, block_size=hp.loss_block_size),
        embed_std=embedding_std(z1),
        learning_rate=state.schedule(state.step),
    )
    return new_state, metrics


encoder_of = network_lib.encoder_of
