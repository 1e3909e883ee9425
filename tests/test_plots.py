"""Pictures: PCA and t-SNE against references, metrics reading, and the PNG files themselves."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from ssl_jax.evaluation import maps, plots

# ----------------------------------------------------------------------------- PCA


def test_pca_matches_float64_eigendecomposition():
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(6, 6))
    x = (rng.normal(size=(300, 6)) * [5.0, 3.0, 2.0, 1.0, 0.5, 0.1]) @ mix + 7.0
    proj, ratio = maps.pca(x.astype(np.float32), num_components=3)
    xc = x - x.mean(0)
    evals, evecs = np.linalg.eigh(np.cov(xc, rowvar=False))
    evals, evecs = evals[::-1], evecs[:, ::-1]
    ref = xc @ evecs[:, :3]
    assert proj.dtype == np.float64 and proj.shape == (300, 3)
    for k in range(3):  # equal up to the sign of each axis
        sign = np.sign(proj[:, k] @ ref[:, k])
        np.testing.assert_allclose(proj[:, k], sign * ref[:, k], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ratio, evals[:3] / evals.sum(), rtol=1e-5)
    assert np.all(np.diff(ratio) <= 0)
    # The sign convention fixes each axis's orientation: reordering the points, which changes
    # the SVD's arbitrary signs, must not mirror the map.
    perm = np.random.default_rng(1).permutation(300)
    np.testing.assert_allclose(maps.pca(x[perm], 3)[0], maps.pca(x, 3)[0][perm], atol=1e-8)


def test_pca_rejects_bad_input():
    with pytest.raises(ValueError, match="num_components"):
        maps.pca(np.zeros((10, 3)), num_components=4)
    with pytest.raises(ValueError, match=r"\[N, F\]"):
        maps.pca(np.zeros(10))
    with pytest.raises(ValueError, match="non-finite"):
        maps.pca(np.full((4, 2), np.nan))


# ----------------------------------------------------------------------------- t-SNE


def _affinities_reference(x, perplexity, steps=200):
    """Per-row bisection on log(beta) in float64 NumPy, written from the paper's definition."""
    x = np.asarray(x, np.float64)
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    p = np.zeros_like(d)
    for i in range(len(x)):
        di = np.delete(d[i], i)
        lo, hi = -50.0, 50.0
        for _ in range(steps):
            log_beta = (lo + hi) / 2
            row = np.exp(-(di - di.min()) * np.exp(log_beta))
            row /= row.sum()
            entropy = -np.sum(row[row > 0] * np.log(row[row > 0]))
            lo, hi = (log_beta, hi) if entropy > np.log(perplexity) else (lo, log_beta)
        p[i] = np.insert(row, i, 0.0)
    return p


def _entropy(p):
    p = np.asarray(p, np.float64)
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1)


@pytest.mark.parametrize("perplexity", [3.0, 8.0])
def test_perplexity_calibration_matches_numpy_binary_search(perplexity):
    x = np.random.default_rng(1).normal(size=(25, 4)).astype(np.float32)
    p = np.asarray(maps.perplexity_affinities(x, perplexity))
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)
    assert np.all(np.diag(p) == 0)
    np.testing.assert_allclose(_entropy(p), np.log(perplexity), atol=1e-3)
    np.testing.assert_allclose(p, _affinities_reference(x, perplexity), atol=2e-4)
    # P depends on distances only through their ranks and the perplexity: scale-free.
    np.testing.assert_allclose(maps.perplexity_affinities(1e3 * x, perplexity), p, atol=2e-4)


def test_perplexity_out_of_range():
    x = np.zeros((10, 2), np.float32)
    for bad in (1.0, 9.0):
        with pytest.raises(ValueError, match="perplexity"):
            maps.perplexity_affinities(x, bad)


def test_kl_gradient_matches_autodiff():
    rng = np.random.default_rng(2)
    p = rng.random((12, 12))
    p = p + p.T
    np.fill_diagonal(p, 0)
    p = jnp.asarray(p / p.sum(), jnp.float32)
    y = jnp.asarray(rng.normal(size=(12, 2)), jnp.float32)

    def kl(y):
        d = jnp.sum((y[:, None] - y[None]) ** 2, -1)
        num = jnp.where(jnp.eye(12, dtype=bool), 0.0, 1.0 / (1.0 + d))
        q = num / num.sum()
        return jnp.sum(jnp.where(p > 0, p * jnp.log(p / jnp.where(p > 0, q, 1.0)), 0.0))

    expected = jax.jit(jax.grad(kl))(y)
    np.testing.assert_allclose(jax.jit(maps.kl_gradient)(p, y), expected, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(5, 30)) * 6.0
    labels = np.repeat(np.arange(5), 40)
    x = (centers[labels] + rng.normal(size=(200, 30))).astype(np.float32)
    return x, labels, maps.tsne(x, perplexity=15, num_iters=500, exaggeration_iters=150)


