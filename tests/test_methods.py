"""The methods added on the plug-in core (SimSiam, Barlow Twins, VICReg, MoCo v3, SupCon): one
tiny end-to-end run each (train, metrics, checkpoint, encoder), their settings blocks, their
recipes; SupCon's labels."""

import importlib.util
import pathlib

import numpy as np
import pytest

from helpers import tiny_config
from ssl_jax import config as config_lib
from ssl_jax import logs
from ssl_jax.train import train

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"
NEW = ["simsiam", "barlow_twins", "vicreg", "moco_v3", "supcon"]
TERMS = {
    "vicreg": {"invariance", "variance", "covariance"},
    "moco_v3": {"momentum"},
    "barlow_twins": {"on_diagonal", "off_diagonal"},
    "supcon": {"positives"},
}


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
    [
        ("barlow_twins.lambda_", 0.0),
        ("barlow_twins.scale_loss", -1.0),
        ("vicreg.cov_coeff", -1.0),
        ("moco_v3.temperature", 0.0),
        ("moco_v3.base_momentum", 1.5),
        ("supcon.temperature", -0.1),
    ],
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


def test_moco_v3_momentum_network_follows_the_query_network(tmp_path, vit_micro):
    """Step 0: the key network is a copy; after the steps it is the EMA (momentum 0.99 -> 1),
    different from its start, and the loss is within the 2 tau-scaled cross-entropy's range: each
    of the two terms is 2 tau * CE with CE in [0, log N + 2 / tau] (cosines in [-1, 1]). On a ViT
    with the paper's frozen patch projection: that projection never moves, in either network."""
    import math

    import jax

    from ssl_jax.methods import get_method

    vit = {"model.encoder": vit_micro, "model.vit.patch_size": 8, "model.vit.image_size": 16}
    config = tiny_config(
        "moco_v3", total_steps=3, num_devices=1, optimizer="adamw", base_lr=1e-3, **vit,
        **{"moco_v3.freeze_patch_embed": True, "model.vit.drop_path": 0.1},
    )  # fmt: skip
    with pytest.raises(ValueError, match="freeze_patch_embed=True .* use a vit_"):
        get_method("moco_v3").init_state(
            tiny_config("moco_v3", **{"moco_v3.freeze_patch_embed": True}), jax.random.key(0)
        )
    start = get_method("moco_v3").init_state(config, jax.random.key(0))
    leaves = lambda tree: jax.tree.leaves(tree)  # noqa: E731
    for a, b in zip(leaves(start.target.params), leaves(start.params["network"]), strict=True):
        np.testing.assert_array_equal(a, b)
    result = train(config, str(tmp_path))
    state = result.state
    moved = [
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in zip(leaves(state.target.params), leaves(start.target.params), strict=True)
    ]
    assert max(moved) > 0
    for tree, before in [(state.params["network"], start.params["network"])] * 2 + [
        (state.target.params, start.target.params)
    ]:
        kernel = lambda t: np.asarray(t["encoder"]["patch_embed"]["kernel"])  # noqa: E731
        np.testing.assert_array_equal(kernel(tree), kernel(before))
        np.testing.assert_array_equal(kernel(tree), kernel(start.params["network"]))
    records = logs.read_metrics(str(tmp_path))
    tau = config.moco_v3.temperature
    bound = 2 * 2 * tau * (math.log(config.batch_size) + 2 / tau)
    assert all(0 <= r["loss"] <= bound for r in records)
    assert records[0]["momentum"] == pytest.approx(0.99, abs=1e-6)


def test_supcon_reads_the_labels_of_the_batch():
    """With one label per image, SupCon's step is SimCLR's at the same temperature (same init,
    views and loss value); with 4 classes of 4 images, each anchor has 2 x 4 - 1 = 7 positives."""
    import jax

    from ssl_jax.methods import get_method

    images = np.random.default_rng(0).integers(0, 255, (16, 16, 16, 1), np.uint8)
    key = jax.random.key(1)
    runs = {}
    for method, labels in [
        ("simclr", None),
        ("supcon", np.arange(16)),
        ("supcon", np.arange(16) // 4),
    ]:
        config = tiny_config(method, **{"simclr.temperature": 0.1, "supcon.temperature": 0.1})
        module = get_method(method)
        state = module.init_state(config, jax.random.key(0))
        batch = {"image": images} if labels is None else {"image": images, "label": labels}
        step = jax.jit(module.train_step)  # eager, the three steps took ~90 s op by op
        runs[method, None if labels is None else int(labels.max())] = step(state, batch, key)[1]
    simclr, per_image, per_class = runs["simclr", None], runs["supcon", 15], runs["supcon", 3]
    assert float(per_image["loss"]) == pytest.approx(float(simclr["loss"]), rel=1e-5)
    assert float(per_image["positives"]) == 1.0 and float(per_class["positives"]) == 7.0
    assert float(per_class["loss"]) != pytest.approx(float(simclr["loss"]), rel=1e-3)


def _image_folder(root, classes):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(16):
        sub = root / classes[i % len(classes)] if classes[i % len(classes)] else root
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16), np.uint8), "L").save(sub / f"{i}.png")
    return root


