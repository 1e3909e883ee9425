"""Tests for ssl_jax.losses.self_distillation (dino_loss, dino_center): the official code's loops
in float64, finite differences, the stop-gradients, dtypes, and the global batch on 8 fake
devices (shard_map, pmap, jit on a default and on an Auto mesh)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

from ssl_jax.losses.self_distillation import dino_center, dino_loss

N_DEV = 8


def dino_reference(student, teacher, center, ts=0.1, tt=0.04):
    """Caron et al. 2021, Algorithm 1 / the official DINOLoss.forward, as float64 loops:
    for each teacher crop t and student crop s != t, the batch mean of
    -sum_k softmax((teacher_t - C) / tt)_k * log_softmax(student_s / ts)_k; mean over the pairs."""
    s, t = np.asarray(student, np.float64), np.asarray(teacher, np.float64)
    c = np.asarray(center, np.float64).reshape(-1)
    total, pairs = 0.0, 0
    for it in range(t.shape[0]):
        for iv in range(s.shape[0]):
            if iv == it:
                continue
            batch = 0.0
            for n in range(s.shape[1]):
                z = [(x - ci) / tt for x, ci in zip(t[it, n], c, strict=True)]
                zmax = max(z)
                p = [math.exp(v - zmax) for v in z]
                p = [v / sum(p) for v in p]
                a = [x / ts for x in s[iv, n]]
                amax = max(a)
                log_norm = amax + math.log(sum(math.exp(v - amax) for v in a))
                batch += -sum(pk * (ak - log_norm) for pk, ak in zip(p, a, strict=True))
            total += batch / s.shape[1]
            pairs += 1
    return total / pairs


def inputs(vs, vt, n, k, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    student = rng.normal(size=(vs, n, k))
    teacher = student[:vt] + 0.5 * rng.normal(size=(vt, n, k))
    center = 0.3 * rng.normal(size=(k,))
    return student.astype(dtype), teacher.astype(dtype), center.astype(dtype)


dino_jit = jax.jit(dino_loss)


@pytest.mark.parametrize("vs,vt,n,k", [(2, 2, 3, 5), (4, 2, 5, 7), (6, 2, 2, 4), (3, 1, 4, 3)])
def test_matches_the_official_loops(vs, vt, n, k):
    s, t, c = inputs(vs, vt, n, k, seed=vs + n)
    for ts, tt in [(0.1, 0.04), (0.5, 0.07)]:
        got = dino_jit(s, t, c, student_temperature=ts, teacher_temperature=tt)
        assert got.dtype == jnp.float32 and got.shape == ()
        np.testing.assert_allclose(got, dino_reference(s, t, c, ts, tt), rtol=2e-5, atol=1e-5)


def test_float64_and_finite_difference_gradients():
    with jax.enable_x64(True):
        s, t, c = (jnp.asarray(x) for x in inputs(4, 2, 3, 5, seed=2, dtype=np.float64))
        got = dino_jit(s, t, c, student_temperature=0.3, teacher_temperature=0.2)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(got, dino_reference(s, t, c, 0.3, 0.2), rtol=1e-12)
        f = lambda x: dino_loss(x, t, c, student_temperature=0.3, teacher_temperature=0.2)  # noqa: E731
        check_grads(f, (s,), order=1, modes=("rev",), eps=1e-6)


def test_no_gradient_into_the_teacher_or_the_centre():
    s, t, c = inputs(4, 2, 3, 5, seed=3)
    grads = jax.grad(dino_loss, argnums=(0, 1, 2))(s, t, c)
    assert np.abs(grads[0]).max() > 1e-3
    assert np.all(np.asarray(grads[1]) == 0) and np.all(np.asarray(grads[2]) == 0)


def test_invariants():
    s, t, c = inputs(4, 2, 6, 5, seed=4)
    loss = dino_jit(s, t, c)
    # A constant added to all logits of a row changes no softmax; nor does a [1, K] centre shape.
    np.testing.assert_allclose(dino_jit(s + 3.0, t - 2.0, c), loss, rtol=1e-5)
    np.testing.assert_allclose(dino_jit(s, t, c[None]), loss, rtol=1e-6)
    # Cross-entropy >= entropy of the teacher's distribution; equality when every student crop
    # matches the teacher crops (all teacher crops equal, student = the sharpened teacher).
    t_same = np.broadcast_to(t[:1], t.shape)
    temps = dict(teacher_temperature=0.5, student_temperature=1.0)
    s_match = np.broadcast_to((t[:1] - c) * 2.0, s.shape).astype(np.float32)
    entropy = jnp.mean(jnp.sum(jax.scipy.special.entr(jax.nn.softmax((t[0] - c) / 0.5)), -1))
    np.testing.assert_allclose(dino_jit(s_match, t_same, c, **temps), entropy, rtol=1e-5)
    assert float(dino_jit(s, t_same, c, **temps)) > float(entropy) + 0.1


def test_bfloat16_inputs_are_computed_in_float32():
    s, t, c = inputs(4, 2, 8, 16, seed=5)
    low = [jnp.asarray(x, jnp.bfloat16) for x in (s, t, c)]
    got = dino_jit(*low)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, dino_jit(*[x.astype(jnp.float32) for x in low]), rtol=1e-6)


def test_bad_inputs_raise():
    s, t, c = inputs(4, 2, 3, 5)
    with pytest.raises(ValueError, match=r"student_logits must be 3-D"):
        dino_loss(s[0], t, c)
    with pytest.raises(ValueError, match=r"first Vt <= Vs crops"):
        dino_loss(s[:1], np.concatenate([t, t]), c)
    with pytest.raises(ValueError, match=r"first Vt <= Vs crops"):
        dino_loss(s, t[:, :, :4], c)
    with pytest.raises(ValueError, match=r"at least 2 student crops"):
        dino_loss(s[:1], t[:1], c)
    with pytest.raises(ValueError, match=r"center must have shape \[K\]"):
        dino_loss(s, t, c[:3])
    with pytest.raises(ValueError, match=r"temperature must be > 0"):
        dino_loss(s, t, c, teacher_temperature=0.0)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        dino_center(c, t, momentum=1.5)


def test_center_is_the_ema_of_the_teacher_mean():
    _, t, c = inputs(4, 2, 3, 5, seed=6)
    want = 0.9 * c.astype(np.float64) + 0.1 * t.astype(np.float64).mean(axis=(0, 1))
    np.testing.assert_allclose(dino_center(c, t), want, rtol=1e-6)
    assert dino_center(c[None], t).shape == (1, 5)


# ----------------------------------------------------------------------------- 8 devices


def _reference(s, t, c):
    return jax.jit(jax.value_and_grad(dino_loss))(s, t, c), jax.jit(dino_center)(c, t)


def test_jit_on_mesh_sharded_batch_equals_unsharded(mesh):
    s, t, c = inputs(4, 2, 2 * N_DEV, 6, seed=7)
    (value, grad), center = _reference(s, t, c)
    rows = NamedSharding(mesh, P(None, "data"))
    sharded = [jax.device_put(x, rows) for x in (s, t)]
    got_value, got_grad = jax.jit(jax.value_and_grad(dino_loss))(*sharded, c)
    np.testing.assert_allclose(got_value, value, rtol=2e-6)
    np.testing.assert_allclose(got_grad, grad, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(jax.jit(dino_center)(c, sharded[1]), center, rtol=1e-6)


def test_shard_map_equals_global_batch(mesh):
    s, t, c = inputs(4, 2, 2 * N_DEV, 6, seed=8)
    (value, grad), center = _reference(s, t, c)

    @jax.jit
    def run(s, t):
        local = lambda s, t: dino_loss(s, t, c, axis_name="data")  # noqa: E731
        specs = (P(None, "data"), P(None, "data"))
        mapped = jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P())
        inside = jax.shard_map(
            jax.grad(local), mesh=mesh, in_specs=specs, out_specs=P(None, "data")
        )(s, t)
        new_center = jax.shard_map(
            lambda t: dino_center(c, t, axis_name="data"), mesh=mesh, in_specs=specs[1],
            out_specs=P(),
        )(t)  # fmt: skip
        return jax.value_and_grad(mapped)(s, t), inside, new_center

    rows = NamedSharding(mesh, P(None, "data"))
    (got_value, outside), inside, new_center = run(*[jax.device_put(x, rows) for x in (s, t)])
    np.testing.assert_allclose(got_value, value, rtol=2e-6)
    np.testing.assert_allclose(outside, grad, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(inside, grad, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(new_center, center, rtol=1e-6)


def test_pmap_equals_global_batch():
    s, t, c = inputs(4, 2, 2 * N_DEV, 6, seed=9)
    (value, grad), _ = _reference(s, t, c)
    local_s, local_t = (x.reshape(x.shape[0], N_DEV, 2, -1).swapaxes(0, 1) for x in (s, t))
    pmapped = jax.pmap(lambda s, t: dino_loss(s, t, c, axis_name="i"), axis_name="i")
    values = pmapped(local_s, local_t)
    assert np.all(np.asarray(values) == np.asarray(values)[0])
    np.testing.assert_allclose(values[0], value, rtol=2e-6)
    outside = jax.grad(lambda s: pmapped(s, local_t)[0])(local_s)
    np.testing.assert_allclose(outside.swapaxes(0, 1).reshape(s.shape), grad, rtol=1e-5, atol=1e-8)
