"""Recipes by name or path, their variants, the listing, overrides and the wheel that ships them."""

import os
import pathlib
import tomllib

import ml_collections
import pytest

from ssl_jax import config as config_lib
from ssl_jax import recipes

REPO = pathlib.Path(__file__).parent.parent


def test_every_recipe_declares_its_variants_and_each_variant_is_a_valid_config():
    listed = recipes.available()
    assert [r.name for r in listed] == sorted(p.stem for p in (REPO / "configs").glob("*.py"))
    for recipe in listed:
        assert isinstance(recipe.variants, dict), f"{recipe.name} declares no VARIANTS"
        assert recipe.description and "\n" not in recipe.description, recipe.name
        assert len(recipe.description) <= 110, recipe.name  # one line of `ssl-jax recipes`
        for spec in [recipe.name, *(f"{recipe.name}:{v}" for v in recipe.variants)]:
            config_lib.validate(recipes.load(spec))
        for variant, text in recipe.variants.items():
            assert text and f":{variant}" in recipes.listing(listed)


def test_the_wheel_ships_every_package_and_the_recipes():
    """pyproject.toml lists the packages (find cannot map configs/ into ssl_jax): a package
    added under ssl_jax/ must be listed, or the wheel lacks it."""
    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {
        ".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "ssl_jax").rglob("__init__.py")
    }
    assert set(setup["packages"]) == found | {"ssl_jax.configs"}
    assert setup["package-dir"] == {"ssl_jax.configs": "configs"}
    assert setup["package-data"]["ssl_jax.configs"] == ["*.py"]


def test_a_name_a_path_and_the_readme_path_outside_a_checkout(tmp_path, monkeypatch):
    shipped = os.path.join(recipes.recipes_dir(), "simclr_fashion_mnist.py")
    assert recipes.resolve("simclr_fashion_mnist:quick") == (shipped, "quick")
    assert recipes.resolve(str(REPO / "configs/byol_cifar10.py")) == (
        str(REPO / "configs/byol_cifar10.py"),
        None,
    )
    monkeypatch.chdir(tmp_path)  # no configs/ here: the README's path means the shipped recipe
    assert recipes.resolve("configs/simclr_fashion_mnist.py:full") == (shipped, "full")
    assert recipes.load("simclr_fashion_mnist:quick").total_steps == 20
    assert recipes.split_spec("C:\\runs\\r.py") == ("C:\\runs\\r.py", None)


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("configs/nope.py", "no recipe file configs/nope.py: give an existing .py file"),
        ("simclr_fashon_mnist", "did you mean simclr_fashion_mnist"),
        ("simclr_fashion_mnist:quik", "use one of simclr_fashion_mnist:quick, "),
        ("simclr_cifar10:quick", "unknown variant 'quick' of recipe simclr_cifar10: "),
        ("DIR", "is a directory: give a recipe file in it"),
        ("noget.py", "defines no get_config(): a recipe defines `def get_config(arg=None)`"),
        ("raises.py:x", "raises.py:2): ValueError: no variant 'x'. Fix the recipe"),
        ("syntax.py", "syntax.py:1: syntax error"),
        ("imports.py", "imports.py:1 raised ModuleNotFoundError: No module named 'nope_mod'"),
        ("dict.py", "returned dict, not an ml_collections.ConfigDict"),
    ],
)
def test_recipe_errors_are_one_line_naming_the_fix(tmp_path, monkeypatch, spec, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "DIR").mkdir()
    _write(tmp_path, "noget.py", "x = 1\n")
    _write(
        tmp_path,
        "raises.py",
        "def get_config(arg=None):\n    raise ValueError(f'no variant {arg!r}')\n",
    )
    _write(tmp_path, "syntax.py", "def get_config(:\n")
    _write(tmp_path, "imports.py", "import nope_mod\n")
    _write(tmp_path, "dict.py", "def get_config(arg=None):\n    return {'a': 1}\n")
    with pytest.raises(recipes.RecipeError) as info:
        recipes.load(spec)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_listing_and_show():
    text = recipes.listing()
    assert "simclr_fashion_mnist\n    SimCLR on Fashion-MNIST" in text
    assert "    :quick    a 20-step smoke test" in text
    shown = recipes.show("simclr_fashion_mnist:quick")
    assert "  total_steps = 20" in shown and "  base_lr = 0.075" in shown
    assert "  batch_size = " not in shown  # the default (256): not a change


