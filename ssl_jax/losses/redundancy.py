"""Redundancy-reduction losses: statistics of the batch, decorrelated across embedding dimensions.

:func:`barlow_twins_loss` / :func:`barlow_twins_terms` (Barlow Twins: the cross-correlation of
the two views' standardised embeddings is pushed to the identity) and :func:`vicreg_loss` /
:func:`vicreg_terms` (VICReg: invariance, a variance hinge and a covariance penalty, with no
normalisation of the embeddings).

Both are functions of per-dimension statistics of the GLOBAL batch (means, variances, the
``[D, D]`` cross-correlation or covariance), never of single rows. Under plain ``jax.jit`` on a
batch-sharded array XLA reduces the local partial sums; under ``jax.shard_map``/``jax.pmap`` with
``axis_name`` each device forms the partial sums of its local rows and ``psum``-s them (a
``[D, D]`` all-reduce, as the official implementations all-reduce the correlation matrix), so
every device gets the global-batch value, with the gradient conventions of :mod:`ssl_jax.losses`.
"""

from __future__ import annotations

from collections.abc import Hashable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from ssl_jax.losses._batch import _as_float, _check_pair, _global_size

__all__ = ["barlow_twins_loss", "barlow_twins_terms", "vicreg_loss", "vicreg_terms"]

# Barlow Twins standardises each dimension like the official code's BatchNorm1d(affine=False) in
# training mode: biased (1/N) variance, and this eps added to it under the square root.
_BN_EPS = 1e-5

# HIGHEST for the [D, N] x [N, D] contractions: a TF32/bf16-pass matmul on GPU would add ~1e-3
# relative error to every correlation, the size of the off-diagonal entries being penalised.
_PRECISION = jax.lax.Precision.HIGHEST


def _check_coefficient(value: ArrayLike, name: str, *, positive: bool = False) -> None:
    """Raise ValueError unless value is a real scalar, >= 0 (> 0 if positive) when concrete."""
    if np.ndim(value) != 0:
        raise ValueError(
            f"{name} must be a scalar; got shape {np.shape(value)} (jax.vmap over the values to "
            "compare several)."
        )
    if np.iscomplexobj(value):
        raise ValueError(f"{name} must be a real number; got {value!r}.")
    if isinstance(value, jax.core.Tracer):  # a traced (scheduled) value has no value to check
        return
    if not (value > 0 if positive else value >= 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}; got {value}.")


def _inputs(z1: ArrayLike, z2: ArrayLike) -> tuple[jax.Array, jax.Array]:
    a, b = _as_float(z1, "z1"), _as_float(z2, "z2")
    _check_pair(a, b, ("z1", "z2"))
    return a, b


def _global_sum(local_sum: jax.Array, axis_name: Hashable | None) -> jax.Array:
    return local_sum if axis_name is None else jax.lax.psum(local_sum, axis_name)


def _center(z: jax.Array, n_global: int, axis_name: Hashable | None) -> jax.Array:
    """Subtract the per-dimension mean over the global batch."""
    return z - _global_sum(jnp.sum(z, axis=0), axis_name) / n_global


def _explicitly_sharded_rows(x: jax.Array) -> NamedSharding | None:
    """A replicated sharding on x's mesh if x's rows are sharded over an Explicit mesh axis."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    spec = getattr(sharding, "spec", None)
    if not spec or spec[0] is None:
        return None
    rows = spec[0] if isinstance(spec[0], tuple) else (spec[0],)
    types = dict(zip(sharding.mesh.axis_names, sharding.mesh.axis_types, strict=True))
    if any(types.get(axis) == AxisType.Explicit for axis in rows):
        return NamedSharding(sharding.mesh, P())
    return None


def _row_contraction(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a^T b``: ``[n, D] x [n, E] -> [D, E]``, summed over the (local) rows.

    On a mesh with Explicit axes (``jax.make_mesh``'s default) a contraction over a sharded batch
    axis has no implied output sharding and raises a ShardingTypeError unless one is given: the
    sum over the batch is replicated (XLA all-reduces the per-device partial products). On Auto
    meshes, inside ``shard_map``/``pmap`` and without a mesh, no sharding is given.
    """
    out_sharding = _explicitly_sharded_rows(a) or _explicitly_sharded_rows(b)
    return jnp.einsum("nd,ne->de", a, b, precision=_PRECISION, out_sharding=out_sharding)


