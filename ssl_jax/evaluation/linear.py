"""Linear probe: multinomial logistic regression on frozen, standardised features.

The probe is fitted full-batch with L-BFGS (optax, zoom line search) inside one ``jax.jit``:
deterministic, and every fit of a given (rows, features) shape shares one compilation (the
validation fits mask rows out with zero weights instead of slicing them away).

It converges in tens of iterations rather than hundreds because it is *preconditioned*: the
weights are parametrised as ``W = U diag(p) V`` where ``U`` holds the eigenvectors of the
features' second-moment matrix (eigenvalues ``d``) and ``p = (d / C + l2) ** -1/2`` roughly
inverts the Hessian of the loss (softmax curvature ~1/C per class). This is an exact change of
variables: since ``U`` is orthogonal, ``||W||^2 = ||diag(p) V||^2`` and the minimiser is the same
``W``; only the conditioning improves (on Fashion-MNIST pixels, 30 preconditioned iterations
match the test accuracy of 300 plain ones to within 0.1%).

The L2 strength is chosen on a class-balanced validation split carved out of the labelled subset
(never the test set), then the probe is refitted on the whole subset with it. The choice is the
lowest validation cross-entropy (as glmnet's cross-validation chooses by deviance), not the best
validation top-1: with 1% of Fashion-MNIST's labels the split holds 120 images, whose top-1 moves
in steps of 0.8 points and ties much of the grid, and choosing by it sometimes landed on a weak
L2 that scored ~1 point lower on the test set. Measured on the CPU demo's checkpoint (RESULTS.md,
"Choosing the probe's L2 by validation cross-entropy"): over 10 subsets at 1% the mean test top-1
went from 82.32 to 82.69 (the best grid value per subset in hindsight: 82.86), over 6 at 2% from
84.27 to 84.56; ``select_by='top1'`` keeps the old choice. (``cv_folds=5`` chooses by 5-fold
cross-validation instead, up to ``cv_max_rows`` labels. By cross-entropy it gave the same means as
the one split, 82.74 and 84.55, at five times the fits, so it is not the default.)

The candidates are fitted as a regularisation path, strongest first, each fit warm-started from
the one before. The preconditioner helps least at weak L2 on near-separable data (few labels,
wide features): there the softmax saturates, the curvature falls far below 1/C, and a fit from
zero is still far from its minimum after tens of iterations. (So a candidate's validation score
depends a little on the grid before it: where its fit starts. With fits run to convergence it
would not.)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

from ssl_jax.evaluation.metrics import topk_accuracy
from ssl_jax.evaluation.splits import validation_folds, validation_split

DEFAULT_L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
PRECONDITIONER_ROWS = 8192  # rows used to estimate the feature second moments


@dataclasses.dataclass(frozen=True)
class FeatureStats:
    """What the probe derives from the unlabelled training features, once per representation:
    per-feature mean and std (constant features get std 1), and the eigenvectors ``basis``
    [F, F] and eigenvalues ``eigvals`` [F] of the standardised features' second moments
    (estimated from at most ``PRECONDITIONER_ROWS`` evenly spaced rows: they only set the
    preconditioner, never the solution)."""

    mean: np.ndarray
    std: np.ndarray
    basis: np.ndarray
    eigvals: np.ndarray

    @classmethod
    def of(cls, train_x: np.ndarray, max_rows: int = PRECONDITIONER_ROWS) -> FeatureStats:
        x = np.asarray(train_x, np.float32)
        mean = x.mean(axis=0, dtype=np.float64)
        std = x.std(axis=0, dtype=np.float64)
        std = np.where(std > 1e-8 * max(1.0, float(np.abs(mean).max(initial=0.0))), std, 1.0)
        stats = cls(mean.astype(np.float32), std.astype(np.float32), None, None)
        rows = np.linspace(0, len(x) - 1, min(len(x), max_rows)).astype(np.int64)
        basis, eigvals = preconditioner(stats.standardize(x[rows]), max_rows)
        return dataclasses.replace(stats, basis=basis, eigvals=eigvals)

    def standardize(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float32) - self.mean) / self.std


def preconditioner(x: np.ndarray, max_rows: int = PRECONDITIONER_ROWS):
    """Eigenvectors U [F, F] and eigenvalues d [F] of x^T x / n for x [n, F], estimated from at
    most ``max_rows`` evenly spaced rows (an estimate suffices: it only speeds up the fit)."""
    x = np.asarray(x, np.float32)
    if len(x) > max_rows:
        x = x[np.linspace(0, len(x) - 1, max_rows).astype(np.int64)]
    d, u = _moment_eigh(jnp.asarray(x))
    return np.asarray(u), np.maximum(np.asarray(d), 0.0)


@jax.jit
def _moment_eigh(x):
    # On the default device: at 4,096 features JAX's eigh took 4.4 s on the 2-core CPU against
    # NumPy's 9.7 s, and a GPU's solver takes a fraction of either. float32 (~2x faster than
    # float64), since a preconditioner only needs to be roughly right: the minimiser does not
    # depend on it.
    moment = jnp.matmul(x.T, x, precision=_HIGHEST) / max(x.shape[0], 1)
    return jnp.linalg.eigh(moment)


_HIGHEST = jax.lax.Precision.HIGHEST


@jax.jit
def _rotate(x, basis):
    """``x @ U``: the features in the preconditioner's eigenbasis (once per probe, not per fit)."""
    return jnp.matmul(x, basis, precision=_HIGHEST)


