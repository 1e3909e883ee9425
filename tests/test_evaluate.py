"""Evaluation: kNN and linear probes against references, label subsets, a tiny run end to end."""

import dataclasses
import json
import os
from typing import ClassVar

import jax
import numpy as np
import pytest

from helpers import tiny_config
from ssl_jax import augment, cli, load_encoder
from ssl_jax.data import source_from_config as make_source
from ssl_jax.evaluation import (
    PROTOCOLS,
    Protocol,
    class_balanced_subset,
    evaluate,
    fit_logistic_regression,
    knn_neighbors,
    knn_protocol,
    knn_scores,
    l2_normalize,
    linear_probe,
    linear_protocol,
    preprocess,
    random_init_encoder,
    topk_accuracy,
    validation_folds,
    validation_split,
)
from ssl_jax.methods import get_method
from ssl_jax.train import train

# ----------------------------------------------------------------------------- kNN


def _knn_reference(queries, bank, bank_labels, num_classes, k, temperature):
    """Brute force in float64: per query, a stable sort of the cosine similarities, then votes."""
    q = queries.astype(np.float64)
    b = bank.astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    scores = np.zeros((len(q), num_classes))
    for i, query in enumerate(q):
        sims = b @ query
        for j in np.argsort(-sims, kind="stable")[:k]:
            scores[i, bank_labels[j]] += (
                1.0 if temperature is None else np.exp(sims[j] / temperature)
            )
    return scores


def _reference_topk(scores, labels, k):
    """Top-k by listing the classes in order (score descending, then class index)."""
    hits = []
    for s, y in zip(scores, labels, strict=True):
        order = sorted(range(len(s)), key=lambda c: (-s[c], c))
        hits.append(y in order[:k])
    return float(np.mean(hits))


@pytest.mark.parametrize("k, temperature", [(200, 0.1), (20, None)])
def test_knn_matches_float64_numpy_reference(k, temperature):
    rng = np.random.default_rng(0)
    num_classes = 10
    bank = rng.normal(size=(300, 8)).astype(np.float32)
    bank_labels = rng.integers(0, num_classes, size=300)
    queries = rng.normal(size=(45, 8)).astype(np.float32)
    query_labels = rng.integers(0, num_classes, size=45)
    # Small chunks: several query chunks (the last one padded) and bank chunks (the last padded).
    scores = knn_scores(
        queries,
        bank,
        bank_labels,
        num_classes=num_classes,
        k=k,
        temperature=temperature,
        query_chunk=16,
        bank_chunk=64,
    )
    ref = _knn_reference(queries, bank, bank_labels, num_classes, k, temperature)
    np.testing.assert_allclose(scores, ref, rtol=1e-5, atol=1e-6)
    for top in (1, 5):
        assert topk_accuracy(scores, query_labels, top) == _reference_topk(ref, query_labels, top)
    assert 0.0 < topk_accuracy(scores, query_labels, 5) < 1.0  # the test can tell


def test_knn_neighbors_are_sorted_and_k_is_bounded():
    rng = np.random.default_rng(1)
    bank = l2_normalize(rng.normal(size=(50, 4)))
    sims, labels = knn_neighbors(bank[:7], bank, np.arange(50), k=5, bank_chunk=16)
    assert np.all(np.diff(sims, axis=1) <= 0)
    np.testing.assert_array_equal(labels[:, 0], np.arange(7))  # each row is its own neighbour
    with pytest.raises(ValueError, match="k must be in"):
        knn_neighbors(bank, bank, np.arange(50), k=51)


# ----------------------------------------------------------------------------- subsets


def test_class_balanced_subset_counts_nesting_and_determinism():
    labels = np.repeat(np.arange(4), [500, 300, 40, 1])
    np.random.default_rng(0).shuffle(labels)
    subsets = {f: class_balanced_subset(labels, f, seed=3) for f in (0.01, 0.1, 1.0)}
    expected = {0.01: [5, 3, 1, 1], 0.1: [50, 30, 4, 1], 1.0: [500, 300, 40, 1]}
    for f, idx in subsets.items():
        assert np.bincount(labels[idx], minlength=4).tolist() == expected[f]
        assert len(np.unique(idx)) == len(idx)
    assert set(subsets[0.01]) <= set(subsets[0.1]) <= set(subsets[1.0])
    np.testing.assert_array_equal(class_balanced_subset(labels, 0.1, seed=3), subsets[0.1])
    assert not np.array_equal(class_balanced_subset(labels, 0.1, seed=4), subsets[0.1])