def _off_diagonal_square_sum(c: jax.Array) -> jax.Array:
    eye = jnp.eye(c.shape[0], dtype=bool)
    return jnp.sum(jnp.where(eye, 0.0, c) ** 2)


def barlow_twins_loss(
    z1: ArrayLike,
    z2: ArrayLike,
    *,
    lambda_: ArrayLike = 0.0051,
    axis_name: Hashable | None = None,
) -> jax.Array:
    r"""Barlow Twins loss: the cross-correlation of the two views pushed to the identity.

    Each of the ``D`` dimensions of ``z1`` and of ``z2`` is standardised over the batch, giving
    ``z1n`` and ``z2n``; with the ``[D, D]`` cross-correlation ``C = z1n^T z2n / N``,

    .. math::
      \mathcal{L} = \sum_i (1 - C_{ii})^2 + \lambda \sum_i \sum_{j \ne i} C_{ij}^2 .

    Variance convention: as the official code's ``BatchNorm1d(affine=False)`` (training mode,
    synchronised across devices), each dimension is centred by its batch mean and divided by
    ``sqrt(var + 1e-5)`` with the BIASED variance ``var = mean((z - mean)^2)``; so ``C_ii`` of
    identical views is ``var / (var + 1e-5)``, just below 1, and a constant dimension gives zeros
    instead of NaN. (The paper's pseudo-code writes ``z.std(0)``, PyTorch's unbiased estimate,
    without eps; the difference is a factor ``(N - 1) / N`` in every ``C_ij``.) The loss is not
    divided by ``D``, as in the paper: its scale grows with the embedding width.

    With ``axis_name``, inside ``jax.shard_map`` or ``jax.pmap``, each device passes its local
    rows; the means, variances and ``C`` are those of the GLOBAL batch (``psum`` of the local sums,
    divided by the global ``N``), and every device gets the same value and the global gradients.

    References:
      Zbontar et al., `Barlow Twins: Self-Supervised Learning via Redundancy Reduction
      <https://arxiv.org/abs/2103.03230>`_, 2021 (Algorithm 1; Eq. 1).

    Args:
      z1: ``[N, D]`` embeddings of the first views (local rows ``[n, D]`` with ``axis_name``).
      z2: ``[N, D]`` embeddings of the second views, in the same image order.
      lambda_: weight ``>= 0`` of the off-diagonal (redundancy reduction) term; 0.0051 in the
        paper's ImageNet recipe (8192-d projector). May be traced.
      axis_name: the mapped axis of ``shard_map``/``pmap`` to reduce the statistics across, or
        None.

    Returns:
      A float32 scalar ``>= 0`` (float64 for float64 inputs); bfloat16 inputs are cast up first.

    Raises:
      ValueError: if ``z1`` or ``z2`` is not 2-D, is empty or is complex, if their shapes differ,
        or if ``lambda_`` is not a real scalar or (when concrete) is negative.

    Examples:
      >>> import jax.numpy as jnp
      >>> z = jnp.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])  # standardised
      >>> round(float(barlow_twins_loss(z, z)), 6)  # C = I (up to eps): nothing to reduce
      0.0
      >>> float(barlow_twins_loss(z, z[:, ::-1]))  # C = [[0, 1], [1, 0]]: 2 + lambda * 2
      2.01019...
    """
    with jax.named_scope("barlow_twins_loss"):
        return barlow_twins_terms(z1, z2, lambda_=lambda_, axis_name=axis_name)["loss"]


