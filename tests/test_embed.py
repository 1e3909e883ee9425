"""`ssl-jax embed`: a run's features for any data source, in source order."""

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
    for i, name in enumerate(["a/0.png", "a/1.png", "b/2.png", "b/3.png", "b/4.png"]):
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


def test_embed_synthetic_matches_the_encoder(workdir, tmp_path):
    out = tmp_path / "f.npy"
    assert cli.main(["embed", "--workdir", workdir, "--data", "synthetic", "--out", str(out)]) == 0
    from ssl_jax.data import get_source

    src = get_source("synthetic", split="train", image_shape=(16, 16, 1))
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
