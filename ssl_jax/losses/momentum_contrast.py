"""Momentum contrast: queries of the online network against keys of a momentum network.

:func:`moco_v3_loss` (MoCo v3: the keys of the other view, all in the current global batch, no
queue). Each device scores its own queries against the keys of the global batch (gathered under
``axis_name``, replicated under ``jit`` on a mesh); the keys get no gradient.
"""

from __future__ import annotations

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

__all__ = ["moco_v3_loss"]

# As in nt_xent: a TF32/bf16-pass matmul error in a cosine is multiplied by 1 / temperature.
_PRECISION = jax.lax.Precision.HIGHEST


def moco_v3_loss(
    q1: ArrayLike,
    q2: ArrayLike,
    k1: ArrayLike,
    k2: ArrayLike,
    *,
    temperature: ArrayLike = 0.2,
    axis_name: Hashable | None = None,
) -> jax.Array:
    r"""MoCo v3 symmetrised contrastive loss, ``ctr(q1, k2) + ctr(q2, k1)``.

    ``q1, q2`` are the online network's outputs (predictor) for the two views of each image,
    ``k1, k2`` the momentum network's outputs (projector) for the same views. With ``q`` and ``k``
    L2-normalised and ``k`` under ``stop_gradient``,

    .. math::
      \mathrm{ctr}(q, k) = 2 \tau \cdot \frac{1}{N} \sum_i
        -\log \frac{\exp(q_i \cdot k_i / \tau)}{\sum_{j=1}^{N} \exp(q_i \cdot k_j / \tau)}

    i.e. ``2 tau`` times the cross-entropy of the logits ``q k^T / tau`` with the matching row as
    the label; the candidates are the keys of the whole GLOBAL batch (no queue), the positive
    included. The ``2 tau`` factor is the paper's (Algorithm 1), kept so that values and
    learning rates compare with the official code.

    Without ``axis_name`` the queries are scored against all keys (under ``jax.jit`` on a
    mesh-sharded batch, Explicit or Auto mesh axes, the queries stay sharded and the keys are
    all-gathered). With ``axis_name``, inside ``jax.shard_map`` or ``jax.pmap``, each device
    passes its local ``[n, D]`` rows: the keys are all-gathered over the axis (the official
    code's ``concat_all_gather``, labels offset by the device's rank) and each device scores its
    own queries; the value, identical on every device, and the gradients are those of the loss
    over the global batch (the gradient conventions of :mod:`ssl_jax.losses`).

    References:
      Chen, Xie & He, `An Empirical Study of Training Self-Supervised Vision Transformers
      <https://arxiv.org/abs/2104.02057>`_, 2021 (Algorithm 1).

    Args:
      q1: ``[N, D]`` queries of the first views (local rows ``[n, D]`` with ``axis_name``).
      q2: ``[N, D]`` queries of the second views, in the same image order.
      k1: ``[N, D]`` keys of the first views (momentum network); no gradient flows into them.
      k2: ``[N, D]`` keys of the second views.
      temperature: a real scalar ``tau > 0`` (the paper uses 0.2); it may be traced.
      axis_name: the mapped axis of ``shard_map``/``pmap`` to gather keys across, or None.

    Returns:
      A float32 scalar (float64 if any input is float64); bfloat16 inputs are cast up first.

    Raises:
      ValueError: if an input is not 2-D, is empty or is complex, if the four shapes differ, or
        if ``temperature`` is not a real scalar or is ``<= 0`` (checked when concrete).

    Examples:
      >>> import jax.numpy as jnp
      >>> e = jnp.eye(2)  # each query matches its key (cos 1) and is orthogonal to the other
      >>> float(moco_v3_loss(e, e, e, e, temperature=0.5))  # 2 * 2 tau * log(1 + exp(-1 / tau))
      0.25385...
    """
    with jax.named_scope("moco_v3_loss"):
        _check_temperature(temperature)
        names = ("q1", "q2", "k1", "k2")
        q1, q2, k1, k2 = (
            _as_float(x, name) for x, name in zip((q1, q2, k1, k2), names, strict=True)
        )
        _check_pair(q1, q2, ("q1", "q2"))
        _check_pair(q1, k1, ("q1", "k1"))
        _check_pair(q1, k2, ("q1", "k2"))
        # [2, n, D], view first: queries of view 1 meet keys of view 2 and vice versa. jnp.stack
        # promotes to the widest of the dtypes (float64 if any input is).
        q = jnp.stack([_l2_normalize(q1), _l2_normalize(q2)])
        k = jax.lax.stop_gradient(jnp.stack([_l2_normalize(k2), _l2_normalize(k1)]))
        q, k = q.astype(jnp.result_type(q, k)), k.astype(jnp.result_type(q, k))
        temperature = jnp.asarray(temperature, q.dtype)
        n = q.shape[1]
        keys = _gather_rows(k, axis_name)  # [2, N, D]: the candidates of every local query
        logits = jnp.einsum("vnd,vmd->vnm", q, keys, precision=_PRECISION) / temperature
        # The label of local query i is the global row of its own key; that logit is computed
        # from the local key directly rather than picked out of the gathered ones by index.
        pos = jnp.sum(q * k, axis=-1) / temperature
        cross_entropy = jax.nn.logsumexp(logits, axis=-1) - pos  # [2, n]
        # Sum over both views of the mean over N: ctr(q1, k2) + ctr(q2, k1).
        local_sum = 2.0 * temperature * jnp.sum(cross_entropy)
        return _global_mean(local_sum, _global_size(n, axis_name), axis_name)