def barlow_twins_terms(
    z1: ArrayLike,
    z2: ArrayLike,
    *,
    lambda_: ArrayLike = 0.0051,
    axis_name: Hashable | None = None,
) -> dict[str, jax.Array]:
    r"""Barlow Twins loss and its two unweighted terms, for logging: see
    :func:`barlow_twins_loss`.

    Returns:
      A dict of float32 scalars (float64 for float64 inputs): ``"loss"`` (the value of
      :func:`barlow_twins_loss`, ``on_diagonal + lambda_ * off_diagonal``), ``"on_diagonal"``
      (``sum_i (1 - C_ii)^2``, the invariance term) and ``"off_diagonal"`` (``sum_{i != j}
      C_ij^2``, the redundancy term, unweighted).

    Raises:
      ValueError: as :func:`barlow_twins_loss`.

    Examples:
      >>> import jax.numpy as jnp
      >>> z = jnp.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
      >>> terms = barlow_twins_terms(z, z[:, ::-1])  # C = [[0, 1], [1, 0]]
      >>> {k: round(float(v), 4) for k, v in sorted(terms.items())}
      {'loss': 2.0102, 'off_diagonal': 2.0, 'on_diagonal': 2.0}
    """
    with jax.named_scope("barlow_twins_terms"):
        _check_coefficient(lambda_, "lambda_")
        a, b = _inputs(z1, z2)
        n = _global_size(a.shape[0], axis_name)

        def standardise(z):
            zc = _center(z, n, axis_name)
            var = _global_sum(jnp.sum(zc * zc, axis=0), axis_name) / n
            return zc * jax.lax.rsqrt(var + jnp.asarray(_BN_EPS, z.dtype))

        c = _global_sum(_row_contraction(standardise(a), standardise(b)), axis_name) / n
        on_diag = jnp.sum((1.0 - jnp.diagonal(c)) ** 2)
        off_diag = _off_diagonal_square_sum(c)
        loss = on_diag + jnp.asarray(lambda_, c.dtype) * off_diag
        return {"loss": loss, "on_diagonal": on_diag, "off_diagonal": off_diag}


def vicreg_terms(
    z1: ArrayLike,
    z2: ArrayLike,
    *,
    sim_coeff: ArrayLike = 25.0,
    std_coeff: ArrayLike = 25.0,
    cov_coeff: ArrayLike = 1.0,
    eps: ArrayLike = 1e-4,
    axis_name: Hashable | None = None,
) -> dict[str, jax.Array]:
    r"""VICReg loss and its three unweighted terms, for logging: see :func:`vicreg_loss`.

    Returns:
      A dict of float32 scalars (float64 for float64 inputs): ``"loss"`` (the value of
      :func:`vicreg_loss`, ``sim_coeff * invariance + std_coeff * variance + cov_coeff *
      covariance``) and the unweighted ``"invariance"``, ``"variance"`` (the two branches'
      average) and ``"covariance"`` (the two branches' sum). For the gradient and the metrics
      from one computation, differentiate ``lambda z1, z2: (t := vicreg_terms(z1, z2))["loss"],
      t`` with ``jax.value_and_grad(..., has_aux=True)``.

    Raises:
      ValueError: as :func:`vicreg_loss`.

    Examples:
      >>> import jax.numpy as jnp
      >>> z = jnp.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
      >>> terms = vicreg_terms(z, 0.5 * z)  # stds 1.15 and 0.58, diagonal covariances
      >>> {k: round(float(v), 4) for k, v in sorted(terms.items())}
      {'covariance': 0.0, 'invariance': 0.25, 'loss': 11.532, 'variance': 0.2113}
    """
    with jax.named_scope("vicreg_terms"):
        coeffs = {"sim_coeff": sim_coeff, "std_coeff": std_coeff, "cov_coeff": cov_coeff}
        for name, value in coeffs.items():
            _check_coefficient(value, name)
        _check_coefficient(eps, "eps", positive=True)
        a, b = _inputs(z1, z2)
        n, d = _global_size(a.shape[0], axis_name), a.shape[1]
        if n < 2:
            raise ValueError(
                "vicreg needs a global batch of at least 2 rows (its variance and covariance "
                f"divide by N - 1); got N = {n}: use a larger batch."
            )
        dtype = a.dtype
        diff = a - b
        invariance = _global_sum(jnp.sum(diff * diff), axis_name) / (n * d)

        def variance_and_covariance(z):
            zc = _center(z, n, axis_name)
            cov = _global_sum(_row_contraction(zc, zc), axis_name) / (n - 1)
            # The variances are the covariance's diagonal: no second reduction over the batch.
            std = jnp.sqrt(jnp.diagonal(cov) + jnp.asarray(eps, dtype))
            return jnp.mean(jax.nn.relu(1.0 - std)), _off_diagonal_square_sum(cov) / d

        var1, cov1 = variance_and_covariance(a)
        var2, cov2 = variance_and_covariance(b)
        # Halved as in the official code (the paper's Algorithm 1 sums the two branches).
        variance = (var1 + var2) / 2
        covariance = cov1 + cov2
        loss = (
            jnp.asarray(sim_coeff, dtype) * invariance
            + jnp.asarray(std_coeff, dtype) * variance
            + jnp.asarray(cov_coeff, dtype) * covariance
        )
        return {
            "loss": loss,
            "invariance": invariance,
            "variance": variance,
            "covariance": covariance,
        }