@pytest.mark.parametrize(
    "classes,message",
    [
        ([None], "has none: use a labelled dataset, or a self-supervised method"),
        (["a", "b", None, None], "8 of the 16 images of 'folder:.*' have none"),
    ],
)
def test_supcon_without_labels_is_one_line_naming_the_fix(tmp_path, classes, message):
    folder = _image_folder(tmp_path / "images", classes)
    config = tiny_config("supcon", dataset=f"folder:{folder}", data_image_size=16)
    with pytest.raises(ValueError, match=message):
        train(config, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def _one_step_change(method, **overrides):
    """|params after one step - before| per leaf path, from the same init, batch and key."""
    import jax

    from ssl_jax.methods import get_method

    config = tiny_config(method, **overrides)
    module = get_method(method)
    state = module.init_state(config, jax.random.key(0))
    before = jax.tree_util.tree_flatten_with_path(state.params)[0]
    images = np.random.default_rng(0).integers(0, 255, (16, 16, 16, 1), np.uint8)
    new, _ = jax.jit(module.train_step)(state, {"image": images}, jax.random.key(1))
    after = jax.tree.leaves(new.params)
    return {
        jax.tree_util.keystr(path): np.abs(np.asarray(b) - np.asarray(a))
        for (path, a), b in zip(before, after, strict=True)
    }


def test_simsiam_fixed_predictor_lr_trains_the_predictor_during_warm_up():
    """Step 0 of the warm-up has lr 0: only a predictor at the fixed (peak) lr moves."""
    moved = _one_step_change("simsiam", **{"simsiam.fix_predictor_lr": True})
    assert all(d.max() == 0 for p, d in moved.items() if "predictor" not in p)
    assert max(d.max() for p, d in moved.items() if "predictor" in p) > 0
    still = _one_step_change("simsiam")
    assert all(d.max() == 0 for d in still.values())


def test_barlow_twins_bias_lr_scale_scales_only_biases_and_norms():
    base = _one_step_change("barlow_twins", warmup_steps=0)
    half = _one_step_change("barlow_twins", warmup_steps=0, **{"barlow_twins.bias_lr_scale": 0.5})
    vectors = [p for p, d in base.items() if d.ndim == 1 and d.max() > 0]
    kernels = [p for p, d in base.items() if d.ndim > 1]
    assert vectors and kernels
    for p in vectors:
        np.testing.assert_allclose(half[p], 0.5 * base[p], rtol=1e-4, atol=1e-7)
    for p in kernels:
        np.testing.assert_allclose(half[p], base[p], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("method", ["byol", "moco_v3"])
def test_multi_crop_adds_the_local_crops_to_the_loss(method):
    """2 + 2 crops: the step runs with the local crops in the loss (a different value from the
    same state, batch and key with two crops), and its metrics stay finite. (SimCLR's multi-crop
    loss is checked against a float64 reference below; DINO's step in tests/test_dino.py.)"""
    import jax

    from ssl_jax.methods import get_method

    images = np.random.default_rng(0).integers(0, 255, (16, 16, 16, 1), np.uint8)
    losses = []
    for local_crops in (0, 2):
        config = tiny_config(
            method, **{"multi_crop.local_crops": local_crops, "multi_crop.local_size": 8}
        )
        module = get_method(method)
        state = module.init_state(config, jax.random.key(0))
        _, metrics = jax.jit(module.train_step)(state, {"image": images}, jax.random.key(1))
        assert all(np.isfinite(float(v)) for v in metrics.values())
        losses.append(float(metrics["loss"]))
    assert losses[0] != pytest.approx(losses[1], rel=1e-4)


def test_simclr_multi_crop_loss_is_nt_xent_with_every_crop_of_an_image_positive():
    """A float64 reference of SwAV's multi-crop SimCLR: each crop an anchor, the other crops of
    its image its positives, every other crop in the denominator; mean over anchors and
    positives."""
    import math

    from ssl_jax.methods.simclr import _multi_crop_loss

    n, v, d, tau = 3, 2, 4, 0.5
    rng = np.random.default_rng(2)
    z, z_local = rng.normal(size=(2 * n, d)), rng.normal(size=(n * v, d))
    rows = [(i // 2, x) for i, x in enumerate(z)] + [(i // v, x) for i, x in enumerate(z_local)]
    unit = [(img, x / np.linalg.norm(x)) for img, x in rows]
    total, count = 0.0, 0
    for a, (img_a, xa) in enumerate(unit):
        others = [(img, float(xa @ x) / tau) for b, (img, x) in enumerate(unit) if b != a]
        log_denominator = math.log(sum(math.exp(s) for _, s in others))
        positives = [s for img, s in others if img == img_a]
        total += sum(log_denominator - s for s in positives) / len(positives)
        count += 1
    got = _multi_crop_loss(np.float32(z), np.float32(z_local), n, tau)
    np.testing.assert_allclose(got, total / count, rtol=1e-5)
