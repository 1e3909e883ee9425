"""The linear probe's L2 choice on a sample of many labels, and the rotated (preconditioned) fit."""

import numpy as np

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
    kw = dict(num_classes=4, seed=0, l2_grid=(1e-3, 1e-1, 10.0))
    sampled = linear_probe(x, y, xt, yt, subset, max_selection_rows=200, **kw)
    full = linear_probe(x, y, xt, yt, subset, **kw)
    assert sampled["n_selection"] == 200 and sampled["n_val"] == 40
    assert full["n_selection"] == 1000 and full["n_val"] == 200
    assert sampled["n_labels"] == full["n_labels"] == 1000
    # With the same L2 the final fits are identical: the refit uses every labelled image.
    if sampled["l2"] == full["l2"]:
        assert sampled["top1"] == full["top1"]
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
