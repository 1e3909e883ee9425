"""The linear probe's L2 choice on a sample of many labels, and the rotated (preconditioned) fit."""

import numpy as np
import pytest

from ssl_jax.evaluation import FeatureStats, fit_logistic_regression, linear_probe


def _blobs(rng, n, num_classes=4, dim=6, separation=2.0):
    y = np.arange(n) % num_classes
    means = separation * np.eye(num_classes, dim)
    return (means[y] + rng.normal(size=(n, dim))).astype(np.float32), y


def test_l2_choice_uses_a_sample_of_many_labels_and_the_fit_uses_all():
    rng = np.random.default_rng(0)
    x, y = _blobs(rng, 1000)
    xt, yt = _blobs(rng, 2000)
    subset = np.arange(1000)
    kw = dict(num_classes=4, seed=0, l2_grid=(1e-3, 1e-1, 10.0), cv_folds=1)  # one 20% split
    sampled = linear_probe(x, y, xt, yt, subset, max_selection_rows=200, **kw)
    full = linear_probe(x, y, xt, yt, subset, **kw)
    assert sampled["n_selection"] == 200 and sampled["n_val"] == 40
    assert full["n_selection"] == 1000 and full["n_val"] == 200
    assert sampled["n_labels"] == full["n_labels"] == 1000
    # The refit keeps the chosen penalty per summed loss: scaled by (rows fitted in the choice)
    # / (labelled rows), 160 / 1000 on the sample, 800 / 1000 without it.
    assert sampled["l2"] == pytest.approx(sampled["l2_selected"] * 160 / 1000)
    assert full["l2"] == pytest.approx(full["l2_selected"] * 800 / 1000)
    assert sampled["top1"] > 0.8  # far above the 25% of chance


def test_preconditioned_fit_gives_the_plain_minimiser():
    """The eigenbasis change of variables changes conditioning, not the solution: the fit with
    the data's own preconditioner equals one with the identity basis (no preconditioning)."""
    rng = np.random.default_rng(1)
    x, y = _blobs(rng, 300, dim=12)
    x[:, 0] *= 30.0  # badly conditioned on purpose
    stats = FeatureStats.of(x)
    xs = stats.standardize(x)
    kw = dict(num_classes=4, l2=1e-2, max_iter=500)
    w1, b1 = fit_logistic_regression(xs, y, preconditioner_of=(stats.basis, stats.eigvals), **kw)
    plain = (np.eye(12, dtype=np.float32), np.full(12, 1.0, np.float32))
    w2, b2 = fit_logistic_regression(xs, y, preconditioner_of=plain, **kw)
    np.testing.assert_allclose(w1, w2, atol=2e-3)
    np.testing.assert_allclose(b1 - b1.mean(), b2 - b2.mean(), atol=2e-3)


def test_fit_without_rotating_the_features_gives_the_same_solution():
    """Rotating x once (x @ U) or rotating the weights in every evaluation (U @ (p V)) is the same
    objective in the same variables: the two paths must agree, and the probe must pick the
    unrotated one exactly when a single fit on many rows makes the rotation the dearer part."""
    from ssl_jax.evaluation import linear

    rng = np.random.default_rng(3)
    x, y = _blobs(rng, 500, dim=16, separation=1.0)
    x[:, 1] = x[:, 0] + 0.1 * x[:, 1]
    stats = FeatureStats.of(x)
    xs = stats.standardize(x)
    kw = dict(num_classes=4, l2=1e-2, max_iter=100, preconditioner_of=(stats.basis, stats.eigvals))
    w1, b1 = fit_logistic_regression(xs, y, **kw)  # rotated once
    w2, b2 = fit_logistic_regression(xs, y, rotated=False, **kw)
    np.testing.assert_allclose(w1, w2, atol=1e-4)
    np.testing.assert_allclose(b1, b2, atol=1e-4)
    assert linear._rotation_pays(10_000, fits=6)  # the L2 choice at 100% labels
    assert linear._rotation_pays(6_000, fits=1)  # the final fit at 10% labels
    assert not linear._rotation_pays(60_000, fits=1)  # the final fit at 100% labels


