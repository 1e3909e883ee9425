"""MoCo v3 (Chen, Xie & He 2021, "An Empirical Study of Training Self-Supervised Vision
Transformers", arXiv:2104.02057).

A query network (encoder + projector + predictor) and a momentum network (encoder + projector,
an exponential moving average of the query's, :mod:`ssl_jax.methods.ema`, with the momentum rising
from ``base_momentum`` to 1 on a cosine). Each view's predicted query is contrasted with the
other view's key among the keys of the whole GLOBAL batch, symmetrised
(:func:`ssl_jax.losses.moco_v3_loss`, which scales each term by 2 tau as the paper does). The
heads end with BatchNorm, as the paper's: the projector when ``config.model.projector_last_bn``
(the recipes set it) and the predictor always (ProjectionMLP's last BatchNorm keeps a scale; the
paper's has no affine parameters). No queue: the batch is the dictionary. Each view
goes through the networks on its own, as in the official code.
"""

from __future__ import annotations

import dataclasses
import functools
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
    zero_named,
)

LOSS_SCOPES = ("moco_v3_loss",)
MULTI_CROP = True  # config.multi_crop: each local crop is also a query against both keys


@dataclasses.dataclass(frozen=True)
class Hparams:
    """MoCo v3's settings: ``config.moco_v3.*``."""

    temperature: float = 0.2  # of the InfoNCE logits (the paper: 0.2 for ViT, 1.0 for ResNet-50)
    base_momentum: float = 0.99  # momentum of the key network at step 0 (rises to 1)
    # The paper's ViT stability trick (sec. 4.2): the patch projection stays at its random init.
    freeze_patch_embed: bool = False

    def validate(self) -> None:
        if not self.temperature > 0:
            raise ValueError(
                f"config.moco_v3.temperature={self.temperature!r} is invalid: must be > 0."
            )
        if not 0.0 <= self.base_momentum <= 1.0:
            raise ValueError(
                f"config.moco_v3.base_momentum={self.base_momentum!r} is invalid: must be in "
                "[0, 1]."
            )


def init_state(config: Any, key: jax.Array) -> TrainState:
    """A fresh MoCo v3 state; the momentum network starts as an exact copy of the query's
    encoder + projector. The predictor ends with BatchNorm, as the paper's heads."""
    state = network_lib.init_predictor_state(
        config, key, Hparams(**config.moco_v3), last_bn=True, momentum_target=True
    )
    paths = jax.tree_util.tree_flatten_with_path(state.params)[0]
    if state.hparams.freeze_patch_embed and not any("patch_embed" in str(p) for p, _ in paths):
        raise ValueError(
            "config.moco_v3.freeze_patch_embed=True freezes a ViT's patch projection, but "
            f"config.model.encoder={config.model.encoder!r} has none: use a vit_* encoder."
        )
    return state


def train_step(
    state: TrainState, batch: dict, key: jax.Array
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One MoCo v3 update: the query network's gradient step, then the momentum update.

    Args:
      state: the current state.
      batch: ``{'image': uint8 [B, H, W, C], ...}``, the global batch (sharded or not).
      key: the run's PRNG key; the step number is folded in, so pass the same key every step.

    Returns:
      The new state and scalar metrics: loss, momentum, embed_std, learning_rate, l2_grads,
      l2_params, l2_updates.
    """
    hp = state.hparams
    k = step_key(key, state.step)
    x1, x2 = make_views(batch, k, state.settings)
    local = local_crops_of(batch, k, state.settings)  # multi-crop: [B * V, L, L, C] or None

    # The keys need no gradient: the momentum network runs first, outside the differentiation.
    target = state.target.module()
    with jax.named_scope("target_forward"):
        _, k1 = target(x1)
        _, k2 = target(x2)
    target_batch_stats = nnx.state(target, nnx.BatchStat)

    def loss_fn(params):
        query = state.module(params, copy=True)
        z1, q1 = query(x1)
        _, q2 = query(x2)
        loss = losses.moco_v3_loss(q1, q2, k1, k2, temperature=hp.temperature)
        if local is not None:  # each local query against both keys; mean over the pairs x 2
            v = local.shape[0] // q1.shape[0]
            for q in rows_as_crops(query(local)[1], v):
                loss += losses.moco_v3_loss(q, q, k1, k2, temperature=hp.temperature)
            loss /= v + 1
        return loss, (nnx.state(query, nnx.BatchStat), z1)

    (loss, (batch_stats, z1)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    freeze = functools.partial(zero_named, name="patch_embed", when=hp.freeze_patch_embed)
    new_state, metrics = state.apply_gradients(
        freeze(grads), scale_updates=freeze, batch_stats=batch_stats
    )
    momentum = cosine_tau(state.step, hp.base_momentum, state.settings.total_steps)
    target = state.target.update(new_state.params["network"], momentum, target_batch_stats)
    metrics.update(
        loss=loss,
        momentum=momentum,
        embed_std=embedding_std(z1),
        learning_rate=state.schedule(state.step),
    )
    return new_state.replace(target=target), metrics


encoder_of = network_lib.encoder_of  # the query encoder: what MoCo v3 evaluates
