"""DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers",
arXiv:2104.14294): self-distillation with no labels.

A student (encoder + :class:`ssl_jax.models.DINOHead`) sees the two global crops and the
multi-crop local crops (``config.multi_crop``); its EMA teacher sees the global crops only. The
student's softmax over ``K`` prototypes is pulled towards the teacher's centred, sharpened one
on every pair of different crops (:func:`ssl_jax.losses.dino_loss`); the centre is an EMA of the
teacher's mean output over the GLOBAL batch (:func:`ssl_jax.losses.dino_center`). As the
official code: teacher momentum 0.996 -> 1 on a cosine, teacher temperature warm-up, the head's
last layer frozen during the first steps, per-tensor gradient-norm clipping, and (in the recipes)
AdamW with weight decay on a cosine 0.04 -> 0.4 (``config.weight_decay_end``).

Metrics: the loss, the teacher's entropy per image (``teacher_entropy``; ``log K`` means a
uniform collapse, 0 a sharp teacher), the entropy of its mean over the batch
(``teacher_batch_entropy``: near 0 as well in a collapse onto one prototype, high while the
images spread over many) and the KL term (``kl = loss - teacher_entropy``), the teacher
temperature, the momentum, the collapse detector ``embed_std`` of the student's features. The
evaluated encoder is the teacher's, as in the paper.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ssl_jax import losses, models
from ssl_jax.methods import network as network_lib
from ssl_jax.methods.ema import EMATarget, cosine_tau
from ssl_jax.methods.state import (
    TrainState,
    crops_as_rows,
    embedding_std,
    make_local_views,
    make_views,
    rows_as_crops,
    step_key,
    zero_named,
)

LOSS_SCOPES = ("dino_loss",)
MULTI_CROP = True  # the step uses config.multi_crop's local crops


@dataclasses.dataclass(frozen=True)
class Hparams:
    """DINO's settings: ``config.dino.*`` (defaults: the official main_dino.py's)."""

    out_dim: int = 65536  # K: prototypes of the head's last layer
    head_hidden: int = 2048  # the head MLP's hidden width
    head_bottleneck: int = 256  # the head MLP's output, L2-normalised
    head_layers: int = 3  # Linear layers in the head MLP
    norm_last_layer: bool = True  # fix the last layer's weight-norm scale at 1
    head_batch_norm: bool = False  # BatchNorm in the head MLP (the official --use_bn_in_head)
    student_temperature: float = 0.1
    teacher_temperature: float = 0.04  # after the warm-up
    warmup_teacher_temperature: float = 0.04  # at step 0, linear to teacher_temperature ...
    warmup_teacher_steps: int = 0  # ... over this many steps (the paper: 30 epochs)
    center_momentum: float = 0.9
    base_momentum: float = 0.996  # teacher EMA rate at step 0 (rises to 1 on a cosine)
    freeze_last_layer_steps: int = 0  # the head's last layer is not updated before (1 epoch)
    clip_grad: float | None = 3.0  # per-tensor gradient-norm clip (None: off)

    def validate(self) -> None:
        def check(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                value = getattr(self, name)
                raise ValueError(f"config.dino.{name}={value!r} is invalid: {allowed}.")

        for name in ("out_dim", "head_hidden", "head_bottleneck", "head_layers"):
            check(getattr(self, name) >= 1, name, "must be >= 1")
        for name in ("student_temperature", "teacher_temperature", "warmup_teacher_temperature"):
            check(getattr(self, name) > 0, name, "must be > 0")
        for name in ("center_momentum", "base_momentum"):
            check(0 <= getattr(self, name) <= 1, name, "must be in [0, 1]")
        for name in ("warmup_teacher_steps", "freeze_last_layer_steps"):
            check(getattr(self, name) >= 0, name, "must be >= 0")
        check(self.clip_grad is None or self.clip_grad > 0, "clip_grad", "must be None or > 0")


def init_state(config: Any, key: jax.Array) -> TrainState:
    """A fresh DINO state: the student (encoder + DINO head), its teacher (an exact copy) and
    a zero centre (``extra['center']``, ``[1, K]``)."""
    hp = Hparams(**config.dino)
    rngs = nnx.Rngs(params=key)
    encoder = network_lib.build_encoder(config, rngs)
    cells = getattr(models.encoder_settings(config.model), "head_cells", 1)
    head = models.DINOHead(
        encoder.num_features // cells,
        hp.out_dim,
        hidden_features=hp.head_hidden,
        bottleneck=hp.head_bottleneck,
        num_layers=hp.head_layers,
        norm_last_layer=hp.norm_last_layer,
        use_bn=hp.head_batch_norm,
        dtype=network_lib.compute_dtype(config),
        rngs=rngs,
    )
    student = network_lib.SSLNetwork(encoder, head, cells)
    student.train()
    tx, schedule = network_lib.optimizer_for(config, student)
    return TrainState.create(
        student,
        tx=tx,
        schedule=schedule,
        settings=network_lib.step_settings(config),
        hparams=hp,
        target=EMATarget.of(student),
        extra={"center": jnp.zeros((1, hp.out_dim), jnp.float32)},
    )


def teacher_temperature(step: jax.Array, hp: Hparams) -> jax.Array:
    """The warm-up: linear from ``warmup_teacher_temperature`` to ``teacher_temperature`` over
    ``warmup_teacher_steps``, then constant."""
    if not hp.warmup_teacher_steps:
        return jnp.asarray(hp.teacher_temperature, jnp.float32)
    progress = jnp.minimum(step.astype(jnp.float32) / hp.warmup_teacher_steps, 1.0)
    return hp.warmup_teacher_temperature + progress * (
        hp.teacher_temperature - hp.warmup_teacher_temperature
    )


def clip_per_tensor(grads: Any, max_norm: float | None) -> Any:
    """Each tensor's gradient scaled to an L2 norm of at most ``max_norm`` (the official
    ``clip_gradients``: ``g * min(1, max_norm / (||g|| + 1e-6))``); None: unchanged."""
    if max_norm is None:
        return grads

    def clip(g: jax.Array) -> jax.Array:
        return g * jnp.minimum(1.0, max_norm / (jnp.linalg.norm(g) + 1e-6))

    return jax.tree.map(clip, grads)


def train_step(
    state: TrainState, batch: dict, key: jax.Array
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One DINO update: the student's gradient step, then the teacher's EMA and the centre.

    Args:
      state: the current state.
      batch: ``{'image': uint8 [B, H, W, C], ...}``, the global batch (sharded or not).
      key: the run's PRNG key; the step number is folded in, so pass the same key every step.

    Returns:
      The new state and scalar metrics: loss, teacher_entropy, teacher_batch_entropy, kl,
      teacher_temperature, momentum, embed_std, learning_rate, l2_grads, l2_params, l2_updates.
    """
    hp, settings = state.hparams, state.settings
    k = step_key(key, state.step)
    globals_ = crops_as_rows(jnp.stack(make_views(batch, k, settings)))  # [2B, S, S, C]
    locals_ = make_local_views(batch, k, settings) if settings.local_crops else None

    teacher = state.target.module()
    with jax.named_scope("target_forward"):
        teacher_logits = rows_as_crops(teacher(globals_)[1], 2)  # [2, B, K]
    teacher_stats = nnx.state(teacher, nnx.BatchStat)
    temperature = teacher_temperature(state.step, hp)

    def loss_fn(params):
        student = state.module(params, copy=True)
        h, logits = student(globals_)
        crops = [rows_as_crops(logits, 2)]
        if locals_ is not None:
            crops.append(rows_as_crops(student(crops_as_rows(locals_))[1], locals_.shape[0]))
        loss = losses.dino_loss(
            jnp.concatenate(crops),
            teacher_logits,
            state.extra["center"],
            student_temperature=hp.student_temperature,
            teacher_temperature=temperature,
        )
        return loss, (nnx.state(student, nnx.BatchStat), h)

    (loss, (batch_stats, h)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    frozen = state.step < hp.freeze_last_layer_steps
    grads = zero_named(clip_per_tensor(grads, hp.clip_grad), "last_layer", frozen)
    new_state, metrics = state.apply_gradients(
        grads, scale_updates=lambda u: zero_named(u, "last_layer", frozen), batch_stats=batch_stats
    )
    momentum = cosine_tau(state.step, hp.base_momentum, settings.total_steps)
    target = state.target.update(new_state.params, momentum, teacher_stats)
    center = losses.dino_center(state.extra["center"], teacher_logits, momentum=hp.center_momentum)
    p = jax.nn.softmax((teacher_logits - state.extra["center"]) / temperature, axis=-1)
    entropy = jnp.mean(jnp.sum(jax.scipy.special.entr(p), axis=-1))
    marginal = jnp.sum(jax.scipy.special.entr(jnp.mean(p, axis=(0, 1))))
    metrics.update(
        loss=loss,
        teacher_entropy=entropy,
        teacher_batch_entropy=marginal,
        kl=loss - entropy,
        teacher_temperature=temperature,
        momentum=momentum,
        embed_std=embedding_std(h),
        learning_rate=state.schedule(state.step),
    )
    return new_state.replace(target=target, extra={"center": center}), metrics


def encoder_of(state: TrainState) -> nnx.Module:
    """The TEACHER's encoder in eval mode: what DINO evaluates (Caron et al. 2021, sec. 3.1)."""
    teacher = state.target.module()
    teacher.eval()
    return teacher.encoder
