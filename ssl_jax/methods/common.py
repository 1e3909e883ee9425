"""Pieces every method's train step shares: the network, the views, the optimizer update, metrics.

A method's state is a ``flax.struct`` dataclass whose array fields (step, params, batch statistics,
optimizer state, ...) are the pytree that is jitted, donated, sharded and checkpointed, and whose
static fields (the NNX graph definition, the optax transformation, the hyper-parameters) make the
train step a pure function of ``(state, batch, key)``, as Flax's ``TrainState`` carries
``apply_fn`` and ``tx``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ssl_jax import augment, models
from ssl_jax.optim import make_optimizer

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class StepHParams:
    """Static hyper-parameters of a train step (hashable: part of the jit cache key)."""

    view1: augment.ViewConfig
    view2: augment.ViewConfig
    compute_dtype: Any
    total_steps: int
    temperature: float = 0.1  # SimCLR
    loss_block_size: int | None = None  # SimCLR: streamed NT-Xent column block (None: direct)
    base_tau: float = 0.996  # BYOL


class SSLNetwork(nnx.Module):
    """Encoder followed by a projection head.

    ``__call__(x)`` with x: [B, H, W, C] returns ``(h, z)``: features h: [B, F] (what downstream
    tasks use) and projections z: [B, P] (what the loss sees).

    ``head_cells > 1``: h is ``head_cells`` cells of ``F / head_cells`` channels each (a convnet
    with ``output_grid > 1``), and the head averages them before its first layer, so the loss
    sees a globally pooled feature while downstream tasks keep where things are. Averaging is a
    fixed linear map, so this is the same SimCLR/BYOL objective with a head whose first layer
    pools: h stays the representation *before* the projection head, as in SimCLR.
    """

    def __init__(self, encoder: nnx.Module, projector: nnx.Module, head_cells: int = 1):
        self.encoder = encoder
        self.projector = projector
        self.head_cells = head_cells

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = self.encoder(x)
        p = h if self.head_cells == 1 else h.reshape(h.shape[0], self.head_cells, -1).mean(1)
        return h, self.projector(p)


def compute_dtype(config: Any) -> Any:
    """The jnp dtype named by ``config.model.compute_dtype`` (parameters stay float32)."""
    name = config.model.compute_dtype
    if name not in COMPUTE_DTYPES:
        raise ValueError(
            f"config.model.compute_dtype={name!r} is not one of {sorted(COMPUTE_DTYPES)}."
        )
    return COMPUTE_DTYPES[name]


def build_encoder(config: Any, rngs: nnx.Rngs) -> nnx.Module:
    """The encoder named by ``config.model.encoder`` with the config's architecture options."""
    m = config.model
    kwargs: dict[str, Any] = dict(
        in_channels=config.image_channels,
        dtype=compute_dtype(config),
        conv_impl=m.conv_impl,
        rngs=rngs,
    )
    if m.encoder.startswith("resnet"):
        kwargs.update(stem=m.stem, width=m.width)
    elif m.encoder == "convnet":
        features = tuple(m.convnet_features)
        kwargs.update(
            features=features,
            strides=(1,) + (2,) * (len(features) - 1),
            output_grid=m.convnet_grid,
        )
    return models.get_encoder(m.encoder, **kwargs)


def build_network(config: Any, rngs: nnx.Rngs) -> SSLNetwork:
    """Encoder + projector as configured (``config.model``)."""
    m = config.model
    encoder = build_encoder(config, rngs)
    head_cells = 1
    if m.head_pools and m.encoder == "convnet":
        head_cells = int(m.convnet_grid) ** 2
    projector = models.ProjectionMLP(
        encoder.num_features // head_cells,
        m.projector_hidden,
        m.projector_dim,
        num_layers=m.projector_layers,
        last_bn=m.projector_last_bn,
        dtype=compute_dtype(config),
        rngs=rngs,
    )
    return SSLNetwork(encoder, projector, head_cells)


def step_hparams(config: Any) -> StepHParams:
    """The static hyper-parameters of the train step, from the config."""
    view1, view2 = augment.get_views(config.augment, config.image_size)
    return StepHParams(
        view1=view1,
        view2=view2,
        compute_dtype=compute_dtype(config),
        total_steps=int(config.total_steps),
        temperature=float(config.temperature),
        loss_block_size=config.loss_block_size,
        base_tau=float(config.base_tau),
    )


def optimizer_for(config: Any):
    """``(optimizer, schedule)`` for the config's global batch and number of steps."""
    return make_optimizer(
        config, total_steps=int(config.total_steps), global_batch_size=int(config.batch_size)
    )


def make_views(batch: dict, key: jax.Array, hp: StepHParams) -> tuple[jax.Array, jax.Array]:
    """Two augmented views of the uint8 batch, made on the device and outside the gradient.
    (Its ops carry the name scope ``augmentation`` in the compiled HLO, for profiles.)"""
    with jax.named_scope("augmentation"):
        x1, x2 = augment.two_views(batch["image"], key, hp.view1, hp.view2, dtype=hp.compute_dtype)
    return jax.lax.stop_gradient(x1), jax.lax.stop_gradient(x2)


def apply_gradients(tx, params, opt_state, grads) -> tuple[Any, Any, dict]:
    """One optimizer update; returns new params, new optimizer state and the l2 metrics.
    (The update's ops carry the name scope ``optimizer_update``, for profiles.)"""
    with jax.named_scope("optimizer_update"):
        updates, opt_state = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
    metrics = {
        "l2_grads": optax.tree.norm(grads),
        "l2_params": optax.tree.norm(new_params),
        "l2_updates": optax.tree.norm(updates),
    }
    return new_params, opt_state, metrics


def embedding_std(z: jax.Array) -> jax.Array:
    """Mean over dimensions of the batch std of L2-normalised embeddings z: [B, D].

    A collapse detector (SimSiam, Chen & He 2021, arXiv:2011.10566, sec. 4.1): about 1/sqrt(D)
    for well-spread embeddings, 0 when every image maps to the same point.
    """
    z = z.astype(jnp.float32)
    z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    return jnp.mean(jnp.std(z, axis=0))


def step_key(key: jax.Array, step: jax.Array) -> jax.Array:
    """Fresh randomness for every step from one run key: never reuse a key."""
    return jax.random.fold_in(key, step)
