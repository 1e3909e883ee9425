"""The network a method trains, built from ``config.model``: encoder + projection head, the
compute dtype, the weight-decay policy and the optimizer for the run.

The encoder is the one ``config.model.encoder`` names, built from its own settings block
(``config.model.<block>``, see :mod:`ssl_jax.models`); nothing here knows one encoder from another.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ssl_jax import augment, models
from ssl_jax.methods.ema import EMATarget
from ssl_jax.methods.state import StepSettings, TrainState
from ssl_jax.optim import LrGroup, make_optimizer

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class SSLNetwork(nnx.Module):
    """Encoder followed by a projection head.

    ``__call__(x)`` with x: [B, H, W, C] returns ``(h, z)``: features h: [B, F] (what downstream
    tasks use) and projections z: [B, P] (what the loss sees).

    ``head_cells > 1``: h is ``head_cells`` cells of ``F / head_cells`` channels each (a convnet
    keeping a G x G map), and the head averages them before its first layer, so the loss sees a
    globally pooled feature while downstream tasks keep where things are. Averaging is a fixed
    linear map, so this is the same SimCLR/BYOL objective with a head whose first layer pools:
    h stays the representation *before* the projection head, as in SimCLR.
    """

    def __init__(self, encoder: nnx.Module, projector: nnx.Module, head_cells: int = 1):
        self.encoder = encoder
        self.projector = projector
        self.head_cells = head_cells

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = self.encoder(x)
        p = h if self.head_cells == 1 else h.reshape(h.shape[0], self.head_cells, -1).mean(1)
        return h, self.projector(p)


class PredictorNetwork(nnx.Module):
    """An SSLNetwork (encoder + projector) followed by a predictor: the online network of BYOL,
    SimSiam's network and MoCo v3's query network. ``__call__(x)`` with x: [B, H, W, C]
    returns ``(z, p)``: the projection [B, P] and the prediction [B, P]."""

    def __init__(self, network: SSLNetwork, predictor: nnx.Module):
        self.network = network
        self.predictor = predictor

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        _, z = self.network(x)
        return z, self.predictor(z)


def compute_dtype(config: Any) -> Any:
    """The jnp dtype named by ``config.model.compute_dtype`` (parameters stay float32)."""
    name = config.model.compute_dtype
    if name not in COMPUTE_DTYPES:
        raise ValueError(
            f"config.model.compute_dtype={name!r} is not one of {sorted(COMPUTE_DTYPES)}."
        )
    return COMPUTE_DTYPES[name]


def build_encoder(config: Any, rngs: nnx.Rngs) -> nnx.Module:
    """The encoder named by ``config.model.encoder``, from its settings block."""
    return models.encoder_from_config(
        config.model,
        in_channels=int(config.image_channels),
        dtype=compute_dtype(config),
        rngs=rngs,
    )


def build_network(config: Any, rngs: nnx.Rngs) -> SSLNetwork:
    """Encoder + projector as configured (``config.model``)."""
    m = config.model
    encoder = build_encoder(config, rngs)
    head_cells = getattr(models.encoder_settings(m), "head_cells", 1)
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


def step_settings(config: Any) -> StepSettings:
    """The static settings of the train step (views, multi-crop, compute dtype, length), from
    the config."""
    crops = augment.MultiCrop(**config.multi_crop)
    view1, view2, local = crops.views(*augment.get_views(config.augment, config.image_size))
    return StepSettings(
        view1=view1,
        view2=view2,
        compute_dtype=compute_dtype(config),
        total_steps=int(config.total_steps),
        local_view=local,
        local_crops=int(crops.local_crops),
    )


def optimizer_for(
    config: Any, module: nnx.Module, group: LrGroup | None = None
) -> tuple[optax.GradientTransformation, Any]:
    """``(optimizer, schedule)`` for the run's global batch and length; weight decay and LARS
    adaptation skip what ``module``'s encoder exempts (:func:`ssl_jax.models.decay_mask`);
    ``group``: parameters at their own learning rate (:class:`ssl_jax.optim.LrGroup`)."""
    return make_optimizer(
        config,
        total_steps=int(config.total_steps),
        global_batch_size=int(config.batch_size),
        decay_mask=models.decay_mask_for(module),
        group=group,
    )


def init_network_state(
    config: Any, key: jax.Array, hparams: Any, group: LrGroup | None = None
) -> TrainState:
    """A step-0 TrainState training an SSLNetwork (encoder + projector, in train mode) with the
    run's optimizer (``group``: parameters at their own lr) and step settings: the whole state
    of SimCLR, Barlow Twins, VICReg and SupCon."""
    network = build_network(config, nnx.Rngs(params=key))
    network.train()
    tx, schedule = optimizer_for(config, network, group)
    return TrainState.create(
        network, tx=tx, schedule=schedule, settings=step_settings(config), hparams=hparams
    )


def init_predictor_state(
    config: Any,
    key: jax.Array,
    hparams: Any,
    *,
    last_bn: bool = False,
    momentum_target: bool = False,
    group: LrGroup | None = None,
) -> TrainState:
    """A step-0 TrainState training a PredictorNetwork: the SSLNetwork and a 2-layer BN predictor
    (``projector_dim -> predictor_hidden -> projector_dim``, BatchNorm after its last layer when
    ``last_bn``), in train mode; with ``momentum_target`` an EMA copy of the SSLNetwork as the
    target. The whole state of BYOL, SimSiam and MoCo v3."""
    rngs = nnx.Rngs(params=key)
    network = build_network(config, rngs)
    m = config.model
    predictor = models.ProjectionMLP(
        m.projector_dim,
        m.predictor_hidden,
        m.projector_dim,
        num_layers=2,
        last_bn=last_bn,
        dtype=compute_dtype(config),
        rngs=rngs,
    )
    module = PredictorNetwork(network, predictor)
    module.train()
    tx, schedule = optimizer_for(config, module, group)
    return TrainState.create(
        module,
        tx=tx,
        schedule=schedule,
        settings=step_settings(config),
        hparams=hparams,
        target=EMATarget.of(network) if momentum_target else None,
    )


def encoder_of(state: TrainState) -> nnx.Module:
    """The trained encoder in eval mode (BatchNorm uses running averages): that of the state's
    SSLNetwork, or of the SSLNetwork inside its PredictorNetwork (BYOL's online network, MoCo
    v3's query network: what those methods evaluate). A method's ``encoder_of``."""
    module = state.module()
    module.eval()
    return module.network.encoder if isinstance(module, PredictorNetwork) else module.encoder
