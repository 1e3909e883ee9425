"""What a refactor must not change: the losses a seed and config log, and old work directories.

``fixtures/golden_losses_ccc30d5.json`` holds the losses main logged at ccc30d5, before the
plug-in core (issue 14) was built; ``fixtures/run_<method>_ccc30d5/`` are tiny work directories
that main wrote then (``helpers.tiny_config(method, total_steps=4, checkpoint_every=2)`` on the 8
fake devices, TensorBoard files left out). Today's code must log the same losses, and resume,
evaluate and embed those runs.
"""

import json
import os
import shutil

import numpy as np
import pytest

from helpers import tiny_config
from ssl_jax import logs
from ssl_jax.train import train

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def _golden(name: str) -> list[float]:
    with open(os.path.join(FIXTURES, "golden_losses_ccc30d5.json")) as f:
        return json.load(f)[name]


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_losses_equal_those_logged_before_the_refactor(tmp_path, method):
    # One device: the same program as then, so the same float32 numbers, bit for bit.
    train(tiny_config(method, total_steps=6, num_devices=1), str(tmp_path))
    losses = [r["loss"] for r in logs.read_metrics(str(tmp_path))]
    assert losses == _golden(f"tiny_{method}_devices1")


def _old_run(tmp_path, method: str) -> str:
    workdir = str(tmp_path / f"run_{method}")
    shutil.copytree(os.path.join(FIXTURES, f"run_{method}_ccc30d5"), workdir)
    return workdir


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_a_run_written_before_the_refactor_resumes_exactly(tmp_path, method):
    workdir = _old_run(tmp_path, method)
    logged = {r["step"]: r["loss"] for r in logs.read_metrics(workdir)}
    shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))  # resume from step 2
    train(tiny_config(method, total_steps=4, checkpoint_every=2), workdir)
    again = {r["step"]: r["loss"] for r in logs.read_metrics(workdir)}
    assert sorted(again) == [1, 2, 3, 4]
    np.testing.assert_allclose([again[3], again[4]], [logged[3], logged[4]], rtol=1e-6)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]


def test_a_run_written_before_the_refactor_evaluates_and_embeds(tmp_path):
    from ssl_jax.evaluation import evaluate, load_encoder

    workdir = _old_run(tmp_path, "byol")
    encoder = load_encoder(workdir)
    assert encoder.step == 4
    images = np.zeros((3, 16, 16, 1), np.uint8)
    feats = np.asarray(encoder(images))
    assert feats.shape == (3, encoder.num_features) and np.isfinite(feats).all()
    rows = evaluate(
        workdir,
        label_fractions=(1.0,),
        representations=("ssl",),
        protocols=("knn",),
        plots=False,
    )
    assert {r["protocol"] for r in rows} == {"knn", "knn_k20"}
    assert all(r["step"] == 4 and 0.0 <= r["top1"] <= 1.0 for r in rows)
    assert os.path.isfile(os.path.join(workdir, "eval.json"))
