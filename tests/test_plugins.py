"""The plug-in core's promise, tried from outside the package: a new method is one file plus one
registration, and config, validation, --help, training, checkpoints, the HLO checks and
evaluation all pick it up (tests/plugins/toy_method.py)."""

import os
import sys

import numpy as np
import pytest

from helpers import tiny_config
from ssl_jax import config as config_lib
from ssl_jax import logs, parallel, profiling, run
from ssl_jax.methods import METHODS, get_method

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugins"))


@pytest.fixture
def toy():
    METHODS.add("toy", "toy_method")  # the one registration
    profiling._loss_scopes.cache_clear()
    yield get_method("toy")
    METHODS.remove("toy")
    profiling._loss_scopes.cache_clear()


def test_a_method_from_outside_trains_checkpoints_and_evaluates(toy, tmp_path):
    config = tiny_config("toy", total_steps=3, checkpoint_every=3, num_devices=1)
    assert config.toy.weight == 1.0 and "toy.weight = 1.0  # the loss's scale" in (
        config_lib.describe_fields()
    )
    config.toy.weight = -1.0
    with pytest.raises(ValueError, match=r"config.toy.weight=-1.0 is invalid"):
        config_lib.validate(config)
    config.toy.weight = 2.0

    from ssl_jax.evaluation import load_encoder
    from ssl_jax.train import train

    train(config, str(tmp_path))
    records = logs.read_metrics(str(tmp_path))
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and 0 <= r["loss"] <= 8 for r in records)
    encoder = load_encoder(str(tmp_path))
    assert encoder.step == 3 and encoder.config.toy.weight == 2.0
    feats = np.asarray(encoder(np.zeros((2, 16, 16, 1), np.uint8)))
    assert feats.shape == (2, encoder.num_features)


def test_a_method_from_outside_holds_only_data_parallel_collectives(toy):
    config = tiny_config("toy")
    mesh = parallel.make_mesh(8)
    inputs = run.abstract_step_inputs(config, mesh)
    text = run.jit_train_step(toy, mesh).lower(*inputs).compile().as_text()
    colls = profiling.collectives(text, 8)
    sizes = profiling.step_sizes(inputs[0], config)
    assert sizes["loss_scopes"] == ("toy_loss",)
    assert not profiling.data_parallel_problems(colls, **sizes)
