"""ssl_jax.export_encoder / `ssl-jax export` and ssl_jax.load_encoder of an export directory; the
PyTorch names (torchvision's ResNet, timm's ViT) checked in NumPy (torch itself is checked by
benchmarks/check_export_torch.py)."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors import numpy as safetensors_numpy

import ssl_jax
from helpers import tiny_config
from ssl_jax import config as config_lib
from ssl_jax import encoder_files, models, outputs, torch_names
from ssl_jax.cli import main
from ssl_jax.export import export_encoder
from ssl_jax.run import Run, abstract_state


def _untrained_run(path: str, config, step: int = 2) -> str:
    """A run directory as training leaves it (config.json, a checkpoint of ``step``) without
    training or even initialising: the state's arrays drawn at random (BatchNorm variances
    positive), so that a mix-up of any two shows. Nothing compiles (training the tiny run took
    15-30 s of the suite's budget, initialising it eagerly ~19 s)."""
    rng = np.random.default_rng(0)

    def draw(where, like):
        if like.dtype != np.float32:
            return np.full(like.shape, step, like.dtype)
        low = 0.1 if "batch_stats" in jax.tree_util.keystr(where) else -0.5
        return rng.uniform(low, 0.5, like.shape).astype(np.float32)

    abstract = abstract_state(config, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    state = jax.tree_util.tree_map_with_path(draw, abstract)
    run = Run(path)
    os.makedirs(run.workdir, exist_ok=True)
    outputs.write_text(run.config_path, config_lib.to_json(config))
    ckpt = run.checkpointer(max_to_keep=None, async_save=False)
    ckpt.save(step, state, {})
    ckpt.close()
    return run.workdir


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return _untrained_run(str(tmp_path_factory.mktemp("run")), tiny_config())


@pytest.fixture(scope="module")
def exported(workdir):
    return export_encoder(workdir)


def _images(n=3):
    return np.random.default_rng(0).integers(0, 256, (n, 16, 16, 1), dtype=np.uint8)


def test_export_round_trip_gives_the_runs_features_exactly(workdir, exported):
    assert exported == os.path.join(workdir, "exported")
    run_encoder, encoder = ssl_jax.load_encoder(workdir), ssl_jax.load_encoder(exported)
    np.testing.assert_array_equal(np.asarray(encoder(_images())), run_encoder(_images()))
    assert (encoder.step, encoder.image_size, encoder.mean, encoder.std) == (
        run_encoder.step,
        run_encoder.image_size,
        run_encoder.mean,
        run_encoder.std,
    )
    assert encoder.config.model.to_dict() == run_encoder.config.model.to_dict()
    assert encoder.workdir == exported
    # A string step as for a run; another step is not in an export.
    assert ssl_jax.load_encoder(exported, step="2").step == 2
    with pytest.raises(FileNotFoundError, match="step 2 only, not step 1"):
        ssl_jax.load_encoder(exported, step=1)


def test_the_export_holds_the_encoder_alone_and_says_what_it_expects(workdir, exported):
    arrays = safetensors_numpy.load_file(os.path.join(exported, "encoder.safetensors"))
    state = ssl_jax.load_encoder(workdir).state
    assert (
        len(arrays) == len(jax.tree.leaves(state)) == 20
    )  # 4 convs + 4 BN x 4: no head, no optimizer
    assert all(name.split(".")[0] in ("convs", "norms") for name in arrays)
    np.testing.assert_array_equal(arrays["norms.3.var"], state["norms"][3]["var"][...])
    with open(os.path.join(exported, "encoder.json")) as f:
        meta = json.load(f)
    assert meta["model"]["encoder"] == "convnet"
    assert meta["model"]["settings"] == {"features": [4, 8, 8, 16], "grid": 1, "head_pools": False}
    assert meta["input"]["image_size"] == 16 and meta["input"]["channels"] == 1
    assert meta["input"]["mean"] == [0.286] and meta["input"]["std"] == [0.353]
    assert meta["features"]["dim"] == 16 and meta["features"]["kind"] == "pooled"
    assert meta["source"] == {
        "workdir": workdir,
        "step": 2,
        "method": "simclr",
        "dataset": "synthetic",
    }
    assert meta["ssl_jax_version"] == ssl_jax.__version__
    assert meta["model"]["num_parameters"] == sum(a.size for a in arrays.values())


def test_a_dino_export_holds_the_teacher(tmp_path):
    # What DINO evaluates (method.encoder_of), not the student; the fake run's two differ.
    config = tiny_config(
        "dino",
        **{"dino.out_dim": 16, "dino.head_hidden": 8, "dino.head_bottleneck": 4},
    )
    workdir = _untrained_run(str(tmp_path / "run"), config)
    arrays = safetensors_numpy.load_file(
        os.path.join(export_encoder(workdir), "encoder.safetensors")
    )
    state = Run(workdir).restore_state()
    teacher = encoder_files.flat_arrays(nnx.state(state.target.module().encoder))
    student = encoder_files.flat_arrays(nnx.state(state.module().encoder))
    assert arrays.keys() == teacher.keys() == student.keys()
    for name in arrays:
        np.testing.assert_array_equal(arrays[name], teacher[name])
        assert not np.array_equal(arrays[name], student[name]), name


def test_export_command(workdir, tmp_path, capsys):
    out = str(tmp_path / "enc")
    assert main(["export", "--workdir", workdir, "--out", out]) == 0
    said = capsys.readouterr().out
    assert "exported the convnet encoder of step 2 (16 features)" in said and out in said
    assert encoder_files.is_export_dir(out)
    # Re-exporting over an export replaces it; a folder of other files is refused.
    assert main(["export", f"--workdir={workdir}", f"--out={out}", "--step=2"]) == 0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    for args, message in [
        ([f"--out={tmp_path / 'other'}"], "holds other files"),
        (["--step=1"], r"has no checkpoint 1; it has \[2\]"),
        (["--format=torch"], "convnet encoder has no torchvision or timm counterpart"),
        (["--format=onnx"], r"Unknown export format\(s\) \['onnx'\]"),
    ]:
        with pytest.raises(SystemExit, match=f"^ssl-jax export: .*{message}"):
            main(["export", f"--workdir={workdir}", *args])
    with pytest.raises(SystemExit, match="--workdir DIR .* is required"):
        main(["export"])
    with pytest.raises(SystemExit, match="is an exported encoder already"):
        main(["export", f"--workdir={out}"])


def test_a_damaged_export_is_named(exported, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    arrays = safetensors_numpy.load_file(os.path.join(exported, "encoder.safetensors"))
    del arrays["convs.0.kernel"]
    arrays["norms.0.mean"] = arrays["norms.0.mean"][:2]
    safetensors_numpy.save_file(arrays, str(bad / "encoder.safetensors"))
    meta = open(os.path.join(exported, "encoder.json")).read()
    (bad / "encoder.json").write_text(meta)
    with pytest.raises(ValueError, match=r"missing \['convs.0.kernel'\]"):
        ssl_jax.load_encoder(str(bad))
    (bad / "encoder.json").write_text(meta.replace('"format_version": 1', '"format_version": 9'))
    with pytest.raises(ValueError, match="newer than this ssl_jax reads"):
        ssl_jax.load_encoder(str(bad))


# --- PyTorch names and layouts, in NumPy ---------------------------------------------------


def _arrays_and_meta(name, settings, channels):
    """Random arrays of the encoder's shapes (``nnx.eval_shape``: no model is built) and the
    ``model`` part of its encoder.json."""
    entry = models.ENCODERS.get(name)
    block = entry.settings(**settings)
    module = nnx.eval_shape(
        lambda: entry.constructor(**block.kwargs(), in_channels=channels, rngs=nnx.Rngs(0))
    )
    rng = np.random.default_rng(0)
    arrays = {
        ".".join(map(str, path)): rng.random(var.shape, dtype=np.float32)
        for path, var in nnx.to_flat_state(nnx.state(module))
    }
    meta = {"model": {"encoder": name, "settings": settings, "in_channels": channels}}
    return arrays, meta


# Facts of torchvision 0.29 (resnet18/50 with fc replaced by Identity): number of state_dict
# entries and a few names and shapes.
TORCHVISION = {
    "resnet18": (
        120,
        {"conv1.weight": (64, 3, 7, 7), "layer2.0.downsample.0.weight": (128, 64, 1, 1)},
    ),
    "resnet50": (
        318,
        {"layer4.2.conv3.weight": (2048, 512, 1, 1), "layer1.0.downsample.1.running_var": (256,)},
    ),
}


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_resnet_arrays_take_torchvisions_names_and_layouts(name):
    arrays, meta = _arrays_and_meta(name, {"stem": "imagenet", "width": 1}, 3)
    state_dict, model = torch_names.torch_state_dict(meta, arrays)
    count, some = TORCHVISION[name]
    assert len(state_dict) == count
    for key, shape in some.items():
        assert state_dict[key].shape == shape, key
    assert state_dict["bn1.num_batches_tracked"].dtype == np.int64
    np.testing.assert_array_equal(
        state_dict["layer1.0.bn2.running_mean"], arrays["blocks.0.bn2.mean"]
    )
    kernel, weight = arrays["blocks.1.conv2.kernel"], state_dict["layer1.1.conv2.weight"]
    assert weight[5, 7, 0, 2] == kernel[0, 2, 7, 5]  # HWIO -> OIHW
    assert model["constructor"] == f"torchvision.models.{name}"
    assert model["changes"] == ["model.fc = torch.nn.Identity()"]


def test_a_cifar_stem_resnet_says_how_to_change_torchvisions():
    arrays, meta = _arrays_and_meta("resnet18", {"stem": "cifar", "width": 1}, 1)
    state_dict, model = torch_names.torch_state_dict(meta, arrays)
    assert state_dict["conv1.weight"].shape == (64, 1, 3, 3)
    assert "model.conv1 = torch.nn.Conv2d(1, 64, 3, 1, 1, bias=False)" in model["changes"]
    assert "model.maxpool = torch.nn.Identity()" in model["changes"]
    with pytest.raises(ValueError, match="no ResNet of width 2"):
        torch_names.torch_state_dict({"model": {**meta["model"], "settings": {"width": 2}}}, {})


def test_vit_arrays_take_timms_names_and_layouts():
    settings = {"patch_size": 4, "image_size": 8, "pool": "mean"}
    arrays, meta = _arrays_and_meta("vit_tiny", settings, 3)
    state_dict, model = torch_names.torch_state_dict(meta, arrays)
    # timm 1.0's vit_tiny_patch16_224 (num_classes=0): 4 + 12 blocks x 12 + 2 entries.
    assert len(state_dict) == 4 + 12 * 12 + 2
    assert state_dict["blocks.11.attn.qkv.weight"].shape == (576, 192)
    np.testing.assert_array_equal(
        state_dict["blocks.3.attn.qkv.weight"], arrays["blocks.3.attn.qkv.kernel"].T
    )
    np.testing.assert_array_equal(state_dict["blocks.0.mlp.fc2.bias"], arrays["blocks.0.fc2.bias"])
    np.testing.assert_array_equal(state_dict["norm.weight"], arrays["norm.scale"])
    assert state_dict["pos_embed"].shape == (1, 5, 192)
    # The patch embedding: our matmul over (y, x, c)-ordered pixels equals timm's convolution.
    patch = np.random.default_rng(1).standard_normal((4, 4, 3)).astype(np.float32)
    conv = np.einsum("dcyx,yxc->d", state_dict["patch_embed.proj.weight"], patch)
    np.testing.assert_allclose(conv, patch.reshape(-1) @ arrays["patch_embed.kernel"], atol=1e-5)
    assert model["kwargs"] == {
        "num_classes": 0,
        "img_size": 8,
        "patch_size": 4,
        "in_chans": 3,
        "global_pool": "avg",
        "fc_norm": False,
    }