def test_validation_folds_partition_each_class_of_the_labelled_subset():
    labels = np.repeat(np.arange(3), [7, 2, 1])  # class 2 has a single labelled image
    subset = np.arange(10) + 100
    labels = np.concatenate([np.zeros(100, int), labels])
    folds = validation_folds(labels, subset, folds=5, seed=0)
    assert len(folds) == 5
    held = np.concatenate(folds)
    # Every image of a class with >= 2 labels held out exactly once; the single one never.
    np.testing.assert_array_equal(np.sort(held), np.arange(100, 109))
    for fold in folds:
        assert set(fold) <= set(subset)
        for c in range(3):  # each fold leaves every class at least one image to fit on
            assert np.sum(labels[np.setdiff1d(subset, fold)] == c) >= 1
    counts = [np.sum(labels[f] == 0) for f in folds]  # class 0: 7 over 5 folds -> 1 or 2 each
    assert sorted(counts) == [1, 1, 1, 2, 2]
    again = validation_folds(labels, subset, folds=5, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(folds, again, strict=True))
    with pytest.raises(ValueError, match="at least 2 folds"):
        validation_folds(labels, subset, folds=1, seed=0)


def test_validation_split_comes_only_from_the_labelled_subset():
    labels = np.repeat(np.arange(3), 100)
    subset = class_balanced_subset(labels, 0.1, seed=0)  # 10 per class
    fit, val = validation_split(labels, subset, fraction=0.2, seed=0)
    assert set(val) <= set(subset) and set(fit) <= set(subset)
    assert not set(fit) & set(val)
    assert sorted(set(fit) | set(val)) == sorted(subset)
    assert np.bincount(labels[val]).tolist() == [2, 2, 2]
    # A class with one labelled image keeps it for fitting.
    _, val1 = validation_split(labels, subset[[0, 10, 11, 12, 20, 21]], seed=0)
    assert labels[subset[0]] not in labels[val1]


# ----------------------------------------------------------------------------- linear probe


def _blobs(rng, n, num_classes=4, dim=6, separation=4.0):
    y = np.arange(n) % num_classes
    means = separation * np.eye(num_classes, dim)
    return (means[y] + rng.normal(size=(n, dim))).astype(np.float32), y


PROBE = dict(num_classes=4, seed=0, l2_grid=(1e-3, 1e-1), max_iter=50)


def test_linear_probe_separable_random_and_constant_features():
    rng = np.random.default_rng(0)
    x, y = _blobs(rng, 400)
    xt, yt = _blobs(rng, 2000)
    all_idx = np.arange(400)
    separable = linear_probe(x, y, xt, yt, all_idx, **PROBE)
    assert separable["top1"] > 0.99
    assert separable["top5"] is None  # 4 classes: top-5 is trivially 1
    assert separable["n_labels"] == 400 and separable["n_val"] == 80
    assert separable["cv_folds"] == 1  # one 20% split by default

    noise = linear_probe(
        rng.normal(size=x.shape), y, rng.normal(size=xt.shape), yt, all_idx, **PROBE
    )
    assert abs(noise["top1"] - 0.25) < 0.06

    const = linear_probe(np.ones_like(x), y, np.ones_like(xt), yt, all_idx, **PROBE)
    assert const["top1"] == pytest.approx(0.25)


