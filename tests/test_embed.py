"""`ssl-jax embed`: a run's features for any data source, in source order."""

import json

import numpy as np
import pytest
from PIL import Image

from helpers import tiny_config
from ssl_jax import cli
from ssl_jax.evaluation import load_encoder
from ssl_jax.train import train


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    train(tiny_config(total_steps=2, checkpoint_every=2), str(path))
    return str(path)


def test_embed_a_folder_of_images(workdir, tmp_path, capsys):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 20, 20), dtype=np.uint8)
    # A newline in a file name used to split its _files.txt line in two, shifting later rows.
    for i, name in enumerate(["a/0.png", "a/1.png", "b/2\nx.png", "b/3.png", "b/4.png"]):
        (tmp_path / "imgs" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i], "L").save(tmp_path / "imgs" / name)
    out = tmp_path / "out" / "features.npy"
    args = ["embed", "--workdir", workdir, "--data", f"folder:{tmp_path / 'imgs'}", "--out"]
    assert cli.main([*args, str(out)]) == 0
    feats = np.load(out)
    assert feats.shape == (5, 16) and feats.dtype == np.float32
    np.testing.assert_array_equal(
        np.load(tmp_path / "out" / "features_labels.npy"), [0, 0, 1, 1, 1]
    )
    # The same as applying the loaded encoder to the images (20 px resized to 16 on the host).
    resized = np.stack(
        [np.asarray(Image.fromarray(im).resize((16, 16), Image.BILINEAR)) for im in images]
    )
    expected = np.asarray(load_encoder(workdir)(resized[..., None]))
    np.testing.assert_allclose(feats, expected, atol=0.05 * np.abs(expected).max())
    assert "embedded 5 images" in capsys.readouterr().out
    # Which file each row is, relative to the folder read: one JSON string per line.
    lines = (tmp_path / "out" / "features_files.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        "a/0.png",
        "a/1.png",
        "b/2\nx.png",
        "b/3.png",
        "b/4.png",
    ]


def test_embed_reads_a_folder_at_the_runs_data_image_size(workdir, tmp_path):
    """A run that read its folder at data_image_size=20 (and resized to 16 on the device): embed
    prepares the images the same way, so its features are evaluate's, not those of a direct
    resize to 16."""
    import json
    import shutil

    from ssl_jax.data.sources import resize_center_crop

    run = tmp_path / "run"
    shutil.copytree(workdir, run)
    config = json.loads((run / "config.json").read_text())
    config["data_image_size"] = 20
    (run / "config.json").write_text(json.dumps(config))
    images = np.random.default_rng(1).integers(0, 256, (3, 24, 24, 1), dtype=np.uint8)
    for i, image in enumerate(images):
        (tmp_path / "imgs" / "a").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[..., 0], "L").save(tmp_path / "imgs" / "a" / f"{i}.png")
    out = tmp_path / "f.npy"
    args = ["embed", "--workdir", str(run), "--data", f"folder:{tmp_path / 'imgs'}", "--out"]
    assert cli.main([*args, str(out)]) == 0
    encoder = load_encoder(str(run))
    at_20 = np.stack([resize_center_crop(im, 20) for im in images])
    direct = np.stack([resize_center_crop(im, 16) for im in images])
    expected, other = np.asarray(encoder(at_20)), np.asarray(encoder(direct))
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-5, atol=1e-5)
    assert np.abs(expected - other).max() > 1e-3  # the two preparations really differ


def save_images(root, names, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (len(names), 16, 16), dtype=np.uint8)
    for image, name in zip(images, names, strict=True):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, "L").save(root / name)
    return images


