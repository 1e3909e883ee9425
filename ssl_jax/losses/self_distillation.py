"""Self-distillation without labels: the student matches the teacher's centred, sharpened softmax.

:func:`dino_loss` (DINO's cross-entropy over all pairs of different crops) and
:func:`dino_center` (the teacher's centre, an EMA of its mean output over the GLOBAL batch). Both
are per-row terms averaged over the batch: under ``shard_map``/``pmap`` with ``axis_name`` only
the sums are reduced across devices; under ``jax.jit`` on a batch-sharded array (Explicit or Auto
mesh axes) XLA reduces the partial sums.
"""

from __future__ import annotations

from collections.abc import Hashable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ssl_jax.losses._batch import _as_float, _check_temperature, _global_mean, _global_size

__all__ = ["dino_center", "dino_loss"]


def _check_logits(student: jax.Array, teacher: jax.Array, center: jax.Array) -> None:
    for x, name in ((student, "student_logits"), (teacher, "teacher_logits")):
        if x.ndim != 3:
            raise ValueError(
                f"{name} must be 3-D with shape [V, N, K] (crops, batch, prototypes); got "
                f"{x.ndim}-D shape {x.shape} (stack the crops' logits: jnp.stack([...]))."
            )
    vs, vt = student.shape[0], teacher.shape[0]
    if student.shape[1:] != teacher.shape[1:] or not 1 <= vt <= vs:
        raise ValueError(
            "teacher_logits [Vt, N, K] must be the first Vt <= Vs crops of student_logits "
            f"[Vs, N, K]; got student {student.shape} and teacher {teacher.shape}."
        )
    if vs < 2:
        raise ValueError(
            f"dino_loss needs at least 2 student crops (pairs of different crops); got {vs}."
        )
    if student.shape[1] < 1 or student.shape[2] < 1:
        raise ValueError(
            f"the logits must have at least one row and one column; got {student.shape}."
        )
    if center.shape not in ((student.shape[2],), (1, student.shape[2])):
        raise ValueError(
            f"center must have shape [K] or [1, K] with K = {student.shape[2]}; got {center.shape}."
        )