def test_logistic_regression_reaches_the_minimum_of_its_objective():
    """The preconditioning is a change of variables: the fit must minimise the stated
    objective, mean CE + l2 / 2 ||W||^2, whose float64 gradient vanishes there."""
    rng = np.random.default_rng(2)
    x, y = _blobs(rng, 400, separation=1.0)
    x[:, 1] = x[:, 0] + 0.1 * x[:, 1]  # correlated features: ill-conditioned without help
    weights = (np.arange(400) % 5 != 0).astype(np.float32)  # masked rows must not count
    w, b = fit_logistic_regression(x, y, num_classes=4, l2=0.01, weights=weights, max_iter=200)
    keep = weights > 0
    xk, yk = x[keep].astype(np.float64), y[keep]
    logits = xk @ w.astype(np.float64) + b
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(yk)), yk] -= 1.0
    grad_w = xk.T @ p / len(yk) + 0.01 * w
    grad_b = p.mean(axis=0)
    assert np.abs(grad_w).max() < 1e-4 and np.abs(grad_b).max() < 1e-4


def test_linear_probe_choice_never_looks_at_the_test_set():
    rng = np.random.default_rng(1)
    x, y = _blobs(rng, 400, separation=1.0)
    xt, yt = _blobs(rng, 200, separation=1.0)
    subset = np.arange(400)
    a = linear_probe(x, y, xt, yt, subset, **PROBE)
    b = linear_probe(x, y, rng.normal(size=xt.shape), np.roll(yt, 1), subset, **PROBE)
    assert a["l2"] == b["l2"] and a["val_by_l2"] == b["val_by_l2"]
    assert a["top1"] != b["top1"]


# ----------------------------------------------------------------------------- a tiny run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    config = tiny_config(total_steps=4, checkpoint_every=2)
    return train(config, str(workdir)), config


def test_preprocess_resizes_and_crops_to_the_model_size():
    images = np.full((2, 20, 24, 1), 128, np.uint8)
    x = preprocess(images, 16, mean=(0.5,), std=(0.25,))
    assert x.shape == (2, 16, 16, 1)
    np.testing.assert_allclose(x, (128 / 255 - 0.5) / 0.25, atol=1e-5)


def test_load_encoder_gives_the_trained_encoders_features(tiny_run):
    result, config = tiny_run
    images = np.stack([make_source(config)[i]["image"] for i in range(8)])
    encoder = load_encoder(result.workdir)
    assert encoder.step == 4 and encoder.num_features == 16
    view = augment.get_views(config.augment, config.image_size)[0]
    x = (images / 255.0 - np.asarray(view.mean)) / np.asarray(view.std)
    trained = get_method(config.method).encoder_of(jax.device_get(result.state))
    expected = np.asarray(trained(x.astype(np.float32)))
    np.testing.assert_allclose(np.asarray(encoder(images)), expected, rtol=1e-5, atol=1e-5)
    # ...and not those of the untrained encoder (the checkpoint was really loaded).
    untrained = np.asarray(random_init_encoder(config)(images))
    assert np.abs(untrained - expected).max() > 1e-3


