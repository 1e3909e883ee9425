"""Contrastive losses: every embedding of the batch is scored against all the others.

:func:`nt_xent` (SimCLR) and its training metric :func:`contrastive_accuracy`, directly or streamed
over column blocks of candidates (the exact streamed NT-Xent, with a custom VJP).

Memory. Both score each anchor against all ``2N`` embeddings. By default (``block_size=None``)
the ``[2n, 2N]`` logits of the local anchors are formed at once: fastest for the batches of a few
thousand that SimCLR uses, but quadratic in the batch (``2N = 131,072`` would need 68.7 GB for
the full matrix, 8.6 GB per device on 8 devices). With ``block_size=B`` the candidates are streamed
in column blocks of ``B`` with an online logsumexp (the FlashAttention recurrence; Milakov &
Gimelshein 2018, Dao et al. 2022), and the gradient of :func:`nt_xent` comes from a custom VJP that
streams the blocks again, so neither pass holds more than a ``[2n, B]`` block: per device,
O(n B + N D) memory instead of O(n N). The result is the same function (exact up to float
rounding), for any ``B`` (the last block is padded and masked). Under plain ``jit`` on a
batch-sharded array, XLA's SPMD partitioner keeps the anchor rows sharded through the streaming
loop (checked on the compiled HLO: one all-gather of the embeddings, one of two scalars per
anchor, no collective inside the loop), so the blocked path is row-blocked per device without
``shard_map``; with ``axis_name`` it is the same computation, written per device.

Meshes. On a mesh with Explicit axes (``jax.make_mesh``'s default) the sharding is part of the
array type, and the ``[2, N@data, D] -> [2N, D]`` reshape of the candidates has no sharding JAX
can infer (ShardingTypeError). The candidates are therefore resharded to replicated first
(``_batch._replicated``): the all-gather XLA inserts by itself on an Auto mesh, said explicitly;
the anchors stay sharded. On an Auto mesh, one device and in ``shard_map``/``pmap``, the program
is unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from ssl_jax.losses._batch import (
    _as_float,
    _check_pair,
    _check_temperature,
    _gather_rows,
    _global_mean,
    _global_size,
    _l2_normalize,
)

__all__ = ["contrastive_accuracy", "nt_xent"]

# HIGHEST for the similarity matmuls: with temperature 0.1 a TF32/bf16-pass matmul error of 1e-3 in
# a cosine becomes 1e-2 in a logit; the [2n, D] x [D, 2N] product is negligible next to the encoder.
_PRECISION = jax.lax.Precision.HIGHEST


def _check_block_size(block_size: int | None, fn: str) -> None:
    if block_size is None:
        return
    if isinstance(block_size, jax.core.Tracer):
        # jit traces every argument it is not told is static, and a traced block size has no
        # value to build the loop's shapes from.
        raise ValueError(
            "block_size sets the loop shape and must be static: under jax.jit, pass it as a "
            f"static argument, e.g. jax.jit({fn}, static_argnames='block_size'), or close over "
            "it (functools.partial)."
        )
    if isinstance(block_size, bool) or not hasattr(block_size, "__index__") or block_size < 1:
        raise ValueError(
            "block_size must be a positive int (candidate columns per streamed block) or None "
            f"(the direct formula); got {block_size!r}."
        )


def _normalized_views(z1: ArrayLike, z2: ArrayLike) -> jax.Array:
    """``[2, n, D]`` unit embeddings, view first.

    Stacking on a NEW leading axis (not concatenating the rows) keeps the batch axis, and with it
    its sharding under ``jit``: a ``[2n]`` concatenation of two batch-sharded arrays cannot be
    sharded like its parts, and XLA fills the gap with collective-permutes.
    """
    z1, z2 = _as_float(z1, "z1"), _as_float(z2, "z2")
    _check_pair(z1, z2, ("z1", "z2"))
    return jnp.stack([_l2_normalize(z1), _l2_normalize(z2)])


def _self_columns(n_local: int, axis_name: Hashable | None) -> jax.Array:
    """``[2, n]`` int32: the candidate column of each local anchor itself.

    Candidates are ordered (all first views, all second views) in global batch order, so the
    positive of anchor ``(v, i)`` is the self column of ``(1 - v, i)``.
    """
    rows = jnp.arange(n_local, dtype=jnp.int32)
    if axis_name is not None:
        rows = rows + jax.lax.axis_index(axis_name) * n_local
    return jnp.stack([rows, rows + _global_size(n_local, axis_name)])


def _masked_logits(
    u: jax.Array,
    candidates: jax.Array,
    start: jax.Array | int,
    self_cols: jax.Array,
    count: int,
    temperature: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Logits ``[2, n, B]`` of the anchors u against candidate columns ``start .. start + B``.

    Returns (logits, mask); masked entries (the anchor itself, padding columns ``>= count``) hold
    a large finite negative value: an -inf mask turns into NaN as soon as it meets arithmetic
    (inf * 0, -inf - -inf in a max shift), while where() keeps the forward finite and sends
    exactly zero gradient to the masked entry.
    """
    logits = jnp.einsum("vnd,bd->vnb", u, candidates, precision=_PRECISION) / temperature
    cols = start + jnp.arange(candidates.shape[0], dtype=jnp.int32)
    mask = (cols == self_cols[..., None]) | (cols >= count)
    neg = jnp.asarray(jnp.finfo(logits.dtype).min / 2, logits.dtype)
    return jnp.where(mask, neg, logits), mask


