"""Self-supervised losses: pure functions of embeddings.

Every loss takes the embeddings of the whole batch under plain ``jax.jit`` (a batch sharded over a
mesh included: XLA inserts the collectives). Inside ``jax.shard_map`` or ``jax.pmap`` each device
passes its LOCAL rows together with ``axis_name=``; the value, identical on every device, and the
gradients are then those of the loss over the global batch: each device scores only its own rows
(against candidates gathered across the axis), and the local sums are ``psum``-ed and divided by
the global count, so every term is differentiated once, on the device that owns it.

Gradients taken inside the mapped function follow the mapping's convention for ``psum``:

* ``jax.shard_map`` (default ``check_vma=True``): the gradient w.r.t. the local rows IS the
  gradient of the global loss w.r.t. those rows, and w.r.t. replicated parameters it is the full
  gradient, already reduced; no ``pmean`` is needed.
* ``jax.pmap`` (and ``shard_map(..., check_vma=False)``): the transpose of ``psum`` sums the
  cotangents of all devices, so the local gradient is ``axis_size`` times the global one; the usual
  recipe, ``jax.lax.pmean`` of the parameter gradients, gives exactly the global gradient.

Inputs of any floating dtype are computed in at least float32 (bfloat16 is cast up before any
arithmetic), so the result is float32 for bfloat16/float16/float32 inputs and float64 for float64.
"""

from __future__ import annotations

from collections.abc import Hashable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

__all__ = ["byol_loss", "contrastive_accuracy", "nt_xent"]

# Floor on the L2 norm: a zero embedding normalises to zero (cosine 0 with everything) with a finite
# gradient instead of 0/0. Real projections have norms many orders of magnitude above it.
_NORM_EPS = 1e-6


def _check_pair(a: jax.Array, b: jax.Array, names: tuple[str, str]) -> None:
    """Raise ValueError unless a and b are non-empty [N, D] arrays of one shape (static checks)."""
    for x, name in zip((a, b), names, strict=True):
        if x.ndim != 2:
            raise ValueError(
                f"{name} must be 2-D with shape [N, D] (batch, embedding dim); "
                f"got {x.ndim}-D shape {x.shape} (jax.vmap over a leading axis of problems)."
            )
    if a.shape != b.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape [N, D]; "
            f"got {names[0]}: {a.shape} and {names[1]}: {b.shape}."
        )
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(
            f"{names[0]} and {names[1]} must have at least one row and one column; got {a.shape}."
        )


def _check_temperature(temperature: ArrayLike) -> None:
    # A traced temperature (e.g. a scheduled value passed into jit) cannot be checked at trace time.
    if isinstance(temperature, jax.core.Tracer):
        return
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}.")


def _as_float(x: ArrayLike) -> jax.Array:
    # Cast up before normalising: bfloat16 sums of squares and dot products lose ~3 digits.
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _l2_normalize(x: jax.Array) -> jax.Array:
    # rsqrt(max(|x|^2, eps^2)) rather than x / norm(x): the norm's gradient is NaN at x = 0, while
    # the max routes a zero row's gradient into the constant branch and stays finite.
    sq = jnp.sum(x * x, axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, jnp.asarray(_NORM_EPS**2, x.dtype)))


def _local_offset_and_size(n_local: int, axis_name: Hashable | None) -> tuple[jax.Array, int]:
    """(global index of this device's first row, global batch size N)."""
    if axis_name is None:
        return jnp.zeros((), jnp.int32), n_local
    return jax.lax.axis_index(axis_name) * n_local, n_local * jax.lax.axis_size(axis_name)


