"""Tests for ssl_jax.losses.distillation.simsiam_loss: the paper's Algorithm 1 as float64 loops,
the stop-gradient, dtypes, and the global batch on 8 fake devices."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

from ssl_jax.losses.distillation import byol_loss, simsiam_loss

N_DEV = 8


def simsiam_algorithm1(p1, p2, z1, z2):
    """Chen & He 2021, Algorithm 1, as plain loops in float64: L = D(p1, z2)/2 + D(p2, z1)/2 with
    D(p, z) = -mean over rows of (p / ||p||) . (z / ||z||) (z detached: no effect on the value)."""

    def d(p, z):
        total = 0.0
        for pi, zi in zip(np.asarray(p, np.float64), np.asarray(z, np.float64), strict=True):
            pn = [x / math.sqrt(sum(y * y for y in pi)) for x in pi]
            zn = [x / math.sqrt(sum(y * y for y in zi)) for x in zi]
            total += sum(a * b for a, b in zip(pn, zn, strict=True))
        return -total / len(p)

    return d(p1, z2) / 2 + d(p2, z1) / 2


def inputs(n, d, seed=0, dtype=np.float32):
    """(p1, p2, z1, z2): predictions near their targets (the other view's projection)."""
    rng = np.random.default_rng(seed)
    z1, z2 = rng.normal(size=(2, n, d))
    p1 = z2 + 0.7 * rng.normal(size=(n, d))
    p2 = z1 + 0.7 * rng.normal(size=(n, d))
    return tuple(x.astype(dtype) for x in (p1, p2, z1, z2))


simsiam_jit = jax.jit(simsiam_loss)


@pytest.mark.parametrize("n,d", [(1, 3), (5, 8), (16, 4)])
def test_matches_algorithm1(n, d):
    args = inputs(n, d, seed=n + d)
    got = simsiam_jit(*args)
    assert got.dtype == jnp.float32 and got.shape == ()
    np.testing.assert_allclose(got, simsiam_algorithm1(*args), rtol=1e-5, atol=1e-6)


def test_float64_and_finite_difference_gradients():
    with jax.enable_x64(True):
        p1, p2, z1, z2 = (jnp.asarray(x) for x in inputs(5, 4, seed=3, dtype=np.float64))
        got = simsiam_jit(p1, p2, z1, z2)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(got, simsiam_algorithm1(p1, p2, z1, z2), rtol=1e-12)
        # The targets are stop-gradient'ed: only the predictions are checked against differences.
        check_grads(
            lambda a, b: simsiam_jit(a, b, z1, z2), (p1, p2), order=1, modes=("rev",), eps=1e-6
        )


def test_no_gradient_into_the_targets():
    args = inputs(6, 5, seed=4)
    grads = jax.jit(jax.grad(simsiam_loss, argnums=(0, 1, 2, 3)))(*args)
    assert np.all(np.asarray(grads[2]) == 0.0) and np.all(np.asarray(grads[3]) == 0.0)
    assert np.abs(grads[0]).max() > 1e-3 and np.abs(grads[1]).max() > 1e-3

    # A shared linear encoder (z = x w) and predictor (p = z h): the gradient w.r.t. w comes only
    # through the predictions, i.e. that of the same loss with the targets given as constants.
    rng = np.random.default_rng(5)
    x1, x2 = rng.normal(size=(2, 6, 4)).astype(np.float32)
    w, h = rng.normal(size=(2, 4, 4)).astype(np.float32)

    def loss(w, frozen=None):
        z1, z2 = (x1 @ w, x2 @ w) if frozen is None else frozen
        return simsiam_loss(x1 @ w @ h, x2 @ w @ h, z1, z2)

    frozen = (x1 @ w, x2 @ w)
    np.testing.assert_allclose(
        jax.grad(loss)(w), jax.grad(lambda v: loss(v, frozen))(w), rtol=1e-6, atol=1e-7
    )


def test_relations_symmetry_scale_and_byol():
    p1, p2, z1, z2 = inputs(7, 4, seed=6)
    loss = simsiam_jit(p1, p2, z1, z2)
    np.testing.assert_allclose(simsiam_jit(p2, p1, z2, z1), loss, rtol=1e-6)
    scale = np.random.default_rng(7).uniform(0.01, 100.0, size=(7, 1)).astype(np.float32)
    np.testing.assert_allclose(simsiam_jit(p1 * scale, p2, z1, z2 / scale), loss, rtol=1e-5)
    # byol = 2 - 2 cos, so SimSiam = (byol(p1, z2) + byol(p2, z1)) / 4 - 1.
    via_byol = (byol_loss(p1, z2) + byol_loss(p2, z1)) / 4 - 1
    np.testing.assert_allclose(loss, via_byol, rtol=1e-5, atol=1e-6)
    # Aligned predictions reach the minimum, -1; opposite ones the maximum, 1.
    np.testing.assert_allclose(simsiam_jit(2 * z2, 3 * z1, z1, z2), -1.0, rtol=1e-6)
    np.testing.assert_allclose(simsiam_jit(-z2, -z1, z1, z2), 1.0, rtol=1e-6)


def test_zero_rows_give_finite_values_and_gradients():
    p1, p2, z1, z2 = inputs(4, 3, seed=8)
    zero = np.zeros_like(p1)
    step = jax.jit(jax.value_and_grad(simsiam_loss, argnums=(0, 1)))
    for args in [(zero, zero, z1, z2), (p1, p2, zero, zero), (zero, zero, zero, zero)]:
        value, grads = step(*args)
        assert np.isfinite(value) and all(np.isfinite(g).all() for g in grads)
    np.testing.assert_allclose(step(zero, zero, z1, z2)[0], 0.0)  # cos 0 with everything


def test_bfloat16_inputs_are_computed_in_float32():
    args = inputs(8, 16, seed=9)
    low = [jnp.asarray(x, jnp.bfloat16) for x in args]
    got = simsiam_jit(*low)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, simsiam_jit(*[x.astype(jnp.float32) for x in low]), rtol=1e-6)
    np.testing.assert_allclose(got, simsiam_jit(*args), rtol=2e-2, atol=2e-2)