def test_evaluate_end_to_end(tiny_run, monkeypatch, capsys):
    result, config = tiny_run
    probed, banks = [], []

    def recording_probe(train_x, train_y, *args, **kwargs):
        probed.append((train_x.shape[1], args[2].copy()))
        return linear_probe(train_x, train_y, *args, **kwargs)

    def recording_neighbors(query, bank, bank_labels, **kwargs):
        banks.append(np.asarray(bank_labels).copy())
        return knn_neighbors(query, bank, bank_labels, **kwargs)

    monkeypatch.setattr(linear_protocol, "linear_probe", recording_probe)
    monkeypatch.setattr(knn_protocol, "knn_neighbors", recording_neighbors)
    # Fine-tuning (and with it the supervised baseline) is tested in test_finetune.py.
    rows = evaluate(
        result.workdir, label_fractions=(1.0, 0.25), protocols=("knn", "linear"), batch_size=64
    )

    keys = {(r["representation"], r["protocol"], r["label_fraction"]) for r in rows}
    expected = {
        (rep, proto, f)
        for f in (0.25, 1.0)
        for rep, proto in [
            ("ssl", "knn"),
            ("ssl", "knn_k20"),
            ("ssl", "linear"),
            ("random_init", "knn"),
            ("random_init", "knn_k20"),
            ("random_init", "linear"),
            ("raw_pixels", "linear"),
        ]
    }
    assert keys == expected and len(rows) == len(expected)
    for r in rows:
        assert r["n_labels"] == {0.25: 24, 1.0: 96}[r["label_fraction"]]
        assert 0.0 <= r["top1"] <= 1.0 and r["top5"] is None  # 4 classes
        assert r["seed"] == 0 and r["step"] == 4
        assert ("l2" in r) == (r["protocol"] == "linear")
    knn_row = next(r for r in rows if r["protocol"] == "knn" and r["label_fraction"] == 0.25)
    assert knn_row["k"] == 24 and knn_row["temperature"] == 0.1  # k capped at the bank size
    # Brightness separates the synthetic classes in raw pixels (chance: 0.25).
    raw = {r["label_fraction"]: r["top1"] for r in rows if r["representation"] == "raw_pixels"}
    assert raw[1.0] > 0.75 and raw[0.25] > 0.4

    # Every representation saw exactly the same labelled images.
    train_y = np.array([make_source(config)[i]["label"] for i in range(96)])
    for f in (0.25, 1.0):
        subset = class_balanced_subset(train_y, f, seed=0)
        per_rep = [s for _, s in probed if len(s) == len(subset)]
        assert len(per_rep) == 3 and all(np.array_equal(s, subset) for s in per_rep)
        knn_banks = [b for b in banks if len(b) == len(subset)]
        assert len(knn_banks) == 2 and all(np.array_equal(b, train_y[subset]) for b in knn_banks)

    assert json.load(open(os.path.join(result.workdir, "eval.json"))) == rows
    md = open(os.path.join(result.workdir, "eval.md")).read()
    assert "| raw_pixels | linear |" in md and "25% (24 labels)" in md
    out = capsys.readouterr().out
    assert "train features" in out and "random_init linear, 25% labels" in out
    assert "| ssl | knn |" in out
    # The pictures: every one is a readable PNG of a sensible size.
    from PIL import Image

    for name in ("embedding_pca", "embedding_tsne", "training_curves", "label_efficiency"):
        with Image.open(os.path.join(result.workdir, f"{name}.png")) as im:
            assert im.format == "PNG" and im.size[0] >= 400 and im.size[1] >= 300
    assert "pictures (" in out
    # Each stage says what it is about to do, then how long it took; all of it goes to eval.log,
    # and the training's console to train.log (issue 17).
    for stage in ("1/5] features", "2/5] kNN", "3/5] linear probe", "4/5] maps", "5/5] plots"):
        assert f"{stage}: " in out and f"{stage} done in " in out
    log = open(os.path.join(result.workdir, "eval.log")).read()
    assert "4/5] maps done in " in log and "| ssl | knn |" in log
    assert "step 4/4" in open(os.path.join(result.workdir, "train.log")).read()


def test_cli_evaluate(tiny_run, capsys):
    result, _ = tiny_run
    eval_json = os.path.join(result.workdir, "eval.json")
    stale = [f for f in os.listdir(result.workdir) if f == "eval.json" or f.endswith(".png")]
    for name in stale:
        os.remove(os.path.join(result.workdir, name))
    args = ["evaluate", "--workdir", result.workdir, "--label_fractions=1.0", "--batch_size=64"]
    assert cli.main([*args, "--noplots"]) == 0
    rows = json.load(open(eval_json))
    assert {r["label_fraction"] for r in rows} == {1.0} and len(rows) == 7
    assert not [f for f in os.listdir(result.workdir) if f.endswith(".png")]  # --noplots
    assert cli.main([]) == 0 and "evaluate" in capsys.readouterr().out


