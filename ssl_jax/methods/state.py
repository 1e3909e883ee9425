"""The train state every method shares, and the step settings every train step reads.

A method's train step is a pure function ``train_step(state, batch, key) -> (state, metrics)``
over one :class:`TrainState`: its array fields (step, parameters, other variable collections,
optimizer state, an optional EMA target, method extras) are the pytree that is jitted, donated,
sharded and checkpointed; its static fields (the NNX graph definition, the optax transformation,
the schedule, the settings) make the step a pure function, as Flax's ``TrainState`` carries
``apply_fn`` and ``tx``.

Checkpoints keep the layout of the first ssl_jax releases (``step``, ``params``,
``batch_stats``, ``opt_state``, and for an EMA target ``target_params`` /
``target_batch_stats``): :meth:`TrainState.checkpoint_tree` is what is saved, so runs written
before this type existed still restore.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from ssl_jax import augment
from ssl_jax.methods.ema import EMATarget


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """What every train step needs besides its method's hyper-parameters (hashable: part of
    the jit cache key)."""

    view1: augment.ViewConfig
    view2: augment.ViewConfig
    compute_dtype: Any
    total_steps: int
    local_view: augment.ViewConfig | None = None  # multi-crop: the local crops' view ...
    local_crops: int = 0  # ... and how many per image (0: none)


@struct.dataclass
class TrainState:
    """Arrays (the checkpointed pytree) and the static pieces of one method's training.

    ``params`` and ``batch_stats`` are the NNX states of the trained module split as
    ``nnx.split(module, nnx.Param, nnx.BatchStat)``; ``graphdef`` merges them back. ``target``
    is an EMA copy of part of the module (BYOL, MoCo v3, DINO) or None; ``extra`` holds any other
    arrays a method carries (a centre, a queue), saved under their own names.
    """

    step: jax.Array  # int32 scalar: number of updates applied
    params: nnx.State
    batch_stats: nnx.State  # BatchNorm running averages (an empty state when none)
    opt_state: optax.OptState
    target: EMATarget | None
    extra: dict[str, Any]
    graphdef: nnx.GraphDef = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    schedule: Any = struct.field(pytree_node=False)
    settings: StepSettings | None = struct.field(pytree_node=False)
    hparams: Any = struct.field(pytree_node=False)  # the method's own (hashable)

    @classmethod
    def create(
        cls,
        module: nnx.Module,
        *,
        tx: optax.GradientTransformation,
        schedule: Any = None,
        settings: StepSettings | None = None,
        hparams: Any = None,
        target: EMATarget | None = None,
        extra: dict[str, Any] | None = None,
    ) -> TrainState:
        """A step-0 state training every parameter of ``module`` (in train mode)."""
        graphdef, params, batch_stats = nnx.split(module, nnx.Param, nnx.BatchStat)
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=batch_stats,
            opt_state=tx.init(params),
            target=target,
            extra=dict(extra or {}),
            graphdef=graphdef,
            tx=tx,
            schedule=schedule,
            settings=settings,
            hparams=hparams,
        )

    def module(self, params: Any = None, *, copy: bool = False) -> nnx.Module:
        """The trained module with ``params`` (default: the state's) and the statistics."""
        params = self.params if params is None else params
        return nnx.merge(self.graphdef, params, self.batch_stats, copy=copy)

    def apply_gradients(
        self, grads: Any, *, scale_updates: Any = None, **changes: Any
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        """One optimizer update, the step advanced, ``changes`` (e.g. ``batch_stats=``) set.

        ``scale_updates(updates) -> updates`` rescales the optimizer's output before it is
        applied (fine-tuning's per-group learning rates). Returns the new state and the l2
        metrics ``l2_grads``, ``l2_params``, ``l2_updates``. (The update's ops carry the name
        scope ``optimizer_update``, which profiles read.)
        """
        with jax.named_scope("optimizer_update"):
            updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
            if scale_updates is not None:
                updates = scale_updates(updates)
            params = optax.apply_updates(self.params, updates)
        metrics = {
            "l2_grads": optax.tree.norm(grads),
            "l2_params": optax.tree.norm(params),
            "l2_updates": optax.tree.norm(updates),
        }
        new = self.replace(step=self.step + 1, params=params, opt_state=opt_state, **changes)
        return new, metrics

    def checkpoint_tree(self) -> dict[str, Any]:
        """The arrays as saved: ``{'step', 'params', 'batch_stats', 'opt_state'}``, plus
        ``target_params`` / ``target_batch_stats`` with a target, plus ``extra``'s entries."""
        tree = dict(
            step=self.step,
            params=self.params,
            batch_stats=self.batch_stats,
            opt_state=self.opt_state,
        )
        if self.target is not None:
            tree.update(
                target_params=self.target.params, target_batch_stats=self.target.batch_stats
            )
        tree.update(self.extra)
        return tree

    def with_checkpoint_tree(self, tree: dict[str, Any]) -> TrainState:
        """This state with the arrays of a :meth:`checkpoint_tree` (a restored checkpoint)."""
        target = self.target
        if target is not None:
            target = target.replace(
                params=tree["target_params"], batch_stats=tree["target_batch_stats"]
            )
        return self.replace(
            step=tree["step"],
            params=tree["params"],
            batch_stats=tree["batch_stats"],
            opt_state=tree["opt_state"],
            target=target,
            extra={name: tree[name] for name in self.extra},
        )


def zero_named(tree: Any, name: str, when: jax.Array | bool = True) -> Any:
    """``tree`` (gradients or updates of a network) with every leaf under a node called
    ``name`` zeroed ``when`` true: a frozen part gets no gradient into the optimizer's moments
    and no update, weight decay included (as PyTorch's optimizers skip a parameter without a
    gradient). DINO freezes its head's ``last_layer`` early on, MoCo v3 its ViT's
    ``patch_embed``."""

    if when is False:
        return tree

    def zero(path: tuple, x: jax.Array) -> jax.Array:
        if name not in {getattr(k, "key", None) for k in path}:
            return x
        return jnp.zeros_like(x) if when is True else jnp.where(when, 0.0, x).astype(x.dtype)

    return jax.tree_util.tree_map_with_path(zero, tree)


def step_key(key: jax.Array, step: jax.Array) -> jax.Array:
    """Fresh randomness for every step from one run key: never reuse a key."""
    return jax.random.fold_in(key, step)


def make_views(batch: dict, key: jax.Array, settings: StepSettings) -> tuple[jax.Array, jax.Array]:
    """Two augmented views of the uint8 batch ``{'image': [B, H, W, C]}``, made on the device
    and outside the gradient. (Its ops carry the name scope ``augmentation``, for profiles.)

    A batch that carries its views already (``{'view1': x1, 'view2': x2}``, in the compute
    dtype) is used as it is: the seam through which benchmarks time a step without augmentation
    (the choice is made when the step is traced: the batch's keys are static)."""
    if "view1" in batch:
        return batch["view1"], batch["view2"]
    with jax.named_scope("augmentation"):
        x1, x2 = augment.two_views(
            batch["image"], key, settings.view1, settings.view2, dtype=settings.compute_dtype
        )
    return jax.lax.stop_gradient(x1), jax.lax.stop_gradient(x2)


def make_local_views(batch: dict, key: jax.Array, settings: StepSettings) -> jax.Array:
    """The multi-crop local views of the uint8 batch: ``[local_crops, B, L, L, C]`` in the compute
    dtype, outside the gradient (:func:`ssl_jax.augment.local_views`; the key is the step's, as
    for :func:`make_views`, which draws other numbers from it)."""
    if not settings.local_crops:
        raise ValueError("make_local_views needs config.multi_crop.local_crops > 0.")
    with jax.named_scope("augmentation"):
        x = augment.local_views(
            batch["image"],
            jax.random.fold_in(key, 1),
            settings.local_view,
            settings.local_crops,
            dtype=settings.compute_dtype,
        )
    return jax.lax.stop_gradient(x)


def crops_as_rows(x: jax.Array) -> jax.Array:
    """``[V, B, ...] -> [B * V, ...]`` with the crops of an image side by side (under data
    parallelism each device keeps its own images' rows)."""
    return jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:])


def rows_as_crops(y: jax.Array, v: int) -> jax.Array:
    """The inverse for outputs: ``[B * V, D] -> [V, B, D]``."""
    return jnp.swapaxes(y.reshape(-1, v, y.shape[-1]), 0, 1)


def local_crops_of(batch: dict, key: jax.Array, settings: StepSettings) -> jax.Array | None:
    """The local crops as rows, ``[B * local_crops, L, L, C]`` (:func:`make_local_views`), or None
    without multi-crop."""
    if not settings.local_crops:
        return None
    return crops_as_rows(make_local_views(batch, key, settings))


def embedding_std(z: jax.Array) -> jax.Array:
    """Mean over dimensions of the batch std of L2-normalised embeddings z: [B, D].

    A collapse detector (SimSiam, Chen & He 2021, arXiv:2011.10566, sec. 4.1): about 1/sqrt(D)
    for well-spread embeddings, 0 when every image maps to the same point.
    """
    z = z.astype(jnp.float32)
    z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    return jnp.mean(jnp.std(z, axis=0))