def test_overrides_dotted_or_nested_with_types_checked():
    config = config_lib.base_config()
    given = recipes.apply_overrides(
        config, {"model.encoder": "resnet18", "model": {"convnet": {"features": [8, 16]}}}
    )
    assert given == ["model.encoder", "model.convnet.features"]
    assert config.model.encoder == "resnet18" and config.model.convnet.features == (8, 16)
    for overrides, message in [
        (
            {"model.encodr": "x"},
            "unknown config field 'model.encodr' (did you mean 'model.encoder'",
        ),
        ({"batch_size": "x"}, "config.batch_size='x' has the wrong type: the field holds int"),
        ({"model": 3}, "config field 'model' is a group"),
    ]:
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            recipes.apply_overrides(config_lib.base_config(), overrides)


def test_load_with_overrides_copies_a_config_dict():
    base = config_lib.base_config()
    config = recipes.load_with_overrides(base, {"total_steps": 7})
    assert config.total_steps == 7 and base.total_steps == 1000
    assert isinstance(config, ml_collections.ConfigDict)


def test_total_epochs_or_total_steps():
    config = config_lib.base_config()
    config.total_epochs = 3
    config_lib.settle_duration(config, ["batch_size"])  # nothing to settle
    config_lib.resolve_total_steps(config, steps_per_epoch=234)
    assert config.total_steps == 702
    config_lib.settle_duration(config, ["total_steps"])  # the command line's steps win
    assert config.total_epochs is None
    with pytest.raises(ValueError, match="both given: set one of them"):
        config_lib.settle_duration(config, ["total_steps", "total_epochs"])
    config.total_epochs = 0
    with pytest.raises(ValueError, match=r"config.total_epochs=0 is invalid"):
        config_lib.validate(config)


@pytest.mark.parametrize(
    "field, value, ok",
    [
        ("model.convnet.features", ("abc",), False),
        ("model.convnet.features", (8, 1.5), False),
        ("model.convnet.features", (8, 16), True),
        ("multi_crop.global_scale", (0.3, 1), True),  # an int where floats are: fine
    ],
)
def test_tuple_fields_are_type_checked(field, value, ok):
    config = config_lib.base_config()
    group, _, leaf = field.rpartition(".")
    parent = config
    for part in group.split("."):
        parent = parent[part]
    assert isinstance(parent[leaf], tuple)
    parent[leaf] = value
    if ok:
        config_lib.check_types(config)
    else:
        with pytest.raises(ValueError, match=rf"config.{field}=.* must be a tuple of int"):
            config_lib.validate(config)


def test_the_python_entry_point_wires_recipe_overrides_training_and_evaluation(
    tmp_path, monkeypatch, capsys
):
    """``ssl_jax.pretrain`` as a notebook calls it; training and evaluation are stand-ins (the
    real ones are tested in test_train.py and test_cli.py)."""
    import ssl_jax
    from ssl_jax import evaluation, train

    calls = []

    def fake_train(config, workdir, **_):
        calls.append(("train", config.total_steps, config.model.encoder))
        print("a progress line")
        return train.TrainResult(state="STATE", workdir=os.path.abspath(workdir))

    def fake_evaluate(workdir, **kwargs):
        calls.append(("evaluate", kwargs["finetune_fractions"]))
        return [{"protocol": "knn"}]

    monkeypatch.setattr(train, "train", fake_train)
    monkeypatch.setattr(evaluation, "evaluate", fake_evaluate)
    result = ssl_jax.pretrain(
        str(tmp_path), "simclr_fashion_mnist", quiet=True, **{"model.encoder": "resnet18"}
    )
    assert calls == [("train", 1200, "resnet18"), ("evaluate", (0.01,))]
    assert capsys.readouterr().out == ""  # quiet
    assert result.state == "STATE" and result.evaluation == [{"protocol": "knn"}]
    assert result.workdir == str(tmp_path) and result.config.model.encoder == "resnet18"
    calls.clear()
    result = ssl_jax.pretrain(str(tmp_path), "simclr_fashion_mnist:quick", total_epochs=2)
    assert calls == [("train", 20, "convnet")] and result.evaluation is None  # :quick: no eval
    assert result.config.total_epochs == 2  # resolved into total_steps by train.train
    assert "a progress line" in capsys.readouterr().out
    with pytest.raises(ValueError, match="both given"):
        ssl_jax.pretrain(str(tmp_path), total_steps=5, total_epochs=1)