def test_eval_json_keeps_the_earlier_rows_of_the_same_checkpoint_seed_and_split(tiny_run, capsys):
    result, _ = tiny_run
    eval_json = os.path.join(result.workdir, "eval.json")
    if os.path.exists(eval_json):
        os.remove(eval_json)
    kw = dict(label_fractions=(1.0,), batch_size=64, plots=False)

    def saved():
        return sorted(
            (r["representation"], r["protocol"], r["seed"]) for r in json.load(open(eval_json))
        )

    first = evaluate(result.workdir, representations=("raw_pixels",), protocols=("linear",), **kw)
    second = evaluate(result.workdir, representations=("ssl",), protocols=("knn",), **kw)
    assert [r["test_split"] for r in first + second] == ["test"] * 3
    # A partial evaluation adds its rows to the earlier ones of the same checkpoint and seed...
    assert saved() == [("raw_pixels", "linear", 0), ("ssl", "knn", 0), ("ssl", "knn_k20", 0)]
    assert "kept 1 rows of the earlier evaluation of step 4" in capsys.readouterr().out
    md = open(os.path.join(result.workdir, "eval.md")).read()
    assert "| raw_pixels | linear |" in md and "| ssl | knn |" in md
    # ...a redone row replaces its earlier self...
    again = evaluate(result.workdir, representations=("ssl",), protocols=("knn",), **kw)
    assert saved() == [("raw_pixels", "linear", 0), ("ssl", "knn", 0), ("ssl", "knn_k20", 0)]
    assert [r["top1"] for r in again] == [r["top1"] for r in second]  # deterministic
    # ...rows made with other settings than this call's (what eval.md describes) are dropped...
    evaluate(result.workdir, representations=("raw_pixels",), protocols=("linear",), **kw)
    assert saved() == [("raw_pixels", "linear", 0), ("ssl", "knn", 0), ("ssl", "knn_k20", 0)]
    capsys.readouterr()
    kw_t = dict(kw, knn_temperature=0.5)
    evaluate(result.workdir, representations=("raw_pixels",), protocols=("linear",), **kw_t)
    assert saved() == [("raw_pixels", "linear", 0), ("ssl", "knn_k20", 0)]  # knn at T=0.1 gone
    assert "dropped 1 rows" in capsys.readouterr().out
    # ...so is a linear row whose L2 was chosen by validation top-1 (written before select_by)...
    rows_now = json.load(open(eval_json))
    for r in rows_now:
        if r["protocol"] == "linear":
            assert r["select_by"] == "cross_entropy" and r["val_ce"] > 0
            del r["select_by"]
    with open(eval_json, "w") as fh:
        json.dump(rows_now, fh)
    evaluate(result.workdir, representations=("ssl",), protocols=("knn",), **kw_t)
    assert saved() == [("ssl", "knn", 0), ("ssl", "knn_k20", 0)]
    assert "dropped 1 rows" in capsys.readouterr().out
    evaluate(result.workdir, representations=("raw_pixels",), protocols=("linear",), **kw_t)
    assert saved() == [("raw_pixels", "linear", 0), ("ssl", "knn", 0), ("ssl", "knn_k20", 0)]
    # ...and rows of another checkpoint of the same step (the run deleted and trained again)...
    rows_now = json.load(open(eval_json))
    assert len({r["checkpoint_id"] for r in rows_now}) == 1
    assert isinstance(rows_now[0]["checkpoint_id"], int)
    with open(eval_json, "w") as fh:
        json.dump([dict(r, checkpoint_id=r["checkpoint_id"] + 1) for r in rows_now], fh)
    capsys.readouterr()
    evaluate(result.workdir, representations=("ssl",), protocols=("knn",), **kw_t)
    assert saved() == [("ssl", "knn", 0), ("ssl", "knn_k20", 0)]
    assert "dropped 3 rows" in capsys.readouterr().out
    evaluate(result.workdir, representations=("raw_pixels",), protocols=("linear",), **kw_t)
    assert saved() == [("raw_pixels", "linear", 0), ("ssl", "knn", 0), ("ssl", "knn_k20", 0)]
    # ...as are rows of another seed (another experiment), malformed ones and old-format ones.
    rows_now = json.load(open(eval_json))
    old = dict(next(r for r in rows_now if r["protocol"] == "linear"))
    del old["test_split"], old["l2_selected"]  # written before test_split and the L2 path
    with open(eval_json, "w") as fh:
        json.dump([*rows_now, old, {"representation": "ssl"}, [1, 2]], fh)
    evaluate(result.workdir, representations=("ssl",), protocols=("knn",), seed=1, **kw)
    assert saved() == [("ssl", "knn", 1), ("ssl", "knn_k20", 1)]
    assert "dropped 6 rows" in capsys.readouterr().out
    # An unreadable eval.json is set aside and rewritten, not fatal.
    with open(eval_json, "w") as fh:
        fh.write("{not json")
    evaluate(result.workdir, representations=("raw_pixels",), protocols=("linear",), **kw)
    assert saved() == [("raw_pixels", "linear", 0)]
    assert "is unreadable" in capsys.readouterr().out
    assert open(eval_json + ".unreadable").read() == "{not json"
    assert not [f for f in os.listdir(result.workdir) if ".tmp-" in f]  # atomic writes cleaned up


