"""Distillation losses: an online network regresses a target it gets no gradient through.

:func:`byol_loss` (BYOL: the target is the projection of the other view by a slowly moving
target network) and :func:`simsiam_loss` (SimSiam: the target is the other view's projection by
the same network, under stop-gradient). Per-row losses: under ``shard_map``/``pmap`` nothing is
gathered, only the mean is taken over the global batch.
"""

from __future__ import annotations

from collections.abc import Hashable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from ssl_jax.losses._batch import _as_float, _check_pair, _global_mean, _global_size, _l2_normalize

__all__ = ["byol_loss", "simsiam_loss"]


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


def simsiam_loss(
    p1: ArrayLike,
    p2: ArrayLike,
    z1: ArrayLike,
    z2: ArrayLike,
    *,
    axis_name: Hashable | None = None,
) -> jax.Array:
    r"""SimSiam loss: symmetrised negative cosine similarity, with a stop-gradient on the targets.

    ``D(p1, z2) / 2 + D(p2, z1) / 2`` with ``D(p, z) = -mean_i cos(p_i, stop_gradient(z_i))``:
    each view's prediction regresses the OTHER view's projection, and no gradient flows into
    ``z1`` or ``z2`` (the stop-gradient that prevents collapse; ``stop_gradient`` inside). The
    value lies in ``[-1, 1]``; -1 when every prediction points along its target.

    With ``axis_name``, inside ``jax.shard_map`` or ``jax.pmap``, each device passes its local rows
    and gets the mean over the global batch (same value on every device, global gradients). No
    gather is needed: the loss is a per-row term.

    References:
      Chen & He, `Exploring Simple Siamese Representation Learning
      <https://arxiv.org/abs/2011.10566>`_, CVPR 2021 (Algorithm 1; Eqs. 1-3).

    Args:
      p1: ``[N, D]`` predictor outputs of the first views (local rows ``[n, D]`` with
        ``axis_name``).
      p2: ``[N, D]`` predictor outputs of the second views, in the same image order.
      z1: ``[N, D]`` projector outputs of the first views (the targets of ``p2``).
      z2: ``[N, D]`` projector outputs of the second views (the targets of ``p1``).
      axis_name: the mapped axis of ``shard_map``/``pmap`` to average across, or None.

    Returns:
      A float32 scalar in ``[-1, 1]`` (float64 for float64 inputs); bfloat16 inputs are cast up.

    Raises:
      ValueError: if an input is not 2-D, is empty or is complex, or if the four shapes differ.

    Examples:
      >>> import jax.numpy as jnp
      >>> p1, p2 = jnp.array([[2.0, 0.0]]), jnp.array([[0.0, 1.0]])
      >>> z1, z2 = jnp.array([[1.0, 0.0]]), jnp.array([[3.0, 0.0]])
      >>> float(simsiam_loss(p1, p2, z1, z2))  # cos(p1, z2) = 1, cos(p2, z1) = 0
      -0.5
    """
    with jax.named_scope("simsiam_loss"):
        p1, p2 = _as_float(p1, "p1"), _as_float(p2, "p2")
        z1, z2 = _as_float(z1, "z1"), _as_float(z2, "z2")
        for x, name in ((p2, "p2"), (z1, "z1"), (z2, "z2")):
            _check_pair(p1, x, ("p1", name))
        t1, t2 = jax.lax.stop_gradient(z1), jax.lax.stop_gradient(z2)
        cos1 = jnp.sum(_l2_normalize(p1) * _l2_normalize(t2), axis=-1)
        cos2 = jnp.sum(_l2_normalize(p2) * _l2_normalize(t1), axis=-1)
        n_global = _global_size(p1.shape[0], axis_name)
        return _global_mean(-0.5 * jnp.sum(cos1 + cos2), n_global, axis_name)