def test_embed_never_shifts_rows_past_an_unreadable_file(workdir, tmp_path, capsys):
    images = save_images(tmp_path / "imgs", ["a/0.png", "a/1.png", "b/2.png"])
    for name in ("a/1.png", "b/3.png"):  # a/1.png is the last of class a: its stand-in was b's
        (tmp_path / "imgs" / name).write_bytes(b"not an image")
    out = tmp_path / "f.npy"
    args = ["embed", "--workdir", workdir, "--data", f"folder:{tmp_path / 'imgs'}"]
    with pytest.raises(SystemExit) as info:
        cli.main([*args, "--out", str(out)])
    msg = str(info.value)
    assert "2 of the 4 image files" in msg and "a/1.png, b/3.png" in msg
    assert "--skip_unreadable" in msg
    assert not out.exists()
    # Explicitly leaving them out: every row is still the file listed beside it.
    assert cli.main([*args, "--out", str(out), "--skip_unreadable"]) == 0
    assert "left out 2 unreadable image file(s): a/1.png, b/3.png" in capsys.readouterr().out
    lines = (tmp_path / "f_files.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == ["a/0.png", "b/2.png"]
    np.testing.assert_array_equal(np.load(tmp_path / "f_labels.npy"), [0, 1])
    expected = np.asarray(load_encoder(workdir)(images[[0, 2], ..., None]))
    np.testing.assert_allclose(np.load(out), expected, atol=1e-4 * np.abs(expected).max())


def test_embed_folder_errors(workdir, tmp_path):
    for name in ("a/0.png", "a/1.png"):
        (tmp_path / "bad" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "bad" / name).write_bytes(b"garbage")
    save_images(tmp_path / "flat", ["a/0.png", "b/1.png"])

    def error(data, *extra):
        out = str(tmp_path / "x.npy")
        with pytest.raises(SystemExit) as info:
            cli.main(["embed", "--workdir", workdir, "--data", data, "--out", out, *extra])
        return str(info.value)

    assert "None of the 2 image files" in error(f"folder:{tmp_path / 'bad'}")
    # A split the folder does not have is an error, not the whole folder.
    assert "no 'test/' sub-folder" in error(f"folder:{tmp_path / 'flat'}", "--split=test")


def test_pretrain_and_evaluate_on_a_grayscale_folder_without_test_split(tmp_path, capsys):
    names = [f"{c}/{i}.png" for c in "ab" for i in range(8)]
    save_images(tmp_path / "imgs", names)
    run = tmp_path / "run"
    # image_channels=1 reaches the folder source (it used to load RGB and refuse to train).
    config = tiny_config(
        dataset=f"folder:{tmp_path / 'imgs'}",
        data_image_size=16,
        total_steps=2,
        checkpoint_every=2,
        eval_every=2,
    )
    train(config, str(run))
    out = capsys.readouterr().out
    assert "kNN monitor off: no test split to score" in out and "no 'test/' sub-folder" in out
    with pytest.raises(SystemExit) as info:
        cli.main(["evaluate", "--workdir", str(run), "--protocols=knn", "--representations=ssl"])
    msg = str(info.value)
    assert msg.startswith("ssl-jax evaluate:") and "no 'test/' sub-folder" in msg
    assert f"{tmp_path / 'imgs'}/test/<class>/" in msg


def test_embed_synthetic_matches_the_encoder(workdir, tmp_path):
    """`--data synthetic` reads the synthetic images as the run did (its size, count, classes)."""
    out = tmp_path / "f.npy"
    assert cli.main(["embed", "--workdir", workdir, "--data", "synthetic", "--out", str(out)]) == 0
    from ssl_jax.data import source_from_config

    src = source_from_config(load_encoder(workdir).config, "train")
    assert len(src) == 96  # helpers.tiny_config's synthetic_examples
    images = src.read_batch(np.arange(len(src)))["image"]
    np.testing.assert_allclose(np.load(out), np.asarray(load_encoder(workdir)(images)), atol=1e-5)


def test_embed_errors(workdir, tmp_path):
    def error(args):
        with pytest.raises(SystemExit) as info:
            cli.main(["embed", *args])
        return str(info.value)

    assert "--data, --out required" in error(["--workdir", workdir])
    msg = error(["--workdir", str(tmp_path / "nope"), "--data", "synthetic", "--out", "x.npy"])
    assert "config.json" in msg
    msg = error(["--workdir", workdir, "--data", "nosuch", "--out", str(tmp_path / "x.npy")])
    assert "nosuch" in msg
    assert not (tmp_path / "x.npy").exists()
    # An --out that cannot be written fails before any work (it used to fail after), naming it.
    (tmp_path / "a_file").write_text("")
    bad = tmp_path / "a_file" / "sub" / "x.npy"
    msg = error(["--workdir", "never/loaded", "--data", "synthetic", "--out", str(bad)])
    assert msg.startswith("ssl-jax embed: cannot write the --out files in ")
    assert str(bad.parent) in msg and "config.json" not in msg


# ----------------------------------------------------------------------------- load_encoder inputs


@pytest.fixture(scope="module")
def encoder(workdir):
    return load_encoder(workdir)


def _uint8_batch(n=2):
    return np.random.default_rng(1).integers(0, 256, (n, 16, 16, 1), dtype=np.uint8)


def test_encoder_float_images_must_be_in_0_1(encoder):
    x = _uint8_batch()
    # The documented float convention: uint8 / 255 gives the uint8 features.
    np.testing.assert_allclose(encoder(x.astype(np.float32) / 255), encoder(x), atol=1e-5)
    # Floats in [0, 255] used to give features off by hundreds without a word.
    with pytest.raises(ValueError, match=r"float images must be in \[0, 1\].*divide .* by 255"):
        encoder(x.astype(np.float32))
    with pytest.raises(ValueError, match=r"float images must be in \[0, 1\]; got values in \[-"):
        encoder(x / 255.0 - 0.5)  # already normalised


def test_encoder_rejects_unbatched_and_empty_images(encoder):
    x = _uint8_batch()
    with pytest.raises(ValueError, match=r"got shape \(16, 16, 1\).*images\[None\]"):
        encoder(x[0])
    with pytest.raises(ValueError, match=r"\[B, H, W\] pass images\[\.\.\., None\]"):
        encoder(x[..., 0])
    with pytest.raises(ValueError, match=r"empty batch: shape \(0, 16, 16, 1\)"):
        encoder(x[:0])
    with pytest.raises(ValueError, match=r"3 channels .* trained on 1-channel images"):
        encoder(np.repeat(x, 3, axis=-1))


def test_encoder_reports_the_dtype_it_was_given(encoder):
    x = _uint8_batch()
    # int64 (NumPy's default int), not the int32 that JAX would have cast it to.
    with pytest.raises(ValueError, match=r"got dtype int64 .*images\.astype\(np\.uint8\)"):
        encoder(x.astype(np.int64))
    with pytest.raises(ValueError, match=r"uint8 in \[0, 255\] or float .*; got dtype bool"):
        encoder(x > 0)


def test_load_encoder_step_is_an_int_or_its_string(workdir):
    assert load_encoder(workdir, step="2").step == 2
    assert load_encoder(workdir, step=np.int64(2)).step == 2
    for step in ("two", 2.0, True):
        with pytest.raises(TypeError, match=r"step must be an int checkpoint step"):
            load_encoder(workdir, step=step)


def test_embed_reads_from_the_runs_data_dir_unless_told(workdir, tmp_path, monkeypatch):
    import json
    import shutil

    from ssl_jax.data import from_config

    run = tmp_path / "run"
    shutil.copytree(workdir, run)
    config = json.loads((run / "config.json").read_text())
    config["data_dir"] = str(tmp_path / "the_runs_tfds")
    (run / "config.json").write_text(json.dumps(config))
    seen = []
    real = from_config.get_source

    def spy(spec, **kw):
        seen.append(kw["data_dir"])
        return real(spec, **kw)

    monkeypatch.setattr(from_config, "get_source", spy)
    args = ["embed", "--workdir", str(run), "--data", "synthetic", "--out", str(tmp_path / "f")]
    assert cli.main(args) == 0
    assert cli.main([*args, "--data_dir", str(tmp_path / "other")]) == 0
    assert seen == [str(tmp_path / "the_runs_tfds"), str(tmp_path / "other")]