@dataclasses.dataclass(frozen=True)
class _CentroidProtocol(Protocol):
    """A protocol from outside the package: the nearest class mean (cosine) of frozen features."""

    name: ClassVar[str] = "centroid"
    rank: ClassVar[int] = 3
    representations: ClassVar[tuple[str, ...]] = ("ssl", "raw_pixels")

    def run(self, data, representations, fractions):
        rows = []
        for name in representations:
            test = l2_normalize(data.test_x[name])
            for f in fractions:
                subset = data.subsets[f]
                x, y = l2_normalize(data.train_x[name][subset]), data.train_y[subset]
                means = np.stack([x[y == c].mean(axis=0) for c in range(data.num_classes)])
                top1 = topk_accuracy(test @ means.T, data.test_y, 1)
                rows.append(data.row(name, self.name, f, top1, None, metric="cosine"))
        return rows

    def settings(self, row):
        return {"metric": "cosine"}

    def notes(self, rows):
        return "- centroid: the nearest class mean (cosine).\n"


def test_a_protocol_plugs_in_with_one_registration(tiny_run, monkeypatch):
    result, _ = tiny_run
    eval_json = os.path.join(result.workdir, "eval.json")
    if os.path.exists(eval_json):
        os.remove(eval_json)
    # PROTOCOLS.add("centroid", _CentroidProtocol), undone after the test.
    monkeypatch.setitem(PROTOCOLS._entries, "centroid", _CentroidProtocol)
    kw = dict(label_fractions=(1.0,), batch_size=64, plots=False)
    reps = ("ssl", "raw_pixels")
    rows = evaluate(result.workdir, representations=reps, protocols=("linear", "centroid"), **kw)
    assert [(r["representation"], r["protocol"]) for r in rows] == [
        ("ssl", "linear"),
        ("ssl", "centroid"),
        ("raw_pixels", "linear"),
        ("raw_pixels", "centroid"),
    ]
    for r in rows:
        assert 0.0 <= r["top1"] <= 1.0 and r["n_labels"] == 96 and r["step"] == 4
        assert (r.get("metric") == "cosine") == (r["protocol"] == "centroid")
    md = open(os.path.join(result.workdir, "eval.md")).read()
    assert "| raw_pixels | centroid |" in md and "- centroid: the nearest class mean" in md
    # A later evaluation keeps its rows (made with the same settings) next to its own.
    evaluate(result.workdir, representations=("ssl",), protocols=("knn",), **kw)
    saved = [(r["representation"], r["protocol"]) for r in json.load(open(eval_json))]
    assert saved == [
        ("ssl", "knn"),
        ("ssl", "knn_k20"),
        ("ssl", "linear"),
        ("ssl", "centroid"),
        ("raw_pixels", "linear"),
        ("raw_pixels", "centroid"),
    ]


def _evaluate_error(args) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main(["evaluate", *args])
    return str(info.value)


def test_cli_evaluate_errors(tmp_path):
    msg = _evaluate_error(["--workdir", str(tmp_path / "missing")])
    assert "ssl-jax evaluate" in msg and "config.json" in msg
    (tmp_path / "config.json").write_text(tiny_config().to_json())
    assert "no checkpoints" in _evaluate_error(["--workdir", str(tmp_path)])
    assert not (tmp_path / "checkpoints").exists()  # looking did not create anything
    assert "--workdir" in _evaluate_error([])
    assert "label_fractions" in _evaluate_error(["--workdir", str(tmp_path), "--label_fractions=a"])