def vicreg_loss(
    z1: ArrayLike,
    z2: ArrayLike,
    *,
    sim_coeff: ArrayLike = 25.0,
    std_coeff: ArrayLike = 25.0,
    cov_coeff: ArrayLike = 1.0,
    eps: ArrayLike = 1e-4,
    axis_name: Hashable | None = None,
) -> jax.Array:
    r"""VICReg loss: variance-invariance-covariance regularisation of two views' embeddings.

    ``sim_coeff * s + std_coeff * v + cov_coeff * c`` with, for ``[N, D]`` embeddings:

    * invariance ``s``: the mean squared error of ``z1`` and ``z2``, over rows and dimensions;
    * variance ``v``: per branch, the mean over dimensions of ``relu(1 - sqrt(var_j + eps))``,
      with the UNBIASED (``N - 1``) batch variance; the two branches are AVERAGED, as in the
      official code (``std_loss / 2 + ...``), not summed as in the paper's Algorithm 1: with this
      function, the paper's pseudo-code is ``std_coeff`` doubled. The published coefficients
      (25, 25, 1) were tuned with the official code, hence this choice;
    * covariance ``c``: per branch, the sum of the squared off-diagonal entries of the ``[D, D]``
      covariance matrix (``N - 1``), divided by ``D``; the two branches are summed (as in both the
      paper and the official code).

    No normalisation is applied to the embeddings. ``eps`` keeps the gradient of the square root
    finite for a collapsed (zero-variance) dimension. Use :func:`vicreg_terms` to get the three
    terms as metrics along with the loss.

    With ``axis_name``, inside ``jax.shard_map`` or ``jax.pmap``, each device passes its local
    rows; the MSE, means, variances and covariances are those of the GLOBAL batch (``psum`` of the
    local sums, divided by the global count), and every device gets the same value and the global
    gradients.

    References:
      Bardes, Ponce & LeCun, `VICReg: Variance-Invariance-Covariance Regularization for
      Self-Supervised Learning <https://arxiv.org/abs/2105.04906>`_, ICLR 2022 (Algorithm 1).

    Args:
      z1: ``[N, D]`` embeddings of the first views (local rows ``[n, D]`` with ``axis_name``),
        ``N >= 2``.
      z2: ``[N, D]`` embeddings of the second views, in the same image order.
      sim_coeff: weight ``>= 0`` of the invariance term (lambda in the paper).
      std_coeff: weight ``>= 0`` of the variance term (mu in the paper).
      cov_coeff: weight ``>= 0`` of the covariance term (nu in the paper).
      eps: ``> 0``, added to each variance under the square root.
      axis_name: the mapped axis of ``shard_map``/``pmap`` to reduce the statistics across, or
        None.

    Returns:
      A float32 scalar ``>= 0`` (float64 for float64 inputs); bfloat16 inputs are cast up first.

    Raises:
      ValueError: if ``z1`` or ``z2`` is not 2-D, is empty or is complex, if their shapes differ,
        if the global batch has fewer than 2 rows, or if a coefficient is not a real scalar or
        (when concrete) is negative, or ``eps`` is not positive.

    Examples:
      >>> import jax.numpy as jnp
      >>> z = 2.0 * jnp.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
      >>> float(vicreg_loss(z, z))  # identical, std > 1, uncorrelated dimensions
      0.0
      >>> float(vicreg_loss(z, z + 1.0))  # a shift: invariance only, 25 * 1
      25.0
    """
    with jax.named_scope("vicreg_loss"):
        return vicreg_terms(
            z1,
            z2,
            sim_coeff=sim_coeff,
            std_coeff=std_coeff,
            cov_coeff=cov_coeff,
            eps=eps,
            axis_name=axis_name,
        )["loss"]