def dino_loss(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    center: ArrayLike,
    *,
    student_temperature: ArrayLike = 0.1,
    teacher_temperature: ArrayLike = 0.04,
    axis_name: Hashable | None = None,
) -> jax.Array:
    r"""DINO loss: cross-entropy from the teacher's centred, sharpened softmax to the student's,
    averaged over every pair of DIFFERENT crops.

    With ``P_t = softmax((teacher_t - center) / T_t)`` (no gradient: ``stop_gradient`` on the
    teacher and the centre inside) and ``log Q_s = log_softmax(student_s / T_s)``,

    .. math::
      \mathcal{L} = \frac{1}{|\{(t, s): s \ne t\}|} \sum_{t < V_t} \sum_{s < V_s, s \ne t}
        \frac{1}{N} \sum_n -\sum_k P_t[n, k] \log Q_s[n, k] .

    The teacher sees the first ``Vt`` crops of the student's ``Vs`` (the global crops; DINO's
    ``Vt = 2``); a crop is never compared with itself. As the official code, the mean is over
    the pairs of the batch means; this sums, over the teacher crops, ``P_t`` against the sum of
    all student log-probabilities minus its own crop's (the same value, ``2 Vt`` products of
    ``[N, K]`` arrays instead of ``Vt (Vs - 1)``).

    With ``axis_name``, inside ``jax.shard_map`` or ``jax.pmap``, each device passes its local
    rows (``N`` = its rows) and gets the mean over the global batch (the same value on every
    device, global gradients). The temperatures may be traced (DINO warms the teacher's up).

    References:
      Caron et al., `Emerging Properties in Self-Supervised Vision Transformers
      <https://arxiv.org/abs/2104.14294>`_, ICCV 2021 (Algorithm 1; Eq. 2-3) and its official
      code (``DINOLoss``).

    Args:
      student_logits: ``[Vs, N, K]`` the student head's outputs for every crop (global crops
        first).
      teacher_logits: ``[Vt, N, K]`` the teacher head's outputs for the first ``Vt`` crops.
      center: ``[K]`` or ``[1, K]``, the teacher's centre (:func:`dino_center`).
      student_temperature: ``T_s > 0`` (0.1).
      teacher_temperature: ``T_t > 0`` (0.04 after a warm-up from 0.04 to 0.07 in the paper's
        ViT-S recipes).
      axis_name: the mapped axis of ``shard_map``/``pmap`` to average across, or None.

    Returns:
      A float32 scalar ``>= 0`` (float64 for float64 inputs); bfloat16 inputs are cast up.

    Raises:
      ValueError: for shapes that are not ``[Vs, N, K]`` / ``[Vt <= Vs, N, K]`` / ``[K]``, fewer
        than 2 student crops, complex inputs, or (when concrete) a temperature that is not > 0.

    Examples:
      >>> import jax.numpy as jnp
      >>> s = jnp.zeros((2, 3, 4))  # uniform student: cross-entropy log K whatever the teacher
      >>> round(float(dino_loss(s, jnp.ones((1, 3, 4)), jnp.zeros(4))), 4)  # log 4
      1.3863
    """
    with jax.named_scope("dino_loss"):
        for t in (student_temperature, teacher_temperature):
            _check_temperature(t)
        student = _as_float(student_logits, "student_logits")
        teacher = jax.lax.stop_gradient(_as_float(teacher_logits, "teacher_logits"))
        c = jax.lax.stop_gradient(_as_float(center, "center"))
        _check_logits(student, teacher, c)
        vs, vt = student.shape[0], teacher.shape[0]
        p = jax.nn.softmax((teacher - c.reshape(-1)) / teacher_temperature, axis=-1)
        log_q = jax.nn.log_softmax(student / student_temperature, axis=-1)
        others = jnp.sum(log_q, axis=0)[None] - log_q[:vt]  # [Vt, N, K]: every s != t
        total = -jnp.sum(p * others)
        n_global = _global_size(student.shape[1], axis_name)
        return _global_mean(total, n_global * vt * (vs - 1), axis_name)


def dino_center(
    center: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    momentum: ArrayLike = 0.9,
    axis_name: Hashable | None = None,
) -> jax.Array:
    r"""The teacher's next centre: ``m * center + (1 - m) * mean of teacher_logits`` over every
    crop and every row of the GLOBAL batch (DINO's ``update_center``, Eq. 4; no gradient).

    Args:
      center: ``[K]`` or ``[1, K]``, the current centre (zeros at the start).
      teacher_logits: ``[Vt, N, K]`` (local rows ``[Vt, n, K]`` with ``axis_name``).
      momentum: ``m`` in ``[0, 1]`` (0.9).
      axis_name: the mapped axis of ``shard_map``/``pmap`` to average across, or None.

    Returns:
      The new centre, the shape and float dtype of ``center`` (at least float32).

    Examples:
      >>> import jax.numpy as jnp
      >>> dino_center(jnp.zeros(2), jnp.array([[[1.0, 3.0], [3.0, 5.0]]]), momentum=0.5)
      Array([1., 2.], dtype=float32)
    """
    with jax.named_scope("dino_center"):
        if not isinstance(momentum, jax.core.Tracer) and not 0 <= float(np.asarray(momentum)) <= 1:
            raise ValueError(f"momentum must be in [0, 1]; got {momentum}.")
        c = _as_float(center, "center")
        t = jax.lax.stop_gradient(_as_float(teacher_logits, "teacher_logits"))
        if t.ndim != 3 or c.shape not in ((t.shape[2],), (1, t.shape[2])):
            raise ValueError(
                f"teacher_logits must be [Vt, N, K] and center [K] or [1, K]; got "
                f"{t.shape} and {c.shape}."
            )
        count = t.shape[0] * _global_size(t.shape[1], axis_name)
        mean = _global_mean(jnp.sum(t, axis=(0, 1)), count, axis_name).astype(c.dtype)
        return momentum * c + (1 - momentum) * mean.reshape(c.shape)