def _column_blocks(x: jax.Array, block_size: int) -> tuple[jax.Array, jax.Array]:
    """``[C, ...]`` -> (``[C / B, B, ...]`` zero-padded blocks, ``[C / B]`` first columns)."""
    num_blocks = -(-x.shape[0] // block_size)
    pad = [(0, num_blocks * block_size - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
    blocks = jnp.pad(x, pad).reshape(num_blocks, block_size, *x.shape[1:])
    return blocks, jnp.arange(num_blocks, dtype=jnp.int32) * block_size


def _streamed_forward(
    u: jax.Array, temperature: jax.Array, axis_name: Hashable | None, block_size: int
) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
    """((lse, mean logit), candidates) of the anchors u: [2, n, D], one column block at a time."""
    candidates = _gather_rows(u, axis_name).reshape(-1, u.shape[-1])
    count = candidates.shape[0]
    blocks, starts = _column_blocks(candidates, min(block_size, count))
    self_cols = _self_columns(u.shape[1], axis_name)

    def step(carry, block):
        # Online logsumexp: m is the running max, s the sum of exp(logit - m), t the sum of
        # exp(logit - m) * logit; both sums are rescaled whenever the max grows.
        m, s, t = carry
        logits, mask = _masked_logits(u, block[0], block[1], self_cols, count, temperature)
        m_new = jnp.maximum(m, jnp.max(logits, axis=-1))
        scale = jnp.exp(m - m_new)
        # where(): a row whose first block is all masked has m_new = the mask value, so the
        # masked entries would count as exp(0) = 1 (and t overflow) until a real column arrives.
        e = jnp.where(mask, 0.0, jnp.exp(logits - m_new[..., None]))
        s = s * scale + jnp.sum(e, axis=-1)
        t = t * scale + jnp.sum(e * logits, axis=-1)
        return (m_new, s, t), None

    # *_like(u[..., 0]) rather than zeros(shape): inside shard_map the carry must have the same
    # varying-over-axes type as the values the loop body produces.
    neg = jnp.finfo(u.dtype).min / 2
    init = (jnp.full_like(u[..., 0], neg), jnp.zeros_like(u[..., 0]), jnp.zeros_like(u[..., 0]))
    (m, s, t), _ = jax.lax.scan(step, init, (blocks, starts))
    # Every anchor has at least one unmasked candidate (its positive), so s > 0.
    return (m + jnp.log(s), t / s), candidates


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _streamed_logsumexp(
    u: jax.Array, temperature: jax.Array, axis_name: Hashable | None, block_size: int
) -> tuple[jax.Array, jax.Array]:
    """Per anchor: logsumexp of its logits over all other candidates, and its softmax-mean logit.

    Args:
      u: ``[2, n, D]`` unit embeddings of the local anchors (all of them without axis_name).
      temperature: scalar. Its gradient is NOT computed here (a zero is returned): callers pass
        it through stop_gradient and add its derivative, ``-mean_logit / temperature``, outside.
      axis_name: the mapped axis to gather candidates across, or None.
      block_size: candidate columns per block.

    Returns:
      (lse ``[2, n]``, mean logit ``[2, n]``); the second output carries no gradient.
    """
    return _streamed_forward(u, temperature, axis_name, block_size)[0]


def _streamed_logsumexp_fwd(u, temperature, axis_name, block_size):
    (lse, mean_logit), candidates = _streamed_forward(u, temperature, axis_name, block_size)
    return (lse, mean_logit), (u, candidates, temperature, lse)


def _streamed_logsumexp_bwd(axis_name, block_size, residuals, cotangents):
    u, candidates, temperature, lse = residuals
    g, _ = cotangents  # the mean logit is stop_gradient-ed by every caller
    # d(sum_i g_i lse_i)/du_r = (1/T) sum_j (g_r p_rj + g_j p_jr) u_j with p_ij = exp(L_ij - lse_i).
    # L = U U^T / T is symmetric, so p_jr = exp(L_rj - lse_j): the whole gradient of the local rows
    # comes from the same [2n, B] blocks, given every anchor's (lse, g) -- 2N pairs of scalars, one
    # small all-gather -- instead of a [2N, D] reduce-scatter of candidate gradients.
    stats = _gather_rows(jnp.stack([lse, g], axis=-1), axis_name).reshape(-1, 2)  # [2N, 2]
    count = candidates.shape[0]
    size = min(block_size, count)
    blocks, starts = _column_blocks(candidates, size)
    stat_blocks, _ = _column_blocks(stats, size)  # padding: lse 0, g 0 (masked columns anyway)
    self_cols = _self_columns(u.shape[1], axis_name)

    def step(du, block):
        cand, start, stat = block
        logits, _ = _masked_logits(u, cand, start, self_cols, count, temperature)
        # Masked logits are ~-1.7e38 (float32), so both exponentials are exactly 0 there.
        w = jnp.exp(logits - lse[..., None]) * g[..., None]
        w = w + jnp.exp(logits - stat[:, 0]) * stat[:, 1]
        return du + jnp.einsum("vnb,bd->vnd", w, cand, precision=_PRECISION), None

    du, _ = jax.lax.scan(step, jnp.zeros_like(u), (blocks, starts, stat_blocks))
    return du / temperature, jnp.zeros_like(temperature)


_streamed_logsumexp.defvjp(_streamed_logsumexp_fwd, _streamed_logsumexp_bwd)


def _streamed_argmax(u: jax.Array, axis_name: Hashable | None, block_size: int) -> jax.Array:
    """``[2, n]`` int32: each anchor's most similar other candidate, one column block at a time."""
    candidates = _gather_rows(u, axis_name).reshape(-1, u.shape[-1])
    count = candidates.shape[0]
    blocks, starts = _column_blocks(candidates, min(block_size, count))
    self_cols = _self_columns(u.shape[1], axis_name)
    one = jnp.ones((), u.dtype)

    def step(carry, block):
        best, arg = carry
        logits, _ = _masked_logits(u, block[0], block[1], self_cols, count, one)
        block_best = jnp.max(logits, axis=-1)
        block_arg = jnp.argmax(logits, axis=-1).astype(jnp.int32) + block[1]
        # Strictly greater: on ties the earlier block keeps the lowest index, like jnp.argmax.
        better = block_best > best
        return (jnp.where(better, block_best, best), jnp.where(better, block_arg, arg)), None

    init = (jnp.full_like(u[..., 0], -jnp.inf), jnp.zeros_like(u[..., 0], dtype=jnp.int32))
    (_, arg), _ = jax.lax.scan(step, init, (blocks, starts))
    return arg


def nt_xent(
    z1: ArrayLike,
    z2: ArrayLike,
    *,
    temperature: ArrayLike = 0.1,
    axis_name: Hashable | None = None,
    block_size: int | None = None,
) -> jax.Array:
    r"""Normalised temperature-scaled cross-entropy (NT-Xent), the SimCLR loss.

    Row ``i`` of ``z1`` and row ``i`` of ``z2`` are two views of image ``i``. Each of the ``2N``
    embeddings is an anchor whose positive is the other view of its image and whose negatives are
    the other ``2N - 2`` embeddings. With cosine similarity ``s``,

    .. math::
      \ell(i, j) = -\log \frac{\exp(s_{ij} / \tau)}{\sum_{k \ne i} \exp(s_{ik} / \tau)}

    and the loss is the mean of ``\ell`` over the ``2N`` anchors.

    Without ``axis_name`` the anchors are scored against the whole batch (under ``jax.jit`` on a
    mesh-sharded batch, Explicit or Auto mesh axes, the anchor rows stay sharded and the
    ``[2N, D]`` candidates are all-gathered). With ``axis_name``, inside ``jax.shard_map`` or
    ``jax.pmap``, each device passes its local ``[n, D]`` rows; the rows are all-gathered over
    the axis and each device scores only its own ``2n`` anchors. The returned value is the same
    on every device and, as are its gradients, equal to the loss over the global batch.

    ``block_size`` bounds the memory. ``None`` forms the ``[2n, 2N]`` logits at once (the fastest
    for batches up to a few thousand). An int streams the candidates in blocks of that many
    columns with an online logsumexp, forward and backward (a custom VJP), so no device holds more
    than a ``[2n, block_size]`` block: about ``3 * 2n * block_size + 3 * 2N * D`` floats per
    device in all. Same value and gradients, for any ``block_size >= 1`` (divisibility is not
    needed; ``block_size >= 2N`` is one block). The gradient w.r.t. ``temperature`` is exact to
    first order (a learned temperature works; second derivatives in it are not supported). The
    streamed path is reverse-mode only: ``jax.grad``/``jax.vjp``/``jax.jacrev`` work, while
    ``jax.jvp``/``jax.jacfwd`` (forward mode, hence also ``jax.hessian``) raise JAX's "can't
    apply forward-mode autodiff (jvp) to a custom_vjp function"; use ``block_size=None`` there.

    References:
      Chen et al., `A Simple Framework for Contrastive Learning of Visual Representations
      <https://arxiv.org/abs/2002.05709>`_, 2020 (Algorithm 1). Online softmax: Milakov &
      Gimelshein, `Online normalizer calculation for softmax <https://arxiv.org/abs/1805.02867>`_,
      2018; Dao et al., `FlashAttention <https://arxiv.org/abs/2205.14135>`_, 2022.

    Args:
      z1: ``[N, D]`` embeddings of the first views (local rows ``[n, D]`` with ``axis_name``).
      z2: ``[N, D]`` embeddings of the second views, in the same image order.
      temperature: a real scalar ``tau > 0``; the cosine similarities are divided by it. It may
        be traced (a scheduled or learned value passed into ``jit``).
      axis_name: the mapped axis of ``shard_map``/``pmap`` to gather negatives across, or None.
      block_size: candidate columns per streamed block, or None for the direct formula. It sets
        the loop's shapes, so it must be a static Python int: under ``jax.jit`` mark it static,
        ``jax.jit(nt_xent, static_argnames='block_size')``, or close over it.

    Returns:
      A float32 scalar (float64 for float64 inputs); bfloat16 inputs are cast up first.

    Raises:
      ValueError: if ``z1`` or ``z2`` is not 2-D, is empty or is complex, if their shapes differ,
        if ``temperature`` is not a real scalar or is ``<= 0`` (the sign is checked when the
        temperature is concrete; a traced 0 gives NaN), or if ``block_size`` is neither None nor a
        positive int (a traced ``block_size`` included: see above).

    Examples:
      >>> import jax.numpy as jnp
      >>> z = jnp.eye(4)
      >>> float(nt_xent(z[:2], z[2:], temperature=0.5))  # positives orthogonal, as are negatives
      1.0986123...
      >>> float(nt_xent(z[:2], z[2:], temperature=0.5, block_size=3))  # streamed: same value
      1.0986123...
    """
    # A named scope labels the loss's ops (and the all-gather XLA inserts for it) in the HLO and in
    # profiles: ssl_jax.profiling uses it to tell the embedding gather from any other.
    with jax.named_scope("nt_xent"):
        _check_temperature(temperature)
        _check_block_size(block_size, "nt_xent")
        u = _normalized_views(z1, z2)
        temperature = jnp.asarray(temperature, u.dtype)
        n = u.shape[1]
        # Both anchors of image i have the same positive logit, s(z1_i, z2_i) / tau.
        pos = jnp.sum(u[0] * u[1], axis=-1) / temperature
        if block_size is None:
            candidates = _gather_rows(u, axis_name).reshape(-1, u.shape[-1])
            logits, _ = _masked_logits(
                u, candidates, 0, _self_columns(n, axis_name), candidates.shape[0], temperature
            )
            lse = jax.nn.logsumexp(logits, axis=-1)
        else:
            frozen = jax.lax.stop_gradient(temperature)
            lse, mean_logit = _streamed_logsumexp(u, frozen, axis_name, int(block_size))
            # The custom VJP differentiates w.r.t. the embeddings only. d lse / d tau is
            # -E_softmax[logit] / tau; adding it as a term whose value is exactly zero gives a
            # learned or scheduled temperature its gradient through ordinary autodiff, which also
            # applies the mapping's psum convention to it.
            slope = jax.lax.stop_gradient(-mean_logit / frozen)
            lse = lse + slope * (temperature - frozen)
        local_sum = jnp.sum(lse) - 2.0 * jnp.sum(pos)
        return _global_mean(local_sum, 2 * _global_size(n, axis_name), axis_name)


def contrastive_accuracy(
    z1: ArrayLike,
    z2: ArrayLike,
    *,
    axis_name: Hashable | None = None,
    block_size: int | None = None,
) -> jax.Array:
    """Fraction of anchors whose most similar other embedding is their positive.

    The top-1 accuracy of the NT-Xent classification task (a training metric): the same anchors,
    candidates and self-exclusion as :func:`nt_xent`, which shares its logits code. It carries no
    gradient. Ties go to the lowest candidate index (``jnp.argmax``), streamed or not.

    References:
      Chen et al., `A Simple Framework for Contrastive Learning of Visual Representations
      <https://arxiv.org/abs/2002.05709>`_, 2020.

    Args:
      z1: ``[N, D]`` embeddings of the first views (local rows ``[n, D]`` with ``axis_name``).
      z2: ``[N, D]`` embeddings of the second views, in the same image order.
      axis_name: the mapped axis of ``shard_map``/``pmap`` to gather candidates across, or None;
        each device then holds a ``[2n, 2N]`` block only, and all get the global accuracy.
      block_size: candidate columns per streamed block (a running argmax; memory
        ``[2n, block_size]``), or None for the direct ``[2n, 2N]`` comparison. A static Python
        int: under ``jax.jit``, ``jax.jit(contrastive_accuracy, static_argnames='block_size')``.

    Returns:
      A float32 scalar in ``[0, 1]`` (float64 for float64 inputs).

    Raises:
      ValueError: if ``z1`` or ``z2`` is not 2-D, is empty or is complex, if their shapes differ,
        or if ``block_size`` is neither None nor a positive int (a traced one included).

    Examples:
      >>> import jax.numpy as jnp
      >>> z = jnp.eye(4)
      >>> float(contrastive_accuracy(z[:2], z[:2] + 0.1 * z[2:]))
      1.0
    """
    with jax.named_scope("contrastive_accuracy"):
        _check_block_size(block_size, "contrastive_accuracy")
        u = jax.lax.stop_gradient(_normalized_views(z1, z2))
        n = u.shape[1]
        self_cols = _self_columns(n, axis_name)
        if block_size is None:
            candidates = _gather_rows(u, axis_name).reshape(-1, u.shape[-1])
            # Temperature does not change the argmax; 1 keeps the logits equal to the cosines.
            logits, _ = _masked_logits(
                u, candidates, 0, self_cols, candidates.shape[0], jnp.ones((), u.dtype)
            )
            best = jnp.argmax(logits, axis=-1)
        else:
            best = _streamed_argmax(u, axis_name, int(block_size))
        # The positive of an anchor is the self column of the other view of its image.
        hits = (best == self_cols[::-1]).astype(u.dtype)
        return _global_mean(jnp.sum(hits), 2 * _global_size(n, axis_name), axis_name)
