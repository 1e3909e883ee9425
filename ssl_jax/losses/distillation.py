"""Distillation losses: an online network regresses a target it gets no gradient through.

:func:`byol_loss` (BYOL: the target is the projection of the other view by a slowly moving
target network). A per-row loss: under ``shard_map``/``pmap`` nothing is gathered, only the mean
is taken over the global batch.
"""

from __future__ import annotations

from collections.abc import Hashable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from ssl_jax.losses._batch import _as_float, _check_pair, _global_mean, _global_size, _l2_normalize

__all__ = ["byol_loss"]


def byol_loss(
    prediction: ArrayLike, target: ArrayLike, *, axis_name: Hashable | None = None
) -> jax.Array:
    r"""BYOL regression loss: mean over the batch of ``2 - 2 cos(prediction, target)``.

    Equal to the squared distance of the L2-normalised vectors. No gradient flows into ``target``
    (``stop_gradient`` inside): it is the output of the slowly moving target network. BYOL
    symmetrises the loss by also feeding the swapped views; call this twice for that.

    With ``axis_name``, inside ``jax.shard_map`` or ``jax.pmap``, each device passes its local rows
    and gets the mean over the global batch (same value on every device, global gradients). No
    gather is needed: the loss is a per-row term.

    References:
      Grill et al., `Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning
      <https://arxiv.org/abs/2006.07733>`_, 2020 (Eq. 2).

    Args:
      prediction: ``[N, D]`` online-network predictions (local rows ``[n, D]`` with ``axis_name``).
      target: ``[N, D]`` target-network projections of the other view, same order.
      axis_name: the mapped axis of ``shard_map``/``pmap`` to average across, or None.

    Returns:
      A float32 scalar in ``[0, 4]`` (float64 for float64 inputs); bfloat16 inputs are cast up.

    Raises:
      ValueError: if ``prediction`` or ``target`` is not 2-D, is empty or is complex, or if their
        shapes differ.

    Examples:
      >>> import jax.numpy as jnp
      >>> p = jnp.array([[1.0, 0.0], [0.0, 2.0]])
      >>> float(byol_loss(p, jnp.array([[3.0, 0.0], [1.0, 0.0]])))  # cos = 1 and 0
      1.0
    """
    with jax.named_scope("byol_loss"):
        p = _as_float(prediction, "prediction")
        t = jax.lax.stop_gradient(_as_float(target, "target"))
        _check_pair(p, t, ("prediction", "target"))
        cos = jnp.sum(_l2_normalize(p) * _l2_normalize(t), axis=-1)
        n_global = _global_size(p.shape[0], axis_name)
        return _global_mean(jnp.sum(2.0 - 2.0 * cos), n_global, axis_name)
