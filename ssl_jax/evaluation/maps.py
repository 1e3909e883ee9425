"""2-D maps of features: PCA (float64 NumPy SVD) and exact t-SNE in JAX.

t-SNE (van der Maaten & Hinton 2008, "Visualizing Data using t-SNE", JMLR 9) is the exact
O(N^2) algorithm, jitted end to end: perplexity-calibrated Gaussian affinities by a per-point
binary search run on every row at once, a symmetrised joint P, Student-t Q, early exaggeration
and gradient descent with momentum and per-coordinate gains as in van der Maaten's reference
implementation (bhtsne). It is meant for a few thousand points (1000 iterations on 2,000 points
take ~5 s on a quiet 2-core CPU); subsample larger sets (``plots.balanced_subsample``).

    y = tsne(features, perplexity=30)     # [N, F] -> float32 [N, 2]
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# --- PCA ----------------------------------------------------------------------------------


def pca(x: np.ndarray, num_components: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Principal components by an SVD of the centred data, in float64.

    Args:
      x: [N, F] features.
      num_components: k <= min(N, F).

    Returns:
      ``(projections, explained_variance_ratio)``: float64 [N, k] coordinates on the first k
      principal axes (largest variance first) and float64 [k], each axis's share of the total
      variance. Signs are fixed so that each axis's largest-magnitude loading is positive
      (SVD signs are otherwise arbitrary and would flip maps between runs).
    """
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"pca needs [N, F] features with N >= 2, got shape {x.shape}")
    if not 1 <= num_components <= min(x.shape):
        raise ValueError(f"num_components must be in [1, {min(x.shape)}], got {num_components}")
    if not np.all(np.isfinite(x)):
        raise ValueError("pca got non-finite features")
    xc = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    vt = vt[:num_components]
    signs = np.sign(vt[np.arange(num_components), np.argmax(np.abs(vt), axis=1)])
    vt = vt * np.where(signs == 0, 1.0, signs)[:, None]
    total = np.sum(s**2)
    ratio = s[:num_components] ** 2 / total if total > 0 else np.zeros(num_components)
    return xc @ vt.T, ratio


# --- t-SNE --------------------------------------------------------------------------------


def _squared_distances(x: jax.Array) -> jax.Array:
    x = x - jnp.mean(x, axis=0)  # centring first keeps the Gram-matrix form accurate in float32
    sq = jnp.sum(x * x, axis=1)
    return jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)


@functools.partial(jax.jit, static_argnames=("max_steps",))
def _affinities(x, perplexity, tol, *, max_steps):
    n = x.shape[0]
    off = ~jnp.eye(n, dtype=bool)
    d = _squared_distances(x)
    # P is invariant to the scale of the distances (beta absorbs it); dividing by the mean makes
    # beta = 1 a good start whatever the feature scale. Subtracting each row's smallest distance
    # leaves the row's normalised P unchanged but keeps exp() from underflowing.
    d = d / jnp.maximum(jnp.sum(jnp.where(off, d, 0.0)) / (n * (n - 1)), 1e-30)
    d = d - jnp.min(jnp.where(off, d, jnp.inf), axis=1, keepdims=True)
    target = jnp.log(perplexity)  # in nats: perplexity = 2^H(bits) = e^H(nats)

    def row_stats(beta):
        p = jnp.where(off, jnp.exp(-d * beta[:, None]), 0.0)
        z = jnp.sum(p, axis=1)
        entropy = jnp.log(z) + beta * jnp.sum(d * p, axis=1) / z
        return p / z[:, None], entropy

    def cond(carry):
        step, _, _, _, entropy = carry
        return (step < max_steps) & jnp.any(jnp.abs(entropy - target) > tol)

    def body(carry):
        # Entropy falls as beta (the precision 1 / 2 sigma^2) rises: bisect each row's beta,
        # doubling or halving until the target is bracketed (van der Maaten's x2p).
        step, beta, lo, hi, entropy = carry
        too_flat = entropy > target
        lo = jnp.where(too_flat, beta, lo)
        hi = jnp.where(too_flat, hi, beta)
        beta = jnp.where(
            too_flat,
            jnp.where(jnp.isinf(hi), beta * 2.0, (beta + hi) / 2.0),
            jnp.where(lo == 0.0, beta / 2.0, (beta + lo) / 2.0),
        )
        return step + 1, beta, lo, hi, row_stats(beta)[1]

    beta = jnp.ones(n, x.dtype)
    init = (0, beta, jnp.zeros(n, x.dtype), jnp.full(n, jnp.inf, x.dtype), row_stats(beta)[1])
    _, beta, _, _, _ = jax.lax.while_loop(cond, body, init)
    return row_stats(beta)[0]


def perplexity_affinities(
    x: np.ndarray | jax.Array, perplexity: float = 30.0, *, tol: float = 1e-5, max_steps: int = 100
) -> jax.Array:
    """The conditional affinities p_{j|i} of t-SNE (van der Maaten & Hinton 2008, eq. 1).

    Each row i is a Gaussian over the other points, p_{j|i} ~ exp(-beta_i ||x_i - x_j||^2), whose
    precision beta_i is found by binary search so that the row's entropy is log(perplexity).

    Args:
      x: [N, F] points (float32 is used).
      perplexity: the effective number of neighbours, in (1, N - 1).
      tol: tolerance on each row's entropy, in nats.
      max_steps: bisection steps at most (all rows step together).

    Returns:
      float32 [N, N], rows summing to 1, zero diagonal.
    """
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 2:
        raise ValueError(f"perplexity_affinities needs [N, F] points, got shape {x.shape}")
    n = x.shape[0]
    if not 1.0 < perplexity < n - 1:
        raise ValueError(f"perplexity must be in (1, N - 1) = (1, {n - 1}), got {perplexity}")
    return _affinities(x, jnp.float32(perplexity), jnp.float32(tol), max_steps=max_steps)


