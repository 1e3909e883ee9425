"""The kNN monitor during pretraining: logged with the metrics, equal to a float64 reference."""

import functools

import jax
import numpy as np
import pytest

from helpers import tiny_config
from ssl_jax import logs
from ssl_jax.data import ArraySource
from ssl_jax.data import source_from_config as make_source
from ssl_jax.evaluation import encoder_from_state
from ssl_jax.evaluation.monitor import KnnMonitor, make_monitor
from ssl_jax.methods import get_method
from ssl_jax.train import train


def _initial_state(config):
    return jax.jit(functools.partial(get_method(config.method).init_state, config))(
        jax.random.key(0)
    )


def _reference_knn_top1(bank, bank_y, query, query_y, *, k, temperature, num_classes):
    """Cosine kNN with exp(sim / T) votes, float64, written out plainly."""
    b = bank.astype(np.float64)
    q = query.astype(np.float64)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    correct = 0
    for i in range(len(q)):
        sims = b @ q[i]
        nearest = np.argsort(-sims, kind="stable")[:k]
        votes = np.zeros(num_classes)
        for j in nearest:
            votes[bank_y[j]] += np.exp(sims[j] / temperature)
        correct += int(np.argmax(votes) == query_y[i])
    return correct / len(q)


def test_monitor_is_logged_every_eval_every_steps(tmp_path):
    config = tiny_config(total_steps=5, eval_every=2, log_every=1)
    train(config, str(tmp_path))
    records = logs.read_metrics(str(tmp_path))
    with_knn = [r["step"] for r in records if "knn_top1" in r]
    assert with_knn == [2, 4, 5]  # every 2 steps and at the end
    assert all("loss" in r for r in records)  # one record per step, knn merged into it
    # Synthetic classes differ in colour and stripes: far above the 25% of chance.
    assert all(r["knn_top1"] > 0.5 for r in records if "knn_top1" in r)


def test_monitor_equals_float64_reference():
    config = tiny_config()
    state = _initial_state(config)
    source, test = make_source(config), make_source(config, "test")
    monitor = KnnMonitor(config, source, test, bank_size=64, query_size=40, k=5)
    got = monitor(state)["knn_top1"]

    encoder = encoder_from_state(config, state)
    bank = monitor.bank.read_batch(np.arange(64))
    query = monitor.query.read_batch(np.arange(40))
    want = _reference_knn_top1(
        np.asarray(encoder(bank["image"])),
        bank["label"],
        np.asarray(encoder(query["image"])),
        query["label"],
        k=5,
        temperature=0.1,
        num_classes=config.synthetic_classes,
    )
    assert got == pytest.approx(want, abs=1e-9)
    # The bank is a seeded random draw of the training images, the queries the first test ones.
    assert len(set(bank["label"].tolist())) == config.synthetic_classes
    np.testing.assert_array_equal(query["image"], test.read_batch(np.arange(40))["image"])


def test_monitor_scores_chance_when_labels_carry_no_signal():
    config = tiny_config()
    state = _initial_state(config)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (400, 16, 16, 1), dtype=np.uint8)
    noise = ArraySource(images, rng.integers(0, 4, 400), num_classes=4)
    other = ArraySource(images[::-1].copy(), rng.integers(0, 4, 400), num_classes=4)
    top1 = KnnMonitor(config, noise, other, bank_size=400, query_size=400)(state)["knn_top1"]
    assert abs(top1 - 0.25) < 0.1  # random labels: chance, whatever the features


def test_monitor_is_off_without_labels_or_when_disabled(capsys):
    unlabelled = ArraySource(np.zeros((8, 16, 16, 1), np.uint8))
    assert make_monitor(tiny_config(eval_every=2), unlabelled, lambda: unlabelled) is None
    assert "no labels" in capsys.readouterr().out
    labelled = ArraySource(np.zeros((8, 16, 16, 1), np.uint8), np.arange(8) % 2, num_classes=2)
    assert make_monitor(tiny_config(eval_every=0), labelled, lambda: labelled) is None


def test_monitor_leaves_unlabelled_images_out(capsys):
    """Images without a label (-1, as an image folder gives files outside class folders) are
    left out of the bank and the queries, instead of failing at the first kNN step."""
    config = tiny_config(eval_every=2)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 16, 16, 1), dtype=np.uint8)
    labels = np.arange(40) % 4
    labels[::5] = -1  # 8 unlabelled
    mixed = ArraySource(images, labels, num_classes=4)
    monitor = make_monitor(config, mixed, lambda: mixed)
    assert monitor is not None and len(monitor.bank) == len(monitor.query) == 32
    assert monitor.unlabelled == 8 and "8 unlabelled" in capsys.readouterr().out
    bank = monitor.bank.read_batch(np.arange(32))
    assert (bank["label"] >= 0).all()
    np.testing.assert_array_equal(bank["image"], images[labels >= 0])
    assert 0.0 <= monitor(_initial_state(config))["knn_top1"] <= 1.0
    none = ArraySource(images, np.full(40, -1), num_classes=4)
    assert make_monitor(config, none, lambda: none) is None
    assert "no labelled images" in capsys.readouterr().out
