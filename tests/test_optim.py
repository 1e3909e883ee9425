"""Optimizers and schedules against hand-computed references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.config import base_config
from ssl_jax.optim import (
    LrGroup,
    TopLevel,
    decay_mask,
    make_optimizer,
    scaled_learning_rate,
    warmup_cosine,
)


def test_lr_scaling_rules():
    assert scaled_learning_rate(0.3, 4096, "linear") == pytest.approx(4.8)
    assert scaled_learning_rate(0.075, 4096, "sqrt") == pytest.approx(4.8)
    assert scaled_learning_rate(0.1, 512, "none") == 0.1
    with pytest.raises(ValueError, match="lr_scaling"):
        scaled_learning_rate(0.1, 512, "quadratic")


def test_warmup_cosine_shape():
    sched = warmup_cosine(2.0, total_steps=100, warmup_steps=10)
    assert float(sched(0)) == 0.0
    assert float(sched(5)) == pytest.approx(1.0)
    assert float(sched(10)) == pytest.approx(2.0)
    # Cosine from the peak at step 10 to 0 at step 100.
    k = 55
    expected = 2.0 * 0.5 * (1 + math.cos(math.pi * (k - 10) / 90))
    assert float(sched(k)) == pytest.approx(expected, rel=1e-5)
    assert float(sched(100)) == pytest.approx(0.0, abs=1e-7)


def test_decay_mask_excludes_vectors():
    params = {"kernel": jnp.ones((3, 3, 1, 4)), "bias": jnp.ones(4), "scale": jnp.ones(4)}
    assert decay_mask(params) == {"kernel": True, "bias": False, "scale": False}


def _config(**kw):
    c = base_config()
    c.update(kw)
    return c


def test_lars_matches_numpy_reference():
    """One LARS step (You et al. 2017) in float64 NumPy: kernels get weight decay and the trust
    ratio, vectors get neither."""
    c = _config(
        optimizer="lars",
        base_lr=0.5,
        lr_scaling="none",
        warmup_steps=0,
        weight_decay=0.1,
        momentum=0.9,
        lars_trust_coefficient=0.001,
    )
    tx, sched = make_optimizer(c, total_steps=10, global_batch_size=256)
    rng = np.random.default_rng(0)
    params = {
        "w": rng.normal(size=(4, 3)).astype(np.float32),
        "b": rng.normal(size=3).astype(np.float32),
    }
    grads = {
        "w": rng.normal(size=(4, 3)).astype(np.float32),
        "b": rng.normal(size=3).astype(np.float32),
    }
    state = tx.init(params)
    updates, _ = tx.update(grads, state, params)

    lr = float(sched(0))
    w, gw = params["w"].astype(np.float64), grads["w"].astype(np.float64)
    g = gw + 0.1 * w
    trust = 0.001 * np.linalg.norm(w) / np.linalg.norm(g)
    np.testing.assert_allclose(updates["w"], -lr * trust * g, rtol=1e-5)
    np.testing.assert_allclose(updates["b"], -lr * grads["b"].astype(np.float64), rtol=1e-5)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_other_optimizers_skip_decay_on_vectors(name):
    c = _config(optimizer=name, base_lr=0.1, lr_scaling="none", warmup_steps=0, weight_decay=0.5)
    tx, _ = make_optimizer(c, total_steps=10, global_batch_size=256)
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    # With zero gradients only weight decay moves parameters: kernels move, vectors do not.
    assert float(jnp.abs(updates["w"]).sum()) > 0
    assert float(jnp.abs(updates["b"]).sum()) == 0


@pytest.mark.parametrize(
    "field,value", [("optimizer", "rmsprop"), ("base_lr", 0.0), ("weight_decay", -1.0)]
)
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        make_optimizer(_config(**{field: value}), total_steps=10, global_batch_size=256)


def _sgd_steps(group, steps=4):
    """Plain SGD (no momentum, no decay), warm-up 2 of 8 steps, unit gradients: each step's
    update of each parameter is minus its learning rate."""
    c = _config(optimizer="sgd", base_lr=0.4, lr_scaling="none", warmup_steps=2, weight_decay=0.0)
    c.momentum = 0.0
    tx, sched = make_optimizer(c, total_steps=8, global_batch_size=256, group=group)
    params = {
        "net": {"w": jnp.ones((2, 2)), "b": jnp.ones(2)},
        "predictor": {"w": jnp.ones((2, 2))},
    }
    ones = jax.tree.map(jnp.ones_like, params)
    state, lrs = tx.init(params), []
    for _ in range(steps):
        updates, state = tx.update(ones, state, params)
        lrs.append(jax.tree.map(lambda u: -float(u.reshape(-1)[0]), updates))
    return lrs, [float(sched(k)) for k in range(steps)]


def test_lr_group_constant_holds_the_peak_for_its_parameters():
    """SimSiam's fixed predictor lr: the predictor trains at the peak 0.4 from step 0, the rest
    follows the warm-up + cosine schedule."""
    lrs, sched = _sgd_steps(LrGroup(TopLevel("predictor"), constant=True))
    assert sched[0] == 0.0 and sched[2] == pytest.approx(0.4)
    for lr, s in zip(lrs, sched, strict=True):
        assert lr["predictor"]["w"] == pytest.approx(0.4)
        assert lr["net"]["w"] == pytest.approx(s) and lr["net"]["b"] == pytest.approx(s)


def test_lr_group_without_select_scales_what_decay_skips():
    """Barlow Twins' bias / BatchNorm lr: the vectors (exempt from decay) at scale x the schedule,
    the kernels at the schedule."""
    lrs, sched = _sgd_steps(LrGroup(None, scale=0.024))
    for lr, s in zip(lrs[1:], sched[1:], strict=True):
        assert lr["net"]["b"] == pytest.approx(0.024 * s, rel=1e-5)
        assert lr["net"]["w"] == pytest.approx(s) and lr["predictor"]["w"] == pytest.approx(s)