def test_bad_shapes_raise():
    a = np.ones((4, 3))
    with pytest.raises(ValueError, match=r"p1 and z2 must have the same shape.*\(4, 3\).*\(5, 3\)"):
        simsiam_loss(a, a, a, np.ones((5, 3)))
    with pytest.raises(ValueError, match=r"p1 and p2 must have the same shape.*\(4, 2\)"):
        jax.jit(simsiam_loss)(a, np.ones((4, 2)), a, a)
    with pytest.raises(ValueError, match=r"z1 must be 2-D.*got 1-D shape \(3,\)"):
        simsiam_loss(a, a, np.ones(3), a)
    with pytest.raises(ValueError, match=r"p1 must be 2-D.*got 3-D shape \(2, 4, 3\)"):
        jax.jit(simsiam_loss)(*[np.ones((2, 4, 3))] * 4)
    with pytest.raises(ValueError, match=r"at least one row"):
        simsiam_loss(*[np.ones((0, 3))] * 4)
    with pytest.raises(ValueError, match=r"z2 must be real .* got complex64"):
        simsiam_loss(a, a, a, a.astype(np.complex64))


# ----------------------------------------------------------------------------- 8 devices


_global_value_and_grads = jax.jit(jax.value_and_grad(simsiam_loss, argnums=(0, 1, 2, 3)))


def _assert_global(value, grads, args, grad_scale=1.0):
    ref_value, ref_grads = _global_value_and_grads(*args)
    np.testing.assert_allclose(value, ref_value, rtol=2e-6)
    for g, r in zip(grads, ref_grads, strict=True):
        g = np.asarray(g).reshape(r.shape) / grad_scale
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-7)


def test_shard_map_equals_global_batch(mesh):
    args = inputs(2 * N_DEV, 5, seed=11)

    def local(*a):
        return simsiam_loss(*a, axis_name="data")

    @jax.jit
    def run(*a):
        mapped = jax.shard_map(local, mesh=mesh, in_specs=P("data"), out_specs=P())
        outside = jax.value_and_grad(mapped, argnums=(0, 1, 2, 3))(*a)
        inside = jax.shard_map(
            jax.grad(local, argnums=(0, 1, 2, 3)),
            mesh=mesh,
            in_specs=P("data"),
            out_specs=P("data"),
        )(*a)
        return outside, inside

    rows = NamedSharding(mesh, P("data"))
    (value, outside), inside = run(*[jax.device_put(x, rows) for x in args])
    _assert_global(value, outside, args)
    _assert_global(value, inside, args)  # shard_map: the local gradients are already global


def test_pmap_equals_global_batch():
    args = inputs(2 * N_DEV, 5, seed=12)
    local = [x.reshape(N_DEV, 2, -1) for x in args]
    pmapped = jax.pmap(lambda *a: simsiam_loss(*a, axis_name="i"), axis_name="i")
    values = pmapped(*local)
    assert values.shape == (N_DEV,) and np.all(np.asarray(values) == np.asarray(values)[0])
    outside = jax.grad(lambda *a: pmapped(*a)[0], argnums=(0, 1, 2, 3))(*local)
    _assert_global(values[0], outside, args)
    # Inside pmap, psum's transpose sums the devices' cotangents: axis_size times the global one.
    inside = jax.pmap(
        jax.grad(lambda *a: simsiam_loss(*a, axis_name="i"), argnums=(0, 1, 2, 3)), axis_name="i"
    )(*local)
    _assert_global(values[0], inside, args, grad_scale=N_DEV)


def test_jit_on_mesh_sharded_batch_equals_unsharded(mesh):
    args = inputs(2 * N_DEV, 5, seed=13)
    rows = NamedSharding(mesh, P("data"))
    value, grads = _global_value_and_grads(*[jax.device_put(x, rows) for x in args])
    _assert_global(value, grads, args)
