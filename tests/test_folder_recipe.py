"""Your own images in one command (issue 17): the folder recipe, data errors that name the real
problem and its fix (checked as a user types the commands), no silent grayscale conversion, and
one line, not a traceback, when a folder has no labels or no test split."""

import os

import numpy as np
import pytest
from PIL import Image

from ssl_jax import cli, data, recipes
from ssl_jax import config as config_lib
from ssl_jax.evaluation import suite
from ssl_jax.evaluation.monitor import make_monitor


def save(root, names, *, colour=True, size=16):
    """size x size PNGs at root/NAME: random RGB (colour) or gray, some saved as RGB."""
    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        if colour:
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        else:  # gray content: stored as L, or as RGB with equal channels
            gray = rng.integers(0, 256, (size, size, 1), dtype=np.uint8)
            pixels = gray[..., 0] if i % 2 else np.repeat(gray, 3, axis=-1)
        Image.fromarray(pixels).save(root / name)
    return root


def pretrain_error(tmp_path, recipe, *overrides):
    """The one line `ssl-jax pretrain --config RECIPE OVERRIDES --workdir W` exits with."""
    argv = ["pretrain", "--config", recipe, "--workdir", str(tmp_path / "w"), *overrides]
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    message = str(info.value)
    assert message.startswith("ssl-jax pretrain: ") and "\n" not in message
    return message


def test_the_folder_recipe_is_rgb_photos_and_says_what_to_pass(tmp_path):
    config = recipes.load("folder")
    assert (config.image_size, config.data_image_size, config.image_channels) == (64, 64, 3)
    assert config.augment == "simclr_imagenet" and not config.data_in_memory
    assert suite.raw_pixel_size(config) == 36  # its baseline: 3,888 raw pixels, not 12,288
    listed = {r.name: r for r in recipes.available()}["folder"]
    assert listed.description.startswith("SimCLR on a folder of your own photos")
    doc = recipes.load_module(listed.path).__doc__
    assert "ssl-jax pretrain --config configs/folder.py --config.dataset=folder:DIR" in doc
    message = pretrain_error(tmp_path, "folder")  # no --config.dataset: what to pass
    assert "config.dataset is not set: pass --config.dataset=folder:/path/to/images" in message


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (  # the real problem first, not config.data_in_memory
            ["--config.dataset=folder:MISSING"],
            ["folder MISSING does not exist"],
        ),
        (
            ["--config.dataset=cifar10"],
            [
                "'cifar10' is no data source (TFDS datasets are 'tfds:cifar10')",
                "settings are for Fashion-MNIST's 28x28 grayscale images",
                "use a recipe made for it, --config simclr_cifar10, or add "
                "--config.dataset=tfds:cifar10 --config.image_size=32 --config.image_channels=3",
            ],
        ),
        (["--config.dataset=tfds:cifar10"], ["has 32x32 RGB images", "--config simclr_cifar10"]),
        (["--config.dataset=mnist"], ["use --config.dataset=tfds:mnist."]),
        (["--config.dataset=RGB"], ["'RGB' is a folder: write --config.dataset=folder:RGB"]),
        (  # the Fashion-MNIST recipe on a folder: the folder recipe is the fix
            ["--config.dataset=folder:RGB"],
            ["config.data_in_memory=True", "use --config folder --config.dataset=folder:RGB"],
        ),
        (  # ... and with data_in_memory off, never a silent grayscale conversion
            ["--config.dataset=folder:RGB", "--config.data_in_memory=False"],
            [
                "folder:RGB holds colour images",
                "config.image_channels=1 would train on grayscale conversions of them: use "
                "--config folder (a recipe for RGB photos), or add --config.image_channels=3",
            ],
        ),
    ],
)
def test_data_errors_name_the_real_problem_and_the_fix(tmp_path, monkeypatch, overrides, expected):
    monkeypatch.chdir(tmp_path)
    save(tmp_path / "RGB", ["a.png", "b.png"])
    message = pretrain_error(tmp_path, "simclr_fashion_mnist", *overrides)
    for text in expected:
        assert text in message


def test_grayscale_files_are_fine_in_a_grayscale_or_an_rgb_run(tmp_path):
    folder = save(tmp_path / "gray", [f"{i}.png" for i in range(4)], colour=False)
    config = recipes.load("simclr_fashion_mnist")
    config.dataset, config.data_in_memory = f"folder:{folder}", False
    config_lib.validate(config)
    for channels in (1, 3):  # gray stored as RGB is no colour; gray in an RGB run: converted up
        config.image_channels = channels
        source = data.source_from_config(config)
        assert source.image_shape == (28, 28, channels)  # data_image_size: image_size by default
        data.check_source(source, config)


def test_no_labels_or_no_test_split_is_one_line_for_the_monitor_and_the_evaluation(
    tmp_path, capsys
):
    flat = save(tmp_path / "flat", ["0.png", "1.png"])
    config = recipes.load("folder")
    config.dataset = f"folder:{flat}"
    line = (
        f"no labels in folder:{flat} (no class subfolders): the kNN monitor and the linear/kNN "
        f"evaluation are skipped; put images in {flat}/<class>/ to get them"
    )
    source = data.source_from_config(config)
    assert make_monitor(config, source, lambda: 1 / 0) is None
    assert capsys.readouterr().out.strip() == line
    assert suite._not_evaluable(config, "test") == line  # pretrain: this line, no rows
    classes = save(tmp_path / "classes", ["a/0.png", "b/1.png"])
    config.dataset = f"folder:{classes}"
    assert suite._not_evaluable(config, "test").startswith(
        f"no test split in folder:{classes} (no test/ folder): the linear/kNN evaluation is "
        f"skipped; put held-out images in {classes / 'test'}/<class>/"
    )
    split = save(tmp_path / "split", ["train/0.png", "train/1.png", "test/2.png"])
    config.dataset = f"folder:{split}"
    with pytest.raises(ValueError, match=r"linear/kNN evaluation cannot run; put images in .*"):
        suite._sources(config, "test")  # `ssl-jax evaluate`: the same line as an error
    # Some images outside class folders: left out of the evaluation, with a line.
    save(tmp_path / "split", ["train/a/3.png", "train/b/4.png", "test/a/5.png", "test/b/6.png"])
    train, test = suite._sources(config, "test")
    assert (len(train), len(test)) == (2, 2) and (train.labels >= 0).all()
    assert "2 images outside a class folder (no label) are left out" in capsys.readouterr().out


def test_pretrain_on_a_folder_without_labels_or_test_split_ends_with_one_line(
    tmp_path, monkeypatch, capsys
):
    """The command as a user types it, training a stand-in (real runs: test_train.py): the
    evaluation at the end says in one line why it is skipped, before any checkpoint is read,
    and the command succeeds."""
    from ssl_jax import train

    def fake_train(config, workdir, **_):
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config_lib.to_json(config))

    monkeypatch.setattr(train, "train", fake_train)
    flat = save(tmp_path / "photos", ["0.png", "a/1.png"])  # labels, but no test/ split
    argv = ["pretrain", "--config", "folder", f"--config.dataset=folder:{flat}"]
    assert cli.main([*argv, "--workdir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert f"no test split in folder:{flat} (no test/ folder): the linear/kNN evaluation" in out
    (flat / "a" / "1.png").unlink()  # no class folder: no labels now
    (flat / "a").rmdir()
    assert cli.main([*argv, "--workdir", str(tmp_path / "run2")]) == 0
    assert f"no labels in folder:{flat} (no class subfolders)" in capsys.readouterr().out