def _contrastive_logits(
    z1: ArrayLike, z2: ArrayLike, temperature: ArrayLike, axis_name: Hashable | None
) -> tuple[jax.Array, jax.Array, int]:
    """Masked cosine logits of the local anchors against every candidate in the global batch.

    Returns:
      (logits [2n, 2N], positive column [2n] int32, global anchor count 2N). Local anchor rows are
      ordered (z1 rows, z2 rows); candidate columns are (all of z1, all of z2) in global order. The
      self-similarity entry of each row holds a large finite negative value.
    """
    z1, z2 = _as_float(z1), _as_float(z2)
    _check_pair(z1, z2, ("z1", "z2"))
    _check_temperature(temperature)
    n = z1.shape[0]
    u1, u2 = _l2_normalize(z1), _l2_normalize(z2)
    offset, n_global = _local_offset_and_size(n, axis_name)
    if axis_name is None:
        g1, g2 = u1, u2
    else:
        # The transpose of a tiled all_gather is a reduce-scatter, so gradients of other devices'
        # anchors w.r.t. these rows flow back here.
        g1 = jax.lax.all_gather(u1, axis_name, tiled=True)
        g2 = jax.lax.all_gather(u2, axis_name, tiled=True)
    anchors = jnp.concatenate([u1, u2], axis=0)
    candidates = jnp.concatenate([g1, g2], axis=0)
    # HIGHEST: with temperature 0.1 a TF32/bf16-pass matmul error of 1e-3 in a cosine becomes 1e-2
    # in a logit; this [2n, D] x [D, 2N] product is negligible next to the encoder.
    logits = jnp.matmul(anchors, candidates.T, precision=jax.lax.Precision.HIGHEST)
    logits = logits / jnp.asarray(temperature, logits.dtype)

    rows = jnp.arange(n, dtype=jnp.int32) + offset
    self_col = jnp.concatenate([rows, rows + n_global])
    pos_col = jnp.concatenate([rows + n_global, rows])
    cols = jnp.arange(2 * n_global, dtype=jnp.int32)
    # A finite value under where(), before any exp: an -inf mask turns into NaN as soon as it meets
    # arithmetic (inf * 0 in a multiplicative mask, -inf - -inf in a max shift), while where()
    # keeps the forward finite and sends exactly zero gradient to the masked entry.
    neg = jnp.asarray(jnp.finfo(logits.dtype).min / 2, logits.dtype)
    logits = jnp.where(cols[None, :] == self_col[:, None], neg, logits)
    return logits, pos_col, 2 * n_global


def _global_mean(local_sum: jax.Array, count: int, axis_name: Hashable | None) -> jax.Array:
    # Sum of the local terms, psum, then divide by the GLOBAL count: every device gets the same
    # value, and each anchor's term is differentiated exactly once (on the device that owns it).
    if axis_name is not None:
        local_sum = jax.lax.psum(local_sum, axis_name)
    return local_sum / count


def nt_xent(
    z1: ArrayLike,
    z2: ArrayLike,
    *,
    temperature: ArrayLike = 0.1,
    axis_name: Hashable | None = None,
) -> jax.Array:
    r"""Normalised temperature-scaled cross-entropy (NT-Xent), the SimCLR loss.

    Row ``i`` of ``z1`` and row ``i`` of ``z2`` are two views of image ``i``. Each of the ``2N``
    embeddings is an anchor whose positive is the other view of its image and whose negatives are
    the other ``2N - 2`` embeddings. With cosine similarity ``s``,

    .. math::
      \ell(i, j) = -\log \frac{\exp(s_{ij} / \tau)}{\sum_{k \ne i} \exp(s_{ik} / \tau)}

    and the loss is the mean of ``\ell`` over the ``2N`` anchors.

    Without ``axis_name`` the full ``[2N, 2N]`` similarity matrix is formed (under ``jax.jit`` on a
    mesh-sharded batch, XLA distributes it). With ``axis_name``, inside ``jax.shard_map`` or
    ``jax.pmap``, each device passes its local ``[n, D]`` rows; the rows are all-gathered over the
    axis and each device holds only the ``[2n, 2N]`` block of its own anchors against all ``2N``
    candidates, never the ``[2N, 2N]`` matrix. The returned value is the same on every device and,
    as are its gradients, equal to the loss over the global batch.

    References:
      Chen et al., `A Simple Framework for Contrastive Learning of Visual Representations
      <https://arxiv.org/abs/2002.05709>`_, 2020 (Algorithm 1).

    Args:
      z1: ``[N, D]`` embeddings of the first views (local rows ``[n, D]`` with ``axis_name``).
      z2: ``[N, D]`` embeddings of the second views, in the same image order.
      temperature: ``tau > 0``; the cosine similarities are divided by it.
      axis_name: the mapped axis of ``shard_map``/``pmap`` to gather negatives across, or None.

    Returns:
      A float32 scalar (float64 for float64 inputs); bfloat16 inputs are cast up first.

    Raises:
      ValueError: if ``z1`` or ``z2`` is not 2-D or is empty, if their shapes differ, or if
        ``temperature <= 0`` (checked when the temperature is concrete).

    Examples:
      >>> import jax.numpy as jnp
      >>> z = jnp.eye(4)
      >>> float(nt_xent(z[:2], z[2:], temperature=0.5))  # positives orthogonal, as are negatives
      1.0986123...
    """
    logits, pos_col, count = _contrastive_logits(z1, z2, temperature, axis_name)
    pos = jnp.take_along_axis(logits, pos_col[:, None], axis=1)[:, 0]
    per_anchor = jax.nn.logsumexp(logits, axis=1) - pos
    return _global_mean(jnp.sum(per_anchor), count, axis_name)


