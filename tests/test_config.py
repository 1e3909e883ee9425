"""Config schema, recipes and fail-fast validation."""

import importlib.util
import json
import pathlib

import pytest

from ssl_jax import config as config_lib

RECIPES = sorted(pathlib.Path(__file__).parent.parent.glob("configs/*.py"))


def _load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_is_valid_and_documents_its_command(path):
    module = _load(path)
    config = module.get_config()
    config_lib.validate(config)
    assert f"--config configs/{path.name}" in module.__doc__


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_variants_load_and_unknown_ones_are_errors(path):
    module = _load(path)
    for variant in ("quick", "full"):
        if f"{path.name}:{variant}" in module.__doc__:  # every variant the docstring names
            config_lib.validate(module.get_config(variant))
    with pytest.raises(ValueError, match="unknown variant 'fulll'"):
        module.get_config("fulll")


def test_recipes_exist():
    names = {p.stem for p in RECIPES}
    for name in (
        "simclr_fashion_mnist",
        "byol_fashion_mnist",
        "simclr_cifar10",
        "byol_cifar10",
        "simclr_imagenet",
        "byol_imagenet",
    ):
        assert name in names


def test_unknown_field_suggests_the_right_one():
    c = config_lib.base_config()
    c.unlock()
    c.batch_sze = 12
    with pytest.raises(ValueError, match=r"unknown config field 'batch_sze'.*'batch_size'"):
        config_lib.validate(c)


def test_unknown_nested_field():
    c = config_lib.base_config()
    c.model.unlock()
    c.model.encodr = "convnet"
    with pytest.raises(ValueError, match=r"'model.encodr'.*'model.encoder'"):
        config_lib.validate(c)


@pytest.mark.parametrize(
    "field,value",
    [
        ("method", "moco"),
        ("batch_size", 0),
        ("total_steps", 0),
        ("simclr.temperature", 0.0),
        ("image_channels", 2),
        ("byol.base_tau", 1.5),
        ("eval_every", -1),
        ("augment", "grayscal"),
    ],
)
def test_out_of_range_values_name_the_field(field, value):
    c = config_lib.base_config()
    group, _, leaf = field.rpartition(".")
    (c[group] if group else c)[leaf] = value
    with pytest.raises(ValueError, match=f"config.{field}"):
        config_lib.validate(c)


@pytest.mark.parametrize(
    "field,value",
    [
        ("model.projector_dim", 0),
        ("model.projector_hidden", 0),
        ("model.predictor_hidden", -1),
        ("model.resnet.width", 0),
        ("model.convnet.features", (32, 0)),
        ("model.convnet.features", ()),
        ("num_devices", 0),
    ],
)
def test_model_sizes_and_device_count_are_checked(field, value):
    c = config_lib.base_config()
    group, _, leaf = field.rpartition(".")
    target = c[group] if group else c
    with target.ignore_type():
        target[leaf] = value
    with pytest.raises(ValueError, match=f"config.{field}="):
        config_lib.validate(c)


def test_data_in_memory_only_for_datasets_that_support_it(tmp_path):
    c = config_lib.base_config()
    c.data_in_memory = True
    config_lib.validate(c)  # fashion_mnist: fine
    c.dataset = "synthetic"
    config_lib.validate(c)  # made in memory anyway: fine (the Fashion-MNIST recipes set it)
    c.dataset = f"folder:{tmp_path}"  # (a missing folder is reported first: test_folder_recipe)
    with pytest.raises(ValueError, match=rf"config.data_in_memory.*'folder:{tmp_path}'"):
        config_lib.validate(c)


@pytest.mark.parametrize(
    "old,new",
    [("temperature", "simclr.temperature"), ("model.convnet_grid", "model.convnet.grid")],
)
def test_a_renamed_field_names_its_new_name(old, new):
    c = config_lib.base_config()
    group, _, leaf = old.rpartition(".")
    target = c[group] if group else c
    target.unlock()
    target[leaf] = 1
    with pytest.raises(ValueError, match=rf"'{old}' is now '{new}'"):
        config_lib.validate(c)


def test_old_config_json_fields_load_under_their_new_names():
    saved = json.loads(config_lib.to_json(config_lib.base_config()))
    del saved["simclr"], saved["model"]["convnet"]
    saved.update(temperature=0.5, loss_block_size=64)
    saved["model"].update(convnet_features=[8, 16], convnet_grid=2, head_pools=True)
    config = config_lib.from_dict(saved)
    assert config.simclr.temperature == 0.5 and config.simclr.loss_block_size == 64
    assert config.model.convnet.features == (8, 16) and config.model.convnet.grid == 2
    assert config.model.convnet.head_pools is True
    config_lib.validate(config)


@pytest.mark.parametrize("value", [2.0, 1.0, -0.1])
def test_momentum_outside_0_1_is_rejected(value):
    c = config_lib.base_config()
    c.momentum = value
    with pytest.raises(ValueError, match=f"config.momentum={value!r} is invalid: must be in"):
        config_lib.validate(c)