def _objective(x, y, l2, w, b):
    """Mean cross-entropy + l2 / 2 ||W||^2 in float64."""
    z = np.asarray(x, np.float64) @ np.asarray(w, np.float64) + np.asarray(b, np.float64)
    z -= z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].mean() + 0.5 * l2 * np.sum(np.float64(w) ** 2))


def _newton_optimum(x, y, num_classes, l2, iters=200):
    """The objective's minimiser by damped Newton in float64 (independent of the probe's
    L-BFGS): parameters [W; b] of shape [F + 1, C], bias not penalised."""
    x1 = np.hstack([np.asarray(x, np.float64), np.ones((len(x), 1))])
    onehot = np.eye(num_classes)[y]
    reg = np.full((x1.shape[1], num_classes), l2)
    reg[-1] = 0.0

    def f(theta):
        return _objective(x, y, 0.0, theta[:-1], theta[-1]) + 0.5 * np.sum(reg * theta**2)

    theta = np.zeros_like(reg)
    for _ in range(iters):
        z = x1 @ theta
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        grad = x1.T @ (p - onehot) / len(x1) + reg * theta
        if np.abs(grad).max() < 1e-10:
            break
        s = p[:, :, None] * np.eye(num_classes) - p[:, :, None] * p[:, None, :]  # softmax Jacobian
        hess = np.einsum("ia,ib,ijk->ajbk", x1, x1, s).reshape(grad.size, grad.size) / len(x1)
        hess += np.diag(reg.ravel())
        step = np.linalg.lstsq(hess, grad.ravel(), rcond=None)[0].reshape(theta.shape)
        t, f0 = 1.0, f(theta)
        while f(theta - t * step) > f0 - 1e-4 * t * np.sum(grad * step) and t > 1e-12:
            t /= 2
        theta = theta - t * step
    else:
        raise AssertionError(
            f"the Newton reference did not converge in {iters} iterations: "
            f"max |gradient| {np.abs(grad).max():.1e}"
        )
    return theta[:-1], theta[-1], f(theta)


def _separable_wide_data():
    """Few rows, more (correlated) features than rows, classes separable: at weak L2 the
    minimiser's norm is large and a fit from zero creeps toward it."""
    rng = np.random.default_rng(1)
    n, num_classes = 40, 4
    y = np.arange(n) % num_classes
    latent = rng.normal(size=(n, 10)) + 2.0 * np.eye(num_classes, 10)[y]
    mix = rng.normal(size=(10, 100)) * (0.5 ** np.arange(10))[:, None]
    x = (latent @ mix + 0.05 * rng.normal(size=(n, 100))).astype(np.float32)
    stats = FeatureStats.of(x)
    return stats.standardize(x), y, (stats.basis, stats.eigvals)


def test_warm_start_from_the_minimiser_stays_there():
    """``init`` is mapped into the preconditioned variables exactly: starting at the float64
    Newton minimiser, one L-BFGS iteration leaves the weights where they were."""
    x, y, pre = _separable_wide_data()
    w_star, b_star, f_star = _newton_optimum(x, y, 4, 1e-3)
    init = (w_star.astype(np.float32), b_star.astype(np.float32))
    w, b = fit_logistic_regression(
        x, y, num_classes=4, l2=1e-3, max_iter=1, preconditioner_of=pre, init=init
    )
    np.testing.assert_allclose(w, w_star, atol=1e-5)
    assert _objective(x, y, 1e-3, w, b) == pytest.approx(f_star, rel=1e-6)


