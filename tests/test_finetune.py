"""Fine-tuning and the supervised baseline: learning, determinism, what is trained, suite rows."""

import json
import os

import jax
import numpy as np
import pytest

from helpers import tiny_config
from ssl_jax import cli
from ssl_jax.data import source_from_config as make_source
from ssl_jax.evaluation import (
    FinetuneHParams,
    class_balanced_subset,
    default_finetune_steps,
    evaluate,
    finetune_encoder,
    random_init_encoder,
    topk_accuracy,
)
from ssl_jax.evaluation import finetune as finetune_module  # the module
from ssl_jax.run import Run
from ssl_jax.train import train

# Higher rates than the defaults so that a few dozen steps from scratch learn the patterns. Every
# test uses these settings (and one architecture), so they share one compiled train step.
HP = FinetuneHParams(batch_size=16, lr=1e-2, encoder_lr=3e-3)
HP_FLAGS = dict(finetune_batch_size=16, finetune_lr=1e-2, finetune_encoder_lr=3e-3)
CONFIG = tiny_config(total_steps=2, checkpoint_every=2, num_devices=1)  # one device: faster compile


def _patterns(n: int, seed: int, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [n, size, size, 1] images whose class is a texture that survives crops and flips:
    0 horizontal stripes, 1 vertical stripes, 2 a checkerboard, 3 flat. Every image has a random
    mean brightness, contrast, phase and noise, so no single pixel or the mean tells the class."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    images = []
    for y in labels:
        py, px = rng.integers(0, 4, size=2)
        h = np.sign(np.sin(np.pi * (yy + py) / 2 + 0.1))  # period 4 px
        v = np.sign(np.sin(np.pi * (xx + px) / 2 + 0.1))
        texture = [h, v, h * v, np.zeros_like(h)][y]
        img = rng.uniform(90, 160) + rng.uniform(30, 60) * texture
        images.append(img + rng.normal(0, 8, size=img.shape))
    images = np.clip(np.rint(images), 0, 255).astype(np.uint8)[..., None]
    return images, labels.astype(np.int32)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return train(CONFIG, str(tmp_path_factory.mktemp("run"))), CONFIG


@pytest.fixture(scope="module")
def start(tiny_run):
    # The suite's supervised start, from the config as the suite reads it: one compilation.
    return random_init_encoder(Run(tiny_run[0].workdir).config)


def _logits(classifier, images):
    # Batches of 64, the suite's scoring batch in these tests: one compilation.
    return np.concatenate([classifier(images[i : i + 64]) for i in range(0, len(images), 64)])


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_schedule_and_default_steps():
    steps = np.arange(100)
    lr = np.asarray(jax.vmap(lambda s: finetune_module.lr_multiplier(s, 100, 0.1))(steps))
    np.testing.assert_allclose(lr[:10], np.arange(1, 11) / 10, rtol=1e-6)  # warmup, never 0
    assert lr[10] == pytest.approx(1.0) and np.all(np.diff(lr[10:]) < 0) and lr[-1] < 1e-3
    assert default_finetune_steps(600, 256) == 94  # 40 epochs
    assert default_finetune_steps(6000, 256) == 200  # capped
    assert default_finetune_steps(10, 256) == 50  # floor


def test_batch_order_visits_every_image_once_per_pass():
    order = finetune_module.batch_order(10, 5, 4, seed=0)  # 20 draws: two passes over 10
    assert order.shape == (5, 4)
    flat = order.ravel()
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    np.testing.assert_array_equal(order, finetune_module.batch_order(10, 5, 4, seed=0))
    assert not np.array_equal(order, finetune_module.batch_order(10, 5, 4, seed=1))


def test_finetuning_learns_a_visual_pattern_from_scratch(start):
    x, y = _patterns(128, seed=0)
    xt, yt = _patterns(192, seed=1)
    untrained = finetune_encoder(start, x, y, num_classes=4, steps=0, seed=0, hparams=HP)
    assert untrained.train_loss is None
    acc0 = topk_accuracy(_logits(untrained, xt), yt, 1)
    assert abs(acc0 - 0.25) < 0.05  # zero head: every class scores the same

    trained = finetune_encoder(start, x, y, num_classes=4, steps=150, seed=0, hparams=HP)
    acc = topk_accuracy(_logits(trained, xt), yt, 1)
    assert acc > 0.9, acc  # ~1.0 (0.75 after 60 steps, 0.85-1.0 after 100)
    assert trained.train_loss < 0.5 and trained.steps == 150


def test_finetuning_is_deterministic_and_trains_a_copy_of_the_encoder(start):
    x, y = _patterns(40, seed=2)
    before = _leaves(start.state)
    a = finetune_encoder(start, x, y, num_classes=4, steps=4, seed=3, hparams=HP)
    b = finetune_encoder(start, x, y, num_classes=4, steps=4, seed=3, hparams=HP)
    c = finetune_encoder(start, x, y, num_classes=4, steps=4, seed=4, hparams=HP)
    for u, v in zip(_leaves(a.state), _leaves(b.state), strict=True):
        np.testing.assert_array_equal(u, v)
    assert any(
        not np.array_equal(u, v) for u, v in zip(_leaves(a.state), _leaves(c.state), strict=True)
    )
    # The encoder's convolutions and BatchNorm statistics moved...
    tuned = a.module.encoder
    original = start.module
    for name in ("convs", "norms"):
        for new, old in zip(getattr(tuned, name), getattr(original, name), strict=True):
            attr = "kernel" if name == "convs" else "mean"
            assert np.abs(getattr(new, attr)[...] - getattr(old, attr)[...]).max() > 1e-6
    # ...in a copy: the starting encoder is untouched (its arrays were not donated).
    for u, v in zip(before, _leaves(start.state), strict=True):
        np.testing.assert_array_equal(u, v)


def test_finetune_rejects_bad_arguments(start):
    x, y = _patterns(8, seed=0)
    with pytest.raises(ValueError, match="labels must be in"):
        finetune_encoder(start, x, y + 4, num_classes=4, steps=1, seed=0)
    with pytest.raises(ValueError, match="uint8"):
        finetune_encoder(start, x.astype(np.float32), y, num_classes=4, steps=1, seed=0)
    with pytest.raises(ValueError, match="steps"):
        finetune_encoder(start, x, y, num_classes=4, steps=-1, seed=0)
    with pytest.raises(ValueError, match="finetune_lr"):
        FinetuneHParams(lr=0.0)
    with pytest.raises(ValueError, match="finetune_crop_scale"):
        FinetuneHParams(crop_scale=(0.5, 1.5))


def test_evaluate_rejects_bad_selections(tmp_path):
    missing = str(tmp_path / "missing")  # the arguments are checked before the run is read
    with pytest.raises(ValueError, match="protocols"):
        evaluate(missing, protocols=("finetuning",))
    with pytest.raises(ValueError, match="finetune_fractions"):
        evaluate(missing, label_fractions=(0.1,), finetune_fractions=(0.5,))
    with pytest.raises(ValueError, match="no representation"):
        evaluate(missing, representations=("supervised",), protocols=("knn", "linear"))
    with pytest.raises(ValueError, match="no representation"):  # 100% is not fine-tuned
        evaluate(missing, label_fractions=(1.0,), representations=("supervised",))


# ----------------------------------------------------------------------------- the suite


def test_evaluate_emits_finetune_rows_trained_on_the_labelled_subset(tiny_run, monkeypatch):
    result, config = tiny_run
    if os.path.exists(os.path.join(result.workdir, "eval.json")):  # no rows kept from before
        os.remove(os.path.join(result.workdir, "eval.json"))
    trained_on = []

    def recording_finetune(encoder, images, labels, **kwargs):
        trained_on.append((encoder.step, images.copy(), labels.copy()))
        return finetune_encoder(encoder, images, labels, **kwargs)

    monkeypatch.setattr(finetune_module, "finetune_encoder", recording_finetune)
    compiled = finetune_module._train_step._cache_size()
    rows = evaluate(
        result.workdir,
        label_fractions=(0.25, 1.0),
        protocols=("finetune",),
        finetune_steps=3,
        batch_size=64,
        **HP_FLAGS,
    )
    # ssl and supervised share one compiled step (with the other tests: that of HP).
    assert finetune_module._train_step._cache_size() <= compiled + 1

    assert [(r["representation"], r["protocol"], r["label_fraction"]) for r in rows] == [
        ("ssl", "finetune", 0.25),
        ("supervised", "finetune", 0.25),  # 100% is not fine-tuned by default
    ]
    for r in rows:
        assert r["n_labels"] == 24 and r["seed"] == 0 and r["step"] == 2
        assert 0.0 <= r["top1"] <= 1.0 and r["top5"] is None  # 4 classes
        assert (r["steps"], r["batch_size"]) == (3, 16)
        assert (r["lr"], r["encoder_lr"]) == (HP.lr, HP.encoder_lr)
        assert np.isfinite(r["train_loss"])

    # Both started where they should (the checkpoint; a random init) and trained on exactly the
    # labelled subset's images and labels, never on test images.
    src = make_source(config)
    subset = class_balanced_subset(
        np.array([src[i]["label"] for i in range(len(src))]), 0.25, seed=0
    )
    expected = src.read_batch(subset)
    assert [step for step, _, _ in trained_on] == [2, 0]
    for _, images, labels in trained_on:
        np.testing.assert_array_equal(images, expected["image"])
        np.testing.assert_array_equal(labels, expected["label"])

    assert json.load(open(os.path.join(result.workdir, "eval.json"))) == rows
    md = open(os.path.join(result.workdir, "eval.md")).read()
    assert "| ssl | finetune |" in md and "| supervised | finetune |" in md
    assert "- finetune: the whole encoder" in md and "3 steps at 25%; batch 16" in md


def test_cli_evaluate_finetune_flags(tiny_run):
    result, _ = tiny_run
    if os.path.exists(os.path.join(result.workdir, "eval.json")):  # no rows kept from before
        os.remove(os.path.join(result.workdir, "eval.json"))
    args = [
        "evaluate",
        "--workdir",
        result.workdir,
        "--label_fractions=0.25,1.0",
        "--finetune_fractions=1.0",
        "--representations=supervised",
        "--protocols=finetune",
        "--finetune_steps=2",
        "--finetune_batch_size=16",
        "--finetune_lr=0.01",
        "--finetune_encoder_lr=0.003",
        "--batch_size=64",
    ]
    assert cli.main(args) == 0
    rows = json.load(open(os.path.join(result.workdir, "eval.json")))
    assert [(r["representation"], r["label_fraction"], r["steps"], r["lr"]) for r in rows] == [
        ("supervised", 1.0, 2, 0.01)
    ]
    with pytest.raises(SystemExit, match="protocols"):
        cli.main(["evaluate", "--workdir", result.workdir, "--protocols=probe"])
    with pytest.raises(SystemExit, match="finetune_fractions"):
        cli.main(["evaluate", "--workdir", result.workdir, "--finetune_fractions=a"])