# Rows whose one-off rotation (rows x F x F, compute-bound) costs about what one fit spends on
# rotating the weights instead (~150 skinny F x F x C products, memory-bound: U is re-read each
# time). Both scale with F^2; measured on the 2-core CPU at F = 4,096: 14.7 s to rotate 60k rows,
# 5.6 s more per unrotated fit.
_ROWS_PER_FIT = 20_000


def _rotation_pays(rows: int, fits: int) -> bool:
    """Rotate x once for ``fits`` fits of the same rows, or rotate the weights in each fit."""
    return rows <= fits * _ROWS_PER_FIT


@jax.custom_vjp
def _project(x, xt, w):
    """``x @ w`` for x [N, F] and w [F, C], whose gradient for ``w`` is computed as ``xt @ g``
    with ``xt`` = x^T laid out [F, N]. Autodiff would compute it as a dot contracting x's first
    axis, which XLA:CPU ran ~60x slower: 5.0 s against 0.09 s for 60,000 x 4,096 features and 10
    classes on the 2-core CPU (NumPy: 0.11 s). No gradient flows to x or xt."""
    return x @ w


def _project_fwd(x, xt, w):
    return x @ w, xt


def _project_bwd(xt, g):
    return None, None, xt @ g


_project.defvjp(_project_fwd, _project_bwd)