def contrastive_accuracy(
    z1: ArrayLike, z2: ArrayLike, *, axis_name: Hashable | None = None
) -> jax.Array:
    """Fraction of anchors whose most similar other embedding is their positive.

    The top-1 accuracy of the NT-Xent classification task (a training metric): the same anchors,
    candidates and self-exclusion as :func:`nt_xent`, which shares its logits code. It carries no
    gradient. Ties go to the lowest candidate index (``jnp.argmax``).

    References:
      Chen et al., `A Simple Framework for Contrastive Learning of Visual Representations
      <https://arxiv.org/abs/2002.05709>`_, 2020.

    Args:
      z1: ``[N, D]`` embeddings of the first views (local rows ``[n, D]`` with ``axis_name``).
      z2: ``[N, D]`` embeddings of the second views, in the same image order.
      axis_name: the mapped axis of ``shard_map``/``pmap`` to gather candidates across, or None;
        each device then holds a ``[2n, 2N]`` block only, and all get the global accuracy.

    Returns:
      A float32 scalar in ``[0, 1]`` (float64 for float64 inputs).

    Raises:
      ValueError: if ``z1`` or ``z2`` is not 2-D or is empty, or if their shapes differ.

    Examples:
      >>> import jax.numpy as jnp
      >>> z = jnp.eye(4)
      >>> float(contrastive_accuracy(z[:2], z[:2] + 0.1 * z[2:]))
      1.0
    """
    z1, z2 = jax.lax.stop_gradient(_as_float(z1)), jax.lax.stop_gradient(_as_float(z2))
    # Temperature does not change the argmax; 1 keeps the logits equal to the cosines.
    logits, pos_col, count = _contrastive_logits(z1, z2, 1.0, axis_name)
    hits = (jnp.argmax(logits, axis=1) == pos_col).astype(logits.dtype)
    return _global_mean(jnp.sum(hits), count, axis_name)


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
      ValueError: if ``prediction`` or ``target`` is not 2-D or is empty, or if their shapes differ.

    Examples:
      >>> import jax.numpy as jnp
      >>> p = jnp.array([[1.0, 0.0], [0.0, 2.0]])
      >>> float(byol_loss(p, jnp.array([[3.0, 0.0], [1.0, 0.0]])))  # cos = 1 and 0
      1.0
    """
    p = _as_float(prediction)
    t = jax.lax.stop_gradient(_as_float(target))
    _check_pair(p, t, ("prediction", "target"))
    cos = jnp.sum(_l2_normalize(p) * _l2_normalize(t), axis=-1)
    n_global = _local_offset_and_size(p.shape[0], axis_name)[1]
    return _global_mean(jnp.sum(2.0 - 2.0 * cos), n_global, axis_name)