def test_tsne_separates_gaussian_blobs(blobs):
    x, labels, y = blobs
    assert y.shape == (200, 2) and y.dtype == np.float32 and np.all(np.isfinite(y))
    d = np.sqrt(((y[:, None] - y[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    assert np.mean(labels[d.argmin(1)] == labels) == 1.0  # leave-one-out 1-NN on the map
    same = labels[:, None] == labels[None]
    np.fill_diagonal(d, 0.0)
    within = d[same & ~np.eye(200, dtype=bool)].mean()
    assert within < 0.2 * d[~same].mean()


def test_tsne_is_deterministic_and_uses_the_seed(blobs):
    x, labels, y = blobs
    np.testing.assert_array_equal(
        maps.tsne(x, perplexity=15, num_iters=500, exaggeration_iters=150), y
    )
    kw = dict(perplexity=15, num_iters=500, exaggeration_iters=150, init="random")
    r1, r1_again, r2 = (maps.tsne(x, seed=s, **kw) for s in (1, 1, 2))
    np.testing.assert_array_equal(r1, r1_again)
    assert not np.allclose(r1, r2)


def test_tsne_rejects_bad_input():
    with pytest.raises(ValueError, match="finite"):
        maps.tsne(np.full((20, 3), np.nan))
    with pytest.raises(ValueError, match="init"):
        maps.tsne(np.zeros((20, 3)), perplexity=5, init="spectral")
    with pytest.raises(ValueError, match="perplexity"):
        maps.tsne(np.random.default_rng(0).normal(size=(20, 3)), perplexity=30)


# ----------------------------------------------------------------------------- inputs


def test_balanced_subsample():
    labels = np.array([0] * 500 + [1] * 30 + [2] * 470)
    idx = plots.balanced_subsample(labels, 300, seed=0)
    assert len(idx) == 300 and len(set(idx.tolist())) == 300
    assert np.bincount(labels[idx]).tolist() == [135, 30, 135]  # the small class kept whole
    np.testing.assert_array_equal(idx, plots.balanced_subsample(labels, 300, seed=0))
    assert sorted(plots.balanced_subsample(labels, 5000).tolist()) == list(range(1000))


def test_read_metrics_keeps_the_last_record_per_step(tmp_path):
    lines = [
        {"step": 10, "loss": 3.0, "lr": 0.1},
        {"step": 20, "loss": 2.0},
        {"step": 25, "knn_top1": 0.4},  # a kNN-monitor record between logging steps
        {"step": 20, "loss": 2.5},  # a resumed run logs step 20 again
        {"step": 30, "loss": "nan"},
        {"step": 20, "knn_top1": 0.5},  # a record with some keys adds to its step
    ]
    text = "\n".join(json.dumps(r) for r in lines) + '\n\n{"step": 40, "lo'  # killed mid-write
    (tmp_path / "metrics.jsonl").write_text(text)
    records = plots.read_metrics(str(tmp_path))
    assert [r["step"] for r in records] == [10, 20, 25, 30]
    assert records[1] == {"step": 20, "loss": 2.5, "knn_top1": 0.5}
    assert np.isnan(records[3]["loss"])
    steps, loss = plots._series(records, "loss")
    assert steps.tolist() == [10, 20] and loss.tolist() == [3.0, 2.5]  # NaN left out
    assert plots._series(records, "knn_top1")[0].tolist() == [20, 25]


# ----------------------------------------------------------------------------- PNG files


def _check_png(path):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width >= 400 and im.height >= 300
        colors = im.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colors is not None and len(colors) > 20  # drawn on, not a flat canvas


def _rows():
    rows = []
    for rep, protos in [
        ("ssl", ("knn", "linear")),
        ("raw_pixels", ("linear",)),
        ("supervised", ("finetune",)),
        ("my_new_method", ("linear",)),
    ]:
        for i, (f, n) in enumerate([(0.01, 600), (0.1, 6000), (1.0, 60000)]):
            for proto in protos:
                top1 = 0.6 + 0.1 * i + 0.01 * len(rep)
                rows.append(
                    dict(
                        representation=rep, protocol=proto, label_fraction=f, n_labels=n, top1=top1
                    )
                )
    rows.append(
        dict(representation="ssl", protocol="knn", label_fraction=0.5, n_labels=3, top1=None)
    )
    return rows


def test_write_plots_writes_every_picture(tmp_path):
    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(3), 30)
    feats = (rng.normal(size=(3, 16))[labels] * 4 + rng.normal(size=(90, 16))).astype(np.float32)
    records = [{"step": s, "loss": 5.0 / s} for s in range(1, 40)] + [{"step": 20, "knn_top1": 0.7}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    paths = plots.write_plots(
        str(tmp_path),
        rows=_rows(),
        test_features=feats,
        test_labels=labels,
        class_names=["T-shirt/top", "Trouser", "Pullover"],
    )
    names = ["embedding_pca.png", "embedding_tsne.png", "training_curves.png"]
    assert [os.path.basename(p) for p in paths] == [*names, "label_efficiency.png"]
    for path in paths:
        assert os.path.dirname(path) == str(tmp_path)
        _check_png(path)


def test_write_plots_skips_what_is_missing(tmp_path):
    assert plots.write_plots(str(tmp_path)) == []
    assert plots.write_plots(str(tmp_path), rows=[]) == []
    (tmp_path / "eval.json").write_text(json.dumps(_rows()))  # rows=None reads eval.json
    assert [os.path.basename(p) for p in plots.write_plots(str(tmp_path))] == [
        "label_efficiency.png"
    ]
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 5, "knn_top1": 0.3}))
    assert len(plots.write_plots(str(tmp_path), rows=[])) == 1  # kNN only: still a curve
    with pytest.raises(ValueError, match="both"):
        plots.write_plots(str(tmp_path), test_features=np.zeros((10, 2)))


def test_plot_input_errors(tmp_path):
    with pytest.raises(ValueError, match="loss"):
        plots.plot_training_curves([{"step": 1, "lr": 0.1}], str(tmp_path / "c.png"))
    with pytest.raises(ValueError, match="top1"):
        plots.plot_label_efficiency([], str(tmp_path / "l.png"))
    with pytest.raises(ValueError, match="class names"):
        plots.plot_embedding(np.zeros((4, 2)), np.arange(4), "x.png", class_names=["a"])
