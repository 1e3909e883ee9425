"""The methods added on the plug-in core (SimSiam, Barlow Twins, VICReg): one tiny end-to-end
run each (train, metrics, checkpoint, encoder), their settings blocks, and their recipes."""

import importlib.util
import pathlib

import numpy as np
import pytest

from helpers import tiny_config
from ssl_jax import config as config_lib
from ssl_jax import logs
from ssl_jax.train import train

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"
NEW = ["simsiam", "barlow_twins", "vicreg"]
TERMS = {"vicreg": {"invariance", "variance", "covariance"}}


@pytest.mark.parametrize("method", NEW)
def test_tiny_run(tmp_path, method):
    config = tiny_config(method, total_steps=3, checkpoint_every=3, num_devices=2)
    train(config, str(tmp_path))
    records = logs.read_metrics(str(tmp_path))
    assert [r["step"] for r in records] == [1, 2, 3]
    expected = {"loss", "embed_std", "learning_rate", "l2_grads", "l2_params", "l2_updates"}
    assert expected | TERMS.get(method, set()) <= set(records[0])
    assert all(np.isfinite(r["loss"]) for r in records)
    assert records[-1]["l2_updates"] > 0

    from ssl_jax.evaluation import load_encoder

    encoder = load_encoder(str(tmp_path))
    assert encoder.step == 3
    assert np.isfinite(np.asarray(encoder(np.zeros((2, 16, 16, 1), np.uint8)))).all()


@pytest.mark.parametrize(
    "field,value",
    [("barlow_twins.lambda_", 0.0), ("barlow_twins.scale_loss", -1.0), ("vicreg.cov_coeff", -1)],
)
def test_method_settings_are_checked(field, value):
    c = config_lib.base_config()
    block, leaf = field.split(".")
    c[block][leaf] = value
    with pytest.raises(ValueError, match=f"config.{field}="):
        config_lib.validate(c)


@pytest.mark.parametrize("method", NEW)
@pytest.mark.parametrize("data", ["fashion_mnist", "cifar10", "imagenet"])
def test_recipes_build_and_validate(method, data):
    path = CONFIGS / f"{method}_{data}.py"
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config_lib.validate(config)
    assert config.method == method
    assert "ssl-jax pretrain --config configs/" + path.name in module.__doc__
