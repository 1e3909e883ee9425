"""DINO on the plug-in core: multi-crop views, the DINO head, the step's pieces (teacher
temperature warm-up, per-tensor clipping, the frozen last layer, the weight-decay schedule) and
one tiny end-to-end run of a ViT with 2 + 2 crops."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import tiny_config
from ssl_jax import augment, logs
from ssl_jax import config as config_lib
from ssl_jax.methods import dino
from ssl_jax.models import DINOHead
from ssl_jax.optim import make_optimizer

# ----------------------------------------------------------------------------- multi-crop


def test_multi_crop_views_and_local_crops():
    view = augment.grayscale_preset(16)
    crops = augment.MultiCrop(local_crops=3, local_size=8)
    g1, g2, local = crops.views(view, view)
    assert g1.crop_scale == g2.crop_scale == (0.4, 1.0) and g1.size == 16
    assert local == dataclasses.replace(view, size=8, crop_scale=(0.05, 0.4), solarize_prob=0.0)
    assert augment.MultiCrop().views(view, view) == (view, view, None)  # off: unchanged

    images = np.random.default_rng(0).integers(0, 255, (5, 16, 16, 1), np.uint8)
    x = augment.local_views(images, jax.random.key(0), local, 3)
    assert x.shape == (3, 5, 8, 8, 1) and x.dtype == jnp.float32
    # Every crop is its own draw; the same key gives the same crops.
    assert float(jnp.abs(x[0] - x[1]).max()) > 0.1
    np.testing.assert_array_equal(x, augment.local_views(images, jax.random.key(0), local, 3))


def test_local_crops_are_an_error_for_a_method_that_does_not_use_them():
    c = config_lib.base_config()
    c.method, c.multi_crop.local_crops = "vicreg", 2
    with pytest.raises(ValueError, match="local_crops=2 is invalid: method 'vicreg' does not"):
        config_lib.validate(c)
    c.method = "dino"
    config_lib.validate(c)
    c.multi_crop.local_scale = (0.5, 0.2)
    with pytest.raises(ValueError, match="config.multi_crop.local_scale must be"):
        config_lib.validate(c)


# ----------------------------------------------------------------------------- the head


def test_dino_head_shapes_and_weight_norm():
    head = DINOHead(12, 40, hidden_features=16, bottleneck=8, rngs=nnx.Rngs(0))
    x = np.random.default_rng(1).normal(size=(3, 12)).astype(np.float32)
    y = head(x)
    assert y.shape == (3, 40) and y.dtype == jnp.float32
    # Weight-normalised, bottleneck L2-normalised: each logit is a cosine, in [-1, 1] ...
    assert float(jnp.abs(y).max()) <= 1.0 + 1e-6
    # ... and scaling a prototype's direction changes nothing.
    head.last_layer.direction[...] = head.last_layer.direction[...] * jnp.arange(1.0, 41.0)
    np.testing.assert_allclose(head(x), y, rtol=1e-5, atol=1e-6)
    assert head.last_layer.scale is None  # norm_last_layer: the scale is fixed at 1
    learn = DINOHead(
        12, 40, hidden_features=16, bottleneck=8, norm_last_layer=False, rngs=nnx.Rngs(0)
    )
    assert learn.last_layer.scale[...].shape == (40,)


def test_dino_head_batch_norm_option_sits_before_each_gelu():
    x = np.random.default_rng(2).normal(3.0, 5.0, size=(64, 12)).astype(np.float32)
    head = DINOHead(12, 40, hidden_features=16, bottleneck=8, use_bn=True, rngs=nnx.Rngs(0))
    assert len(head.norms) == 2 and not DINOHead(12, 40, rngs=nnx.Rngs(0)).norms
    h = x
    for linear, norm in zip(head.mlp[:2], head.norms, strict=True):  # the official order
        h = nnx.gelu(norm(linear(h)), approximate=False)
    h = head.mlp[2](h)
    h = h / jnp.linalg.norm(h, axis=-1, keepdims=True)
    w = head.last_layer.direction[...]
    np.testing.assert_allclose(head(x), h @ (w / jnp.linalg.norm(w, axis=0)), atol=1e-5)
    # Train mode: each hidden unit is normalised over the batch.
    z = np.asarray(head.norms[0](head.mlp[0](x)), np.float64)
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(0), 1.0, rtol=1e-3)


# ----------------------------------------------------------------------------- step pieces


def test_teacher_temperature_warms_up_linearly():
    hp = dino.Hparams(
        warmup_teacher_temperature=0.04, teacher_temperature=0.07, warmup_teacher_steps=30
    )
    got = [float(dino.teacher_temperature(jnp.asarray(s), hp)) for s in (0, 15, 30, 100)]
    np.testing.assert_allclose(got, [0.04, 0.055, 0.07, 0.07], rtol=1e-6)


def test_clip_per_tensor_matches_the_official_rule():
    g = {"a": np.full((2, 2), 3.0, np.float32), "b": np.array([0.1, 0.0], np.float32)}
    out = dino.clip_per_tensor(g, 3.0)
    np.testing.assert_allclose(out["a"], g["a"] * 3.0 / (6.0 + 1e-6), rtol=1e-6)  # ||a|| = 6
    np.testing.assert_array_equal(out["b"], g["b"])  # below the bound: unchanged
    assert dino.clip_per_tensor(g, None) is g


def test_weight_decay_follows_a_cosine_from_start_to_end():
    c = config_lib.base_config()
    c.optimizer, c.base_lr, c.lr_scaling, c.warmup_steps = "sgd", 1.0, "none", 0
    c.momentum, c.weight_decay, c.weight_decay_end = 0.0, 0.04, 0.4
    tx, sched = make_optimizer(c, total_steps=10, global_batch_size=256)
    params = {"w": jnp.ones((2, 2))}
    zeros = jax.tree.map(jnp.zeros_like, params)
    state, got = tx.init(params), []
    for step in range(11):
        updates, state = tx.update(zeros, state, params)
        got.append(-float(updates["w"][0, 0]) / float(sched(step)) if step < 10 else None)
    want = [0.4 + 0.5 * (0.04 - 0.4) * (1 + np.cos(np.pi * s / 10)) for s in range(10)]
    np.testing.assert_allclose(got[:10], want, rtol=1e-5)
    c.optimizer = "lars"
    with pytest.raises(ValueError, match="config.weight_decay_end=0.4 is invalid"):
        config_lib.validate(c)


# ----------------------------------------------------------------------------- end to end


def test_a_tiny_vit_dino_run_with_two_local_crops(tmp_path):
    config = tiny_config(
        "dino",
        total_steps=3,
        checkpoint_every=3,
        num_devices=2,
        optimizer="adamw",
        base_lr=1e-3,
        weight_decay=0.04,
        weight_decay_end=0.4,
        **{
            "multi_crop.local_crops": 2,
            "multi_crop.local_size": 8,
            "dino.out_dim": 32,
            "dino.head_hidden": 16,
            "dino.head_bottleneck": 8,
            "dino.freeze_last_layer_steps": 2,
            "dino.warmup_teacher_steps": 2,
            "dino.teacher_temperature": 0.07,
            "model.encoder": "vit_tiny",
            "model.vit.patch_size": 4,
            "model.vit.image_size": 16,
            "model.vit.drop_path": 0.1,  # the student's only: the train step gives it a key
        },
    )
    start = dino.init_state(config, jax.random.key(config.seed))
    from ssl_jax.train import train

    state = train(config, str(tmp_path)).state
    records = logs.read_metrics(str(tmp_path))
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert np.isfinite(r["loss"]) and 0 < r["teacher_entropy"] < np.log(32)
        # The batch's mean distribution is at least as spread as its rows (concavity).
        assert r["teacher_entropy"] <= r["teacher_batch_entropy"] + 1e-5 <= np.log(32) + 1e-5
        assert r["kl"] == pytest.approx(r["loss"] - r["teacher_entropy"], abs=1e-5)
    assert [r["teacher_temperature"] for r in records] == pytest.approx([0.04, 0.055, 0.07])

    # Frozen for 2 steps (the next test), updated at the third.
    before = np.asarray(jax.tree.leaves(start.params["projector"]["last_layer"])[0])
    after = np.asarray(jax.tree.leaves(state.params["projector"]["last_layer"])[0])
    assert not np.array_equal(before, after)
    assert float(np.abs(np.asarray(state.extra["center"])).max()) > 0  # the centre moved
    moved = [
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in zip(
            jax.tree.leaves(state.target.params), jax.tree.leaves(start.target.params), strict=True
        )
    ]
    assert max(moved) > 0  # the teacher follows the student

    from ssl_jax.evaluation import load_encoder

    encoder = load_encoder(str(tmp_path))
    assert np.asarray(encoder(np.zeros((2, 16, 16, 1), np.uint8))).shape == (2, 192)


def test_the_last_layer_stays_frozen_and_undecayed_while_frozen():
    config = tiny_config(
        "dino",
        optimizer="adamw",
        weight_decay=0.5,
        warmup_steps=0,
        **{
            "dino.out_dim": 16,
            "dino.head_hidden": 8,
            "dino.head_bottleneck": 4,
            "dino.freeze_last_layer_steps": 5,
        },
    )
    state = dino.init_state(config, jax.random.key(0))
    images = np.random.default_rng(0).integers(0, 255, (16, 16, 16, 1), np.uint8)
    new, _ = jax.jit(dino.train_step)(state, {"image": images}, jax.random.key(1))
    pick = lambda s: np.asarray(jax.tree.leaves(s.params["projector"]["last_layer"])[0])  # noqa: E731
    np.testing.assert_array_equal(pick(new), pick(state))
    mlp = lambda s: np.asarray(jax.tree.leaves(s.params["projector"]["mlp"])[0])  # noqa: E731
    assert not np.array_equal(mlp(new), mlp(state))


@pytest.mark.parametrize(
    "recipe",
    ["dino_fashion_mnist", "dino_cifar10", "dino_imagenet", "moco_v3_vit_imagenet"],
)
def test_vit_recipes_build_and_validate(recipe):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parent.parent / "configs" / f"{recipe}.py"
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    variants = [None, "quick", "full"] if recipe == "dino_fashion_mnist" else [None]
    for variant in variants:
        config = module.get_config(variant)
        config_lib.validate(config)
        assert config.model.encoder.startswith("vit_")
        assert config.image_size % config.model.vit.patch_size == 0
        assert config.multi_crop.local_size % config.model.vit.patch_size == 0
    assert "ssl-jax pretrain --config configs/" + path.name in module.__doc__