def kl_gradient(p: jax.Array, y: jax.Array) -> jax.Array:
    """The gradient of KL(P || Q) with respect to the map points (van der Maaten & Hinton 2008,
    eq. 5): p [N, N] joint affinities (symmetric, zero diagonal), y [N, 2] -> [N, 2].

    dC/dy_i = 4 sum_j (p_ij - q_ij) (1 + |y_i - y_j|^2)^-1 (y_i - y_j), q the Student-t
    affinities of the map."""
    n = y.shape[0]
    # Coordinate differences rather than the Gram form: exact near the diagonal, and the
    # Student-t kernel then fuses into one pass with no [N, N] matmul output to store.
    dx = y[:, 0, None] - y[None, :, 0]
    dy = y[:, 1, None] - y[None, :, 1]
    off = ~jnp.eye(n, dtype=bool)
    num = jnp.where(off, 1.0 / (1.0 + dx * dx + dy * dy), 0.0)  # (1 + |y_i - y_j|^2)^-1
    w = (p - num / jnp.sum(num)) * num  # (p_ij - q_ij) num_ij
    # = 4 (y_i sum_j w_ij - sum_j w_ij y_j): one [N, N] @ [N, 3] product gives both sums, which
    # measured 2-3x faster on CPU than row reductions of w * dx and w * dy.
    wy = w @ jnp.concatenate([y, jnp.ones((n, 1), y.dtype)], axis=1)
    return 4.0 * (wy[:, 2:] * y - wy[:, :2])


@functools.partial(jax.jit, static_argnames=("num_iters", "exaggeration_iters"))
def _optimize(p, y0, learning_rate, exaggeration, *, num_iters, exaggeration_iters):
    def step(carry, i):
        y, update, gains = carry
        early = i < exaggeration_iters
        # Early exaggeration lets clusters form while points can still move far (section 3.4);
        # the momentum switch from 0.5 to 0.8 coincides with its end, as in bhtsne.
        grad = kl_gradient(jnp.where(early, exaggeration, 1.0) * p, y)
        momentum = jnp.where(early, 0.5, 0.8)
        # Per-coordinate gains grow while the gradient keeps pointing against the last update
        # and shrink when it changes sign (Jacobs 1988, as in the reference implementation).
        gains = jnp.where((grad > 0) != (update > 0), gains + 0.2, gains * 0.8)
        gains = jnp.maximum(gains, 0.01)
        update = momentum * update - learning_rate * gains * grad
        y = y + update
        return (y - jnp.mean(y, axis=0), update, gains), None

    init = (y0, jnp.zeros_like(y0), jnp.ones_like(y0))
    (y, _, _), _ = jax.lax.scan(step, init, jnp.arange(num_iters))
    return y


def tsne(
    x: np.ndarray | jax.Array,
    *,
    perplexity: float = 30.0,
    num_iters: int = 1000,
    seed: int = 0,
    init: str = "pca",
    learning_rate: float | None = None,
    early_exaggeration: float = 12.0,
    exaggeration_iters: int = 250,
) -> np.ndarray:
    """Exact t-SNE (van der Maaten & Hinton 2008): [N, F] points -> float32 [N, 2] map.

    Args:
      x: [N, F] points; O(N^2) time and memory, so N up to a few thousand.
      perplexity: effective neighbours per point, in (1, N - 1).
      num_iters: gradient-descent iterations (including the exaggerated ones).
      seed: the random initialisation's key (only used with ``init='random'``).
      init: 'pca' (the first two principal components scaled to std 1e-4: deterministic and
        keeps the global layout) or 'random' (N(0, 1e-4^2)).
      learning_rate: step size; default max(N / early_exaggeration / 4, 50) (Belkina et al.
        2019, as scikit-learn's 'auto'; the 4 is the factor in the gradient).
      early_exaggeration, exaggeration_iters: P is multiplied by this for the first iterations.

    Returns:
      float32 [N, 2], centred.
    """
    x = np.asarray(x, np.float32)
    if x.ndim != 2 or not np.all(np.isfinite(x)):
        raise ValueError(f"tsne needs finite [N, F] points, got shape {x.shape}")
    n = x.shape[0]
    if init not in ("pca", "random"):
        raise ValueError(f"init must be 'pca' or 'random', got {init!r}")
    if num_iters < 1 or not 0 <= exaggeration_iters <= num_iters:
        raise ValueError(
            f"need num_iters >= 1 and 0 <= exaggeration_iters <= num_iters, got {num_iters} "
            f"and {exaggeration_iters}"
        )
    p_cond = perplexity_affinities(x, perplexity)
    p = (p_cond + p_cond.T) / (2.0 * n)  # symmetric joint P (section 3.1)
    p = jnp.maximum(p, 1e-12)
    if init == "pca" and min(x.shape) >= 2:
        y0 = pca(x, 2)[0]
        y0 = y0 / max(float(np.std(y0[:, 0])), 1e-30) * 1e-4
    else:
        y0 = 1e-4 * np.asarray(jax.random.normal(jax.random.key(seed), (n, 2)))
    lr = max(n / early_exaggeration / 4.0, 50.0) if learning_rate is None else learning_rate
    y = _optimize(
        p,
        jnp.asarray(y0, jnp.float32),
        jnp.float32(lr),
        jnp.float32(early_exaggeration),
        num_iters=num_iters,
        exaggeration_iters=exaggeration_iters,
    )
    return np.asarray(y)