def test_l2_path_with_warm_starts_gets_near_the_weak_l2_minimiser():
    """What linear_probe does: fits from strong to weak L2, each starting from the previous
    one. With the same 50 iterations per fit, the path ends much nearer the float64 minimiser
    at the weakest L2 than a fit from zero, which is the reason the probe walks it."""
    x, y, pre = _separable_wide_data()
    l2 = 1e-5
    _, _, f_star = _newton_optimum(x, y, 4, l2)
    kw = dict(num_classes=4, max_iter=50, preconditioner_of=pre)
    cold = _objective(x, y, l2, *fit_logistic_regression(x, y, l2=l2, **kw)) - f_star
    init = None
    for strength in (1.0, 1e-1, 1e-2, 1e-3, 1e-4, l2):
        init = fit_logistic_regression(x, y, l2=strength, init=init, **kw)
    warm = _objective(x, y, l2, *init) - f_star
    assert cold > 0.2 * f_star  # the cold fit is far from converged here...
    assert 0 <= warm < 0.5 * cold  # ...and the warm path gets much closer


def test_linear_probe_walks_the_l2_grid_from_strong_to_weak_with_warm_starts(monkeypatch):
    from ssl_jax.evaluation import linear

    calls = []

    def recording_fit(*args, **kwargs):
        out = fit_logistic_regression(*args, **kwargs)
        weights = kwargs.get("weights")
        fitted = len(args[0]) if weights is None else int(np.sum(weights > 0))
        calls.append((kwargs["l2"], kwargs.get("init"), out, fitted))
        return out

    monkeypatch.setattr(linear, "fit_logistic_regression", recording_fit)
    rng = np.random.default_rng(0)
    x, y = _blobs(rng, 200)
    xt, yt = _blobs(rng, 100)
    grid = (1e-3, 1.0, 1e-1)
    kw = dict(num_classes=4, seed=0, l2_grid=grid, cv_folds=1)  # one split (folds: below)
    probe = linear_probe(x, y, xt, yt, np.arange(200), **kw)
    assert [c[0] for c in calls] == [1.0, 1e-1, 1e-3, probe["l2"]]
    assert probe["l2"] == pytest.approx(probe["l2_selected"] * 160 / 200)  # 40 held out
    assert [c[3] for c in calls] == [160, 160, 160, 200]  # the refit uses every labelled row
    assert calls[0][1] is None  # the strongest L2 starts from zero...
    for previous, current in zip(calls[:2], calls[1:3], strict=True):
        # ...each next one from the fit before it
        assert all(a is b for a, b in zip(current[1], previous[2], strict=True))
    chosen = next(c for c in calls[:3] if c[0] == probe["l2_selected"])
    # The final fit starts from the validation fit at the chosen L2.
    assert all(a is b for a, b in zip(calls[3][1], chosen[2], strict=True))