@functools.partial(jax.jit, static_argnames=("num_classes", "is_rotated"))
def _lbfgs_fit(x, y, weights, l2, basis, eigvals, max_iter, w0, b0, *, num_classes, is_rotated):
    # With W = U diag(p) V the logits are x @ U diag(p) V. If the caller rotated x once
    # (x = x_orig @ U, is_rotated) they are (x * p) @ V: N*F*C per evaluation. Otherwise U is
    # applied to the weights, (x @ (U (p V))): F*F*C more per evaluation but no N*F*F rotation.
    precond = jax.lax.rsqrt(jnp.maximum(eigvals / num_classes + l2, 1e-8))  # [F]
    # x^T materialised once per fit (XLA would fold a plain transpose back into the dot).
    xt = jax.lax.optimization_barrier(x.T)

    def loss(params):
        w = precond[:, None] * params["v"]
        if not is_rotated:  # full float32, as _rotate: the two paths must agree on every backend
            w = jnp.matmul(basis, w, precision=_HIGHEST)
        logits = _project(x, xt, w) + params["b"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        data = jnp.sum(weights * ce) / jnp.sum(weights)
        return data + 0.5 * l2 * jnp.sum((precond[:, None] * params["v"]) ** 2)

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(params, updates), state

    def keep_going(carry):
        _, state = carry
        count = otu.tree_get(state, "count")
        grad_norm = otu.tree_norm(otu.tree_get(state, "grad"))
        # Stop at max_iter, or once converged (a zero gradient would stall the line search).
        return (count == 0) | ((count < max_iter) & (grad_norm > 1e-6))

    # Start from W0 = U diag(p) V0, i.e. V0 = diag(1/p) U^T W0 (zeros: a cold start).
    v0 = jnp.matmul(basis.T, w0, precision=_HIGHEST) / precond[:, None]
    params = {"v": v0, "b": b0}
    params, _ = jax.lax.while_loop(keep_going, step, (params, opt.init(params)))
    return jnp.matmul(basis, precond[:, None] * params["v"], precision=_HIGHEST), params["b"]


def fit_logistic_regression(
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_classes: int,
    l2: float,
    weights: np.ndarray | None = None,
    max_iter: int = 50,
    preconditioner_of: tuple[np.ndarray, np.ndarray] | None = None,
    rotated: jax.Array | Literal[False] | None = None,
    init: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression, full batch: minimise
    ``sum_i w_i CE(x_i W + b, y_i) / sum_i w_i + l2 / 2 * ||W||^2`` (bias not penalised).

    Args:
      x: [N, F] features (standardise them first); y: int [N] classes in [0, num_classes).
      num_classes: C.
      l2: L2 strength (> 0).
      weights: [N] row weights (0 drops a row without changing the compiled shape); default 1.
      max_iter: L-BFGS iterations (fewer if the gradient vanishes).
      preconditioner_of: ``(basis, eigvals)`` from :func:`preconditioner` (or
        :class:`FeatureStats`) of features like x; default: computed from x's weighted rows.
      rotated: ``x @ basis`` if already computed (several fits of the same x share it), or
        ``False`` to fit without rotating x (cheaper for a single fit on many rows).
      init: ``(W0 [F, C], b0 [C])`` to start from (a warm start, e.g. the fit at a nearby L2);
        default zeros.

    Returns:
      ``(W, b)``: float32 [F, C] and [C].
    """
    if l2 <= 0:
        raise ValueError(f"l2 must be > 0, got {l2}")
    x = jnp.asarray(x, jnp.float32)  # a jax array stays on its device: pass one to fit often
    weights = np.ones(len(x), np.float32) if weights is None else np.asarray(weights, np.float32)
    if not weights.sum() > 0:
        raise ValueError("at least one row needs a positive weight")
    if preconditioner_of is None:
        preconditioner_of = preconditioner(np.asarray(x)[weights > 0])
    basis, eigvals = (jnp.asarray(a) for a in preconditioner_of)
    if rotated is None:
        rotated = _rotate(x, basis)
    shapes = ((x.shape[1], num_classes), (num_classes,))
    w0, b0 = (np.zeros(shapes[0]), np.zeros(shapes[1])) if init is None else init
    if (np.shape(w0), np.shape(b0)) != shapes:
        raise ValueError(
            f"init must be (W [F, C], b [C]) = shapes {shapes}, got "
            f"{(np.shape(w0), np.shape(b0))}: pass the (W, b) of a fit on features like x."
        )
    w, b = _lbfgs_fit(
        x if rotated is False else rotated,
        jnp.asarray(y, jnp.int32),
        jnp.asarray(weights),
        jnp.float32(l2),
        basis,
        eigvals,
        jnp.int32(max_iter),
        jnp.asarray(w0, jnp.float32),
        jnp.asarray(b0, jnp.float32),
        num_classes=num_classes,
        is_rotated=rotated is not False,
    )
    return np.asarray(w), np.asarray(b)


def _cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-np.mean(log_p[np.arange(len(y)), y]))


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    subset: np.ndarray,
    *,
    num_classes: int,
    seed: int,
    l2_grid: tuple[float, ...] = DEFAULT_L2_GRID,
    val_fraction: float = 0.2,
    max_iter: int = 50,
    stats: FeatureStats | None = None,
    max_selection_rows: int = 10_000,
    cv_folds: int = 1,
    cv_max_rows: int = 2_000,
    select_by: Literal["cross_entropy", "top1"] = "cross_entropy",
) -> dict:
    """Linear-probe accuracy of features with the labels of ``subset`` only.

    Features are standardised with the mean/std of all of ``train_x`` (the unlabelled training
    images; no labels are used), which also give the fit's preconditioner (:class:`FeatureStats`;
    pass ``stats`` to compute them once for several subsets). The L2 strength is the grid value
    with the lowest mean cross-entropy on a validation split carved from ``subset`` (ties: higher
    validation top-1, then the stronger L2; with ``select_by='top1'``, the best top-1, ties: lower
    cross-entropy, then the stronger L2); when no class has two labelled images there is nothing
    to validate on and the largest value is used. The probe is then refitted on all of ``subset``
    and scored on the test set, which plays no part in any choice. The refit keeps the chosen
    penalty per *summed* loss, ``l2 * rows``, as a fixed Gaussian prior would (and as
    scikit-learn's ``LogisticRegressionCV`` does with its ``C``): its ``l2`` per mean loss is the
    chosen one times (rows the choice was fitted on) / (labelled rows), 0.8 with the default
    split, ~0.13 for 60,000 labels chosen on a sample of 10,000.

    Args:
      train_x: [N, F] features of the whole training split; train_y: int [N] labels.
      test_x: [T, F] test features; test_y: int [T] labels.
      subset: indices into train_x of the labelled images.
      num_classes: C.
      seed: seed of the validation split.
      l2_grid: candidate L2 strengths.
      val_fraction: share of each class's labelled images held out for the choice.
      max_iter: L-BFGS iterations per fit.
      stats: ``FeatureStats.of(train_x)``, if already computed.
      max_selection_rows: above this many labelled images, the L2 choice uses a seeded random
        sample of this many of them (the final fit always uses every labelled image).
      cv_folds, cv_max_rows: ``cv_folds`` > 1 makes the choice by ``cv_folds``-fold
        cross-validation (class-stratified folds; the mean over every held-out image) instead of
        one ``val_fraction`` split, when there are at most ``cv_max_rows`` labelled images.
      select_by: what the choice optimises: ``'cross_entropy'`` (default: the lowest mean
        validation cross-entropy) or ``'top1'`` (the best validation top-1).

    Returns:
      ``{'top1', 'top5' (None if C <= 5), 'l2' (the final fit's), 'l2_selected' (the grid
      value chosen), 'select_by', 'val_top1' and 'val_ce' (the chosen value's validation top-1
      and mean cross-entropy; None without validation), 'val_by_l2' ({l2: val top-1}),
      'val_ce_by_l2' ({l2: val cross-entropy}), 'n_labels', 'n_val' (validated images, over all
      folds), 'n_selection', 'cv_folds' (1: one split)}``.
    """
    if not l2_grid:
        raise ValueError("l2_grid must not be empty")
    if select_by not in ("cross_entropy", "top1"):
        raise ValueError(f"select_by must be 'cross_entropy' or 'top1', got {select_by!r}")
    subset = np.asarray(subset, np.int64)
    stats = FeatureStats.of(train_x) if stats is None else stats
    x = stats.standardize(train_x[subset])
    y = np.asarray(train_y)[subset].astype(np.int32)
    basis = jnp.asarray(stats.basis)

    def fitter(rows, fits):
        x_dev = jnp.asarray(x[rows])  # copied to the device once for every fit
        rotate = _rotation_pays(len(rows), fits)
        return functools.partial(
            fit_logistic_regression,
            x_dev,
            num_classes=num_classes,
            max_iter=max_iter,
            preconditioner_of=(basis, stats.eigvals),
            rotated=_rotate(x_dev, basis) if rotate else False,
        )

    # The choice of L2 only needs enough labels to rank the candidates: above
    # max_selection_rows labelled images it uses a seeded random sample of them (the refit below
    # uses all), which keeps the 100%-labels probe of wide features affordable on a CPU.
    sel = np.arange(len(subset))
    if len(subset) > max_selection_rows:
        rng = np.random.default_rng(seed)
        sel = np.sort(rng.choice(len(subset), max_selection_rows, replace=False))

    # The grid is walked from the strongest L2 to the weakest, each fit starting from the one
    # before (a regularisation path, as glmnet does). Cold starts at weak L2 are far from
    # converged within max_iter: near-separable data (few labels, wide features) drives the
    # weights' norm up slowly, and on 600 labels of 4,096-d features a cold fit at l2=1e-5
    # scored 33% on validation after 50 iterations and 73% after 1,000, where the path reached
    # 81% after 50 (RESULTS.md, "Linear probe: a warm-started L2 path").
    val_by_l2: dict[float, float] = {}
    val_ce_by_l2: dict[float, float] = {}
    if cv_folds > 1 and len(sel) <= cv_max_rows:
        held = validation_folds(
            train_y, subset[sel], folds=cv_folds, seed=seed, num_classes=num_classes
        )
    else:
        _, val_idx = validation_split(
            train_y, subset[sel], fraction=val_fraction, seed=seed, num_classes=num_classes
        )
        held = [val_idx]
    masks = [np.isin(subset[sel], h) for h in held if len(h)]
    best = None
    if masks:
        fit = fitter(sel, fits=len(l2_grid) * len(masks))
        x_sel, y_sel = x[sel], y[sel]
        grid = sorted(l2_grid, reverse=True)  # exact ties keep the stronger L2
        correct, ce_sum, first_fold = dict.fromkeys(grid, 0.0), dict.fromkeys(grid, 0.0), {}
        for i, is_val in enumerate(masks):
            init = None
            x_val, y_val = x_sel[is_val], y_sel[is_val]
            weights = (~is_val).astype(np.float32)
            for l2 in grid:
                init = fit(y_sel, l2=l2, weights=weights, init=init)
                logits = x_val @ init[0] + init[1]
                acc = topk_accuracy(logits, y_val, 1) if num_classes > 1 else 1.0
                correct[l2] += acc * len(y_val)
                ce_sum[l2] += _cross_entropy(logits, y_val) * len(y_val)
                if i == 0:
                    first_fold[l2] = init
        n_val = sum(int(m.sum()) for m in masks)
        for l2 in grid:
            top1, ce = correct[l2] / n_val, ce_sum[l2] / n_val
            val_by_l2[float(l2)], val_ce_by_l2[float(l2)] = top1, ce
            key = (-ce, top1) if select_by == "cross_entropy" else (top1, -ce)
            if best is None or key > best[0]:
                best = (key, float(l2), first_fold[l2])
        chosen = best[1]
        val_top1, val_ce = val_by_l2[chosen], val_ce_by_l2[chosen]
        fitted_rows = np.mean([np.sum(~m) for m in masks])
        l2 = chosen * float(fitted_rows) / len(subset)  # the same penalty per summed loss
    else:
        chosen, val_top1, val_ce, n_val = float(max(l2_grid)), None, None, 0
        l2 = chosen

    # The final fit on every labelled image starts from the validation fit at the chosen L2.
    w, b = fitter(np.arange(len(subset)), fits=1)(y, l2=l2, init=None if best is None else best[2])
    logits = stats.standardize(test_x) @ w + b
    test_y = np.asarray(test_y)
    return {
        "top1": topk_accuracy(logits, test_y, 1),
        "top5": topk_accuracy(logits, test_y, 5),
        "l2": l2,
        "l2_selected": chosen,
        "select_by": select_by,
        "val_top1": val_top1,
        "val_ce": val_ce,
        "val_by_l2": val_by_l2,
        "val_ce_by_l2": val_ce_by_l2,
        "n_labels": int(len(subset)),
        "n_val": int(n_val),
        "n_selection": int(len(sel)),
        "cv_folds": len(masks) if len(masks) > 1 else 1,
    }
