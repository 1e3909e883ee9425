"""Supervised contrastive loss: every other row of the same class is a positive.

:func:`supcon_loss` (SupCon, ``L^sup_out``). Each device scores its own anchors against the rows
of the global batch (gathered with their labels under ``axis_name``, replicated under ``jit`` on
a mesh), and the mean is over the global count of anchors that have a positive.
"""

from __future__ import annotations

from collections.abc import Hashable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from ssl_jax.losses._batch import _as_float, _check_temperature, _gather_rows, _l2_normalize

__all__ = ["supcon_loss"]

# As in nt_xent: a TF32/bf16-pass matmul error in a cosine is multiplied by 1 / temperature.
_PRECISION = jax.lax.Precision.HIGHEST


def _check_inputs(z: jax.Array, labels: jax.Array) -> None:
    if z.ndim != 2:
        raise ValueError(
            "z must be 2-D with shape [M, D] (all views stacked on the rows, embedding dim); "
            f"got {z.ndim}-D shape {z.shape} (for [V, N, D] views, z.reshape(V * N, D) and "
            "jnp.tile(labels, V))."
        )
    if z.shape[0] < 1 or z.shape[1] < 1:
        raise ValueError(f"z must have at least one row and one column; got {z.shape}.")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(
            f"labels must be integers (class indices); got {labels.dtype} "
            "(one-hot labels: labels.argmax(-1))."
        )
    if labels.shape != z.shape[:1]:
        raise ValueError(
            f"labels must have shape [M] = ({z.shape[0]},), one per row of z; got "
            f"{labels.shape} (with V views stacked in z, repeat the labels: "
            "jnp.tile(labels, V))."
        )


def supcon_loss(
    z: ArrayLike,
    labels: ArrayLike,
    *,
    temperature: ArrayLike = 0.1,
    axis_name: Hashable | None = None,
) -> jax.Array:
    r"""Supervised contrastive loss ``L^sup_out`` (Khosla et al. 2020, Eq. 2), mean over anchors.

    ``z`` holds the embeddings of all views stacked on the rows, ``labels`` the class of each
    row. Each row ``i`` is an anchor; its positives ``P(i)`` are the OTHER rows of its label and
    its denominator runs over all rows ``a != i``. With cosine similarity ``s``,

    .. math::
      \ell_i = \frac{-1}{|P(i)|} \sum_{p \in P(i)}
        \log \frac{\exp(s_{ip} / \tau)}{\sum_{a \ne i} \exp(s_{ia} / \tau)}

    and the loss is the mean of ``\ell_i`` over the anchors with ``|P(i)| >= 1`` (the paper sums
    over anchors; the mean keeps the scale independent of the batch). An anchor with no positive
    is left out of the sum and of the count; if no anchor has one, the loss is 0, with a zero
    (finite) gradient. (The official code's newer version instead counts such anchors with a
    zero term, and multiplies by ``temperature / base_temperature``, 1 at its defaults; neither
    is done here.) With ``labels`` the image index of two stacked views, ``z = [z1; z2]`` and
    ``labels = [0..N-1, 0..N-1]``, it equals :func:`~ssl_jax.losses.contrastive.nt_xent`.

    Without ``axis_name`` the anchors are scored against the whole batch (under ``jax.jit`` on a
    mesh-sharded batch, Explicit or Auto mesh axes, the anchors stay sharded and the rows and
    labels are all-gathered). With ``axis_name``, inside ``jax.shard_map`` or ``jax.pmap``, each
    device passes its local rows ``[m, D]`` and labels ``[m]``; both are all-gathered over the
    axis, each device scores its own anchors, and the local sums and counts of anchors with a
    positive are ``psum``-ed: the value, identical on every device, and the gradients are those
    of the loss over the global batch (the gradient conventions of :mod:`ssl_jax.losses`).

    References:
      Khosla et al., `Supervised Contrastive Learning <https://arxiv.org/abs/2004.11362>`_, 2020
      (Eq. 2, ``L^sup_out``).

    Args:
      z: ``[M, D]`` embeddings, all views stacked on the rows (local rows ``[m, D]`` with
        ``axis_name``).
      labels: ``[M]`` integer class of each row of ``z``.
      temperature: a real scalar ``tau > 0`` (the paper uses 0.1); it may be traced.
      axis_name: the mapped axis of ``shard_map``/``pmap`` to gather rows across, or None.

    Returns:
      A float32 scalar (float64 for float64 ``z``); bfloat16 inputs are cast up first.

    Raises:
      ValueError: if ``z`` is not 2-D, is empty or is complex, if ``labels`` is not integer or
        its shape is not ``[M]``, or if ``temperature`` is not a real scalar or is ``<= 0``.

    Examples:
      >>> import jax.numpy as jnp
      >>> z = jnp.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
      >>> float(supcon_loss(z, jnp.array([0, 0, 1, 1]), temperature=1.0))  # log(1 + 2 / e)
      0.55144...
    """
    with jax.named_scope("supcon_loss"):
        _check_temperature(temperature)
        z = _as_float(z, "z")
        labels = jnp.asarray(labels)
        _check_inputs(z, labels)
        u = _l2_normalize(z)
        temperature = jnp.asarray(temperature, u.dtype)
        m = u.shape[0]
        rows = _gather_rows(u, axis_name, axis=0)  # [M, D]
        row_labels = _gather_rows(labels, axis_name, axis=0)  # [M]
        anchor = jnp.arange(m, dtype=jnp.int32)
        if axis_name is not None:
            anchor = anchor + jax.lax.axis_index(axis_name) * m
        is_self = anchor[:, None] == jnp.arange(rows.shape[0], dtype=jnp.int32)  # [m, M]
        positive = (labels[:, None] == row_labels[None, :]) & ~is_self
        logits = jnp.einsum("nd,md->nm", u, rows, precision=_PRECISION) / temperature
        # A finite mask value rather than -inf: where() then sends exactly zero gradient to the
        # anchor's own column, and no inf meets arithmetic (see contrastive._masked_logits).
        neg = jnp.asarray(jnp.finfo(logits.dtype).min / 2, logits.dtype)
        lse = jax.nn.logsumexp(jnp.where(is_self, neg, logits), axis=-1)  # [m]
        num_pos = jnp.sum(positive, axis=-1)
        log_prob_sum = jnp.sum(jnp.where(positive, logits, 0.0), axis=-1) - num_pos * lse
        has_pos = num_pos > 0
        # An anchor without positives has a 0 term here (never 0/0) and is not counted.
        per_anchor = -log_prob_sum / jnp.maximum(num_pos, 1).astype(u.dtype)
        local_sum = jnp.sum(jnp.where(has_pos, per_anchor, 0.0))
        local_count = jnp.sum(has_pos).astype(u.dtype)
        if axis_name is not None:
            local_sum = jax.lax.psum(local_sum, axis_name)
            local_count = jax.lax.psum(local_count, axis_name)
        return local_sum / jnp.maximum(local_count, 1.0)