def test_l2_choice_by_cross_validation(monkeypatch):
    """With cv_folds=5 (up to cv_max_rows labels) the choice is cross-validation: five warm-started
    paths whose held-out rows partition the subset, scored by the pooled held-out cross-entropy
    (or top-1 with select_by='top1'); the refit starts from the first fold's fit at the chosen L2
    with the penalty per summed loss."""
    from ssl_jax.evaluation import linear

    calls = []

    def recording_fit(*args, **kwargs):
        out = fit_logistic_regression(*args, **kwargs)
        calls.append((kwargs["l2"], kwargs.get("weights"), kwargs.get("init"), out))
        return out

    monkeypatch.setattr(linear, "fit_logistic_regression", recording_fit)
    rng = np.random.default_rng(6)
    # Overlapping classes: the L2 choice matters, and here the two criteria choose differently.
    x, y = _blobs(rng, 200, separation=0.7)
    xt, yt = _blobs(rng, 500, separation=0.7)
    grid = (1e-3, 1e-1, 10.0)
    kw = dict(num_classes=4, seed=0, l2_grid=grid, cv_folds=5)
    probe = linear_probe(x, y, xt, yt, np.arange(200), **kw)
    assert probe["cv_folds"] == 5 and probe["n_val"] == 200
    assert [c[0] for c in calls[:-1]] == [10.0, 1e-1, 1e-3] * 5
    held_out = np.stack([c[1] == 0 for c in calls[:-1:3]])  # one mask per fold
    np.testing.assert_array_equal(held_out.sum(axis=0), np.ones(200))  # each row held out once
    assert all(38 <= n <= 42 for n in held_out.sum(axis=1))
    for fold in held_out:  # every fold leaves every class something to fit
        assert set(y[~fold]) == set(range(4))
    # The pooled held-out accuracy and cross-entropy per L2, recomputed in float64 from the fits.
    xs = FeatureStats.of(x).standardize(x).astype(np.float64)
    pooled, pooled_ce = {}, {}
    for l2, weights, _, (w, b) in calls[:-1]:
        val = weights == 0
        z = xs[val] @ np.float64(w) + np.float64(b)
        log_p = z - z.max(axis=1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
        pooled[l2] = pooled.get(l2, 0) + np.sum(np.argmax(z, axis=1) == y[val])
        pooled_ce[l2] = pooled_ce.get(l2, 0) - np.sum(log_p[np.arange(val.sum()), y[val]])
    assert probe["val_by_l2"] == pytest.approx({k: v / 200 for k, v in pooled.items()})
    assert probe["val_ce_by_l2"] == pytest.approx({k: v / 200 for k, v in pooled_ce.items()})
    assert probe["select_by"] == "cross_entropy"
    assert probe["l2_selected"] == min(pooled_ce, key=pooled_ce.get)
    assert probe["val_ce"] == min(probe["val_ce_by_l2"].values())
    assert probe["l2"] == pytest.approx(probe["l2_selected"] * 160 / 200)
    first = next(c for c in calls[:3] if c[0] == probe["l2_selected"])
    assert all(a is b for a, b in zip(calls[-1][2], first[3], strict=True))
    # select_by='top1': the best pooled held-out top-1 (the same fits).
    calls.clear()
    by_top1 = linear_probe(x, y, xt, yt, np.arange(200), select_by="top1", **kw)
    assert by_top1["val_by_l2"] == probe["val_by_l2"]
    assert by_top1["val_top1"] == max(by_top1["val_by_l2"].values())
    # Ties on top-1 go to the lower cross-entropy, exact ties to the stronger L2.
    strongest_first = sorted(pooled, reverse=True)
    expected = max(strongest_first, key=lambda l2: (pooled[l2], -pooled_ce[l2]))
    assert by_top1["l2_selected"] == expected != probe["l2_selected"]
    with pytest.raises(ValueError, match="select_by"):
        linear_probe(x, y, xt, yt, np.arange(200), select_by="accuracy", **kw)
    # Above cv_max_rows: one split again.
    calls.clear()
    single = linear_probe(x, y, xt, yt, np.arange(200), cv_max_rows=199, **kw)
    assert single["cv_folds"] == 1 and single["n_val"] == 40 and len(calls) == 4


def test_projection_gradient_uses_the_transposed_features():
    """The probe's logits x @ w take their gradient for w from a separately laid out x^T (XLA:CPU
    ran autodiff's dot over x's first axis ~60x slower): value and gradient equal the float64
    x @ w and x^T g, and no gradient reaches the features."""
    import jax
    import jax.numpy as jnp

    from ssl_jax.evaluation.linear import _project

    rng = np.random.default_rng(5)
    x = rng.normal(size=(37, 6)).astype(np.float32)
    w = rng.normal(size=(6, 3)).astype(np.float32)
    g = rng.normal(size=(37, 3)).astype(np.float32)
    xt = jnp.asarray(x.T)
    y, vjp = jax.vjp(lambda w: _project(jnp.asarray(x), xt, w), jnp.asarray(w))
    np.testing.assert_allclose(y, x.astype(np.float64) @ w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vjp(g)[0], x.T.astype(np.float64) @ g, rtol=1e-5, atol=1e-5)
    grads = jax.grad(lambda x, w: jnp.sum(_project(x, x.T, w) ** 2), argnums=(0, 1))(x, w)
    assert not np.any(grads[0]) and np.any(grads[1])
