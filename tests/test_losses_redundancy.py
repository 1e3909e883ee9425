"""Tests for ssl_jax.losses.redundancy (Barlow Twins, VICReg): float64 loop transcriptions of the
papers' algorithms, invariants, gradients, dtypes, and the global batch on 8 fake devices."""

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

from ssl_jax.losses.redundancy import (
    barlow_twins_loss,
    barlow_twins_terms,
    vicreg_loss,
    vicreg_terms,
)

N_DEV = 8

# ----------------------------------------------------------------------------- references


def barlow_twins_algorithm1(z1, z2, lambd=0.0051, bn_eps=1e-5):
    """Zbontar et al. 2021, Algorithm 1, as plain loops in float64.

    Standardisation as the official code's BatchNorm1d(affine=False) in training mode: biased
    variance, eps under the square root (the documented convention of barlow_twins_loss).
    """
    a, b = np.asarray(z1, np.float64), np.asarray(z2, np.float64)
    n, d = a.shape

    def standardise(z):
        out = np.zeros_like(z)
        for j in range(d):
            mean = sum(z[k, j] for k in range(n)) / n
            var = sum((z[k, j] - mean) ** 2 for k in range(n)) / n
            for k in range(n):
                out[k, j] = (z[k, j] - mean) / math.sqrt(var + bn_eps)
        return out

    an, bn = standardise(a), standardise(b)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(an[k, i] * bn[k, j] for k in range(n)) / n
            loss += (1.0 - c_ij) ** 2 if i == j else lambd * c_ij**2
    return loss


def vicreg_algorithm1(z1, z2, sim=25.0, std=25.0, cov=1.0, eps=1e-4):
    """Bardes, Ponce & LeCun 2022, Algorithm 1, as plain loops in float64, with the official
    code's halving of the variance term (the documented convention of vicreg_loss).

    Returns (loss, invariance, variance, covariance).
    """
    a, b = np.asarray(z1, np.float64), np.asarray(z2, np.float64)
    n, d = a.shape
    invariance = sum((a[k, j] - b[k, j]) ** 2 for k in range(n) for j in range(d)) / (n * d)

    def branch(z):
        mean = [sum(z[k, j] for k in range(n)) / n for j in range(d)]

        def c(i, j):  # unbiased covariance
            return sum((z[k, i] - mean[i]) * (z[k, j] - mean[j]) for k in range(n)) / (n - 1)

        var_term = sum(max(0.0, 1.0 - math.sqrt(c(j, j) + eps)) for j in range(d)) / d
        cov_term = sum(c(i, j) ** 2 for i in range(d) for j in range(d) if i != j) / d
        return var_term, cov_term

    (va, ca), (vb, cb) = branch(a), branch(b)
    variance, covariance = (va + vb) / 2, ca + cb
    return sim * invariance + std * variance + cov * covariance, invariance, variance, covariance


def views(n, d, seed=0, dtype=np.float32):
    """Two correlated views with correlated dimensions of different scales (some std < 1)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) / math.sqrt(d)
    scales = np.linspace(0.4, 2.0, d)
    z1 = (base + 0.5 * rng.normal(size=(n, d))) * scales + 0.3
    z2 = (base + 0.5 * rng.normal(size=(n, d))) * scales - 0.1
    return z1.astype(dtype), z2.astype(dtype)


def hadamard_columns(n, d):
    """[n, d] (n a power of 2, d < n): columns with mean 0, biased variance 1, orthogonal."""
    h = np.array([[1.0]])
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h[:, 1 : d + 1]


barlow_jit = jax.jit(barlow_twins_loss)
vicreg_jit = jax.jit(vicreg_loss)
terms_jit = jax.jit(vicreg_terms)

# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("n,d,lambd", [(1, 3, 0.0051), (2, 2, 0.5), (9, 5, 0.0051), (16, 8, 0.1)])
def test_barlow_twins_matches_algorithm1(n, d, lambd):
    z1, z2 = views(n, d, seed=n + d)
    got = barlow_jit(z1, z2, lambda_=lambd)
    assert got.dtype == jnp.float32 and got.shape == ()
    np.testing.assert_allclose(got, barlow_twins_algorithm1(z1, z2, lambd), rtol=2e-5, atol=1e-6)


def test_barlow_twins_terms_are_the_two_sums_of_algorithm1():
    z1, z2 = views(9, 5, seed=3)
    terms = jax.jit(barlow_twins_terms)(z1, z2, lambda_=0.3)
    on = barlow_twins_algorithm1(z1, z2, 0.0)
    off = barlow_twins_algorithm1(z1, z2, 1.0) - on
    np.testing.assert_allclose(terms["on_diagonal"], on, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(terms["off_diagonal"], off, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(terms["loss"], barlow_jit(z1, z2, lambda_=0.3), rtol=1e-6)


@pytest.mark.parametrize("n,d", [(2, 3), (9, 5), (16, 8)])
def test_vicreg_matches_algorithm1(n, d):
    z1, z2 = views(n, d, seed=2 * n + d)
    coeffs = dict(sim_coeff=2.0, std_coeff=3.0, cov_coeff=0.5, eps=1e-3)
    expected = vicreg_algorithm1(z1, z2, 2.0, 3.0, 0.5, 1e-3)
    terms = terms_jit(z1, z2, **coeffs)
    names = ("loss", "invariance", "variance", "covariance")
    for name, e in zip(names, expected, strict=True):
        assert terms[name].dtype == jnp.float32 and terms[name].shape == ()
        np.testing.assert_allclose(terms[name], e, rtol=2e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(vicreg_jit(z1, z2, **coeffs), terms["loss"], rtol=1e-6)
    # Default coefficients (25, 25, 1, eps 1e-4); the case exercises all three terms.
    loss, inv, var, cov = vicreg_algorithm1(z1, z2)
    assert min(inv, var, cov) > 1e-3
    np.testing.assert_allclose(vicreg_jit(z1, z2), loss, rtol=2e-5)


def test_float64_inputs_give_float64_exact_results():
    z1, z2 = views(6, 4, seed=3, dtype=np.float64)
    with jax.enable_x64(True):
        got = barlow_jit(z1, z2)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(got, barlow_twins_algorithm1(z1, z2), rtol=1e-12)
        terms = terms_jit(z1, z2)
        assert all(v.dtype == jnp.float64 for v in terms.values())
        expected = vicreg_algorithm1(z1, z2)
        for name, e in zip(("loss", "invariance", "variance", "covariance"), expected, strict=True):
            np.testing.assert_allclose(terms[name], e, rtol=1e-12, err_msg=name)


def test_barlow_twins_identical_decorrelated_views_is_zero():
    z = hadamard_columns(8, 4).astype(np.float32)
    # C = I / (1 + 1e-5): the loss is D * (1e-5)^2, i.e. zero to float32 precision.
    assert float(barlow_jit(z, z)) < 1e-8
    # Standardisation: per-dimension scales and shifts change nothing (while var >> 1e-5).
    scaled = z * np.array([0.5, 3.0, 7.0, 1.5], np.float32) + 4.0
    assert float(barlow_jit(scaled, z)) < 1e-8
    # Permuted dimensions: C is a permutation matrix with no fixed point.
    perm = z[:, [1, 2, 3, 0]]
    np.testing.assert_allclose(barlow_jit(z, perm, lambda_=0.25), 4.0 + 0.25 * 4.0, rtol=1e-4)


def test_vicreg_invariants():
    z = 2.0 * hadamard_columns(8, 4)  # unbiased variances 32/7 > 1: no variance penalty
    terms = terms_jit(z * np.array([1.0, 2.0, 3.0, 4.0]), z)
    # Diagonal covariances: the covariance term is exactly 0, whatever the scales.
    assert float(terms["covariance"]) == 0.0
    assert float(terms["variance"]) == 0.0
    assert float(terms_jit(z, z)["loss"]) == 0.0
    # Collapse: a constant embedding pays std_coeff * (1 - sqrt(eps)) / 2 for its branch.
    const = np.ones_like(z)
    t = terms_jit(const, z)
    np.testing.assert_allclose(t["variance"], (1 - math.sqrt(1e-4)) / 2, rtol=1e-6)
    assert float(t["covariance"]) == 0.0
    # Symmetric in the two views.
    z1, z2 = views(8, 3, seed=7)
    np.testing.assert_allclose(vicreg_jit(z2, z1), vicreg_jit(z1, z2), rtol=1e-6)
    np.testing.assert_allclose(barlow_jit(z2, z1), barlow_jit(z1, z2), rtol=1e-6)


# ----------------------------------------------------------------------------- gradients


def test_finite_difference_gradients_float64():
    z1, z2 = views(6, 4, seed=20, dtype=np.float64)
    with jax.enable_x64(True):
        z1, z2 = jnp.asarray(z1), jnp.asarray(z2)
        check_grads(partial(barlow_jit, lambda_=0.3), (z1, z2), order=1, modes=("rev",), eps=1e-6)
        check_grads(vicreg_jit, (z1, z2), order=1, modes=("rev",), eps=1e-6)
        # The coefficients may be traced (scheduled): their gradients too.
        check_grads(
            lambda s, c: vicreg_jit(z1, z2, std_coeff=s, cov_coeff=c),
            (jnp.float64(25.0), jnp.float64(1.0)),
            order=1,
            modes=("rev",),
            eps=1e-6,
        )


def test_collapsed_inputs_give_finite_gradients():
    const = np.ones((4, 3), np.float32)
    z1, _ = views(4, 3, seed=8)
    for fn in (barlow_twins_loss, vicreg_loss):
        step = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
        for a, b in [(const, const), (const, z1), (np.zeros_like(const), z1)]:
            value, grads = step(a, b)
            assert np.isfinite(value) and all(np.isfinite(g).all() for g in grads)


# ----------------------------------------------------------------------------- dtypes, errors


def test_bfloat16_inputs_are_computed_in_float32():
    z1, z2 = views(8, 6, seed=4)
    b1, b2 = jnp.asarray(z1, jnp.bfloat16), jnp.asarray(z2, jnp.bfloat16)
    up1, up2 = b1.astype(jnp.float32), b2.astype(jnp.float32)
    for fn in (barlow_jit, vicreg_jit):
        got = fn(b1, b2)
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, fn(up1, up2), rtol=1e-6)
        np.testing.assert_allclose(got, fn(z1, z2), rtol=3e-2)
    assert all(v.dtype == jnp.float32 for v in terms_jit(b1, b2).values())


@pytest.mark.parametrize("fn", [barlow_twins_loss, vicreg_loss, vicreg_terms])
def test_bad_shapes_raise(fn):
    with pytest.raises(ValueError, match=r"same shape.*\(4, 3\).*\(5, 3\)"):
        fn(np.ones((4, 3)), np.ones((5, 3)))
    with pytest.raises(ValueError, match=r"same shape.*\(4, 3\).*\(4, 2\)"):
        jax.jit(fn)(np.ones((4, 3)), np.ones((4, 2)))
    with pytest.raises(ValueError, match=r"must be 2-D.*got 1-D shape \(3,\)"):
        fn(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match=r"must be 2-D.*got 3-D shape \(2, 4, 3\)"):
        jax.jit(fn)(np.ones((2, 4, 3)), np.ones((2, 4, 3)))
    with pytest.raises(ValueError, match=r"at least one row"):
        fn(np.ones((0, 3)), np.ones((0, 3)))
    with pytest.raises(ValueError, match=r"z1 must be real .* got complex64"):
        fn(np.ones((4, 3), np.complex64), np.ones((4, 3)))


def test_bad_coefficients_and_tiny_batch_raise():
    z = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"lambda_ must be >= 0; got -0.1"):
        barlow_twins_loss(z, z, lambda_=-0.1)
    with pytest.raises(ValueError, match=r"lambda_ must be a scalar; got shape \(2,\)"):
        barlow_twins_loss(z, z, lambda_=[0.1, 0.2])
    for name in ("sim_coeff", "std_coeff", "cov_coeff"):
        with pytest.raises(ValueError, match=rf"{name} must be >= 0"):
            vicreg_loss(z, z, **{name: -1.0})
    with pytest.raises(ValueError, match=r"eps must be > 0; got 0"):
        vicreg_loss(z, z, eps=0.0)
    with pytest.raises(ValueError, match=r"at least 2 rows .* got N = 1"):
        vicreg_loss(z[:1], z[:1])
    # Barlow Twins has no N - 1: one row standardises to zeros, C = 0, the loss is D.
    np.testing.assert_allclose(barlow_twins_loss(z[:1], z[:1]), 3.0)


def test_jit_vmap():
    pairs = [views(6, 4, seed=s) for s in range(3)]
    z1, z2 = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    for fn in (barlow_twins_loss, vicreg_loss):
        got = jax.jit(jax.vmap(fn))(z1, z2)
        np.testing.assert_allclose(got, [fn(a, b) for a, b in pairs], rtol=1e-5)


# ----------------------------------------------------------------------------- 8 devices


def _local_fns(axis_name):
    return (
        lambda a, b: barlow_twins_loss(a, b, lambda_=0.2, axis_name=axis_name),
        lambda a, b: vicreg_loss(a, b, axis_name=axis_name),
        lambda a, b: vicreg_terms(a, b, axis_name=axis_name)["covariance"],
    )


@jax.jit
def _global_values_and_grads(z1, z2):
    out = [jax.value_and_grad(fn, argnums=(0, 1))(z1, z2) for fn in _local_fns(None)]
    return [v for v, _ in out], [g for _, g in out]


def _assert_equal_to_global(values, grads, z1, z2, grad_scale=1.0):
    ref_values, ref_grads = _global_values_and_grads(z1, z2)
    for v, r in zip(values, ref_values, strict=True):
        np.testing.assert_allclose(v, r, rtol=2e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        for gi, ri in zip(g, r, strict=True):
            gi = np.asarray(gi).reshape(ri.shape) / grad_scale
            np.testing.assert_allclose(gi, ri, rtol=1e-4, atol=1e-6)


def test_shard_map_equals_global_batch(mesh):
    z1, z2 = views(2 * N_DEV, 5, seed=11)
    local_fns = _local_fns("data")

    @jax.jit
    def run(a, b):
        mapped = [jax.shard_map(f, mesh=mesh, in_specs=P("data"), out_specs=P()) for f in local_fns]
        outside = [jax.value_and_grad(f, argnums=(0, 1))(a, b) for f in mapped]
        # Gradients taken INSIDE shard_map, of the local rows only: they must already be global.
        inside = [
            jax.shard_map(
                jax.grad(f, argnums=(0, 1)), mesh=mesh, in_specs=P("data"), out_specs=P("data")
            )(a, b)
            for f in local_fns
        ]
        return outside, inside

    # An Explicit mesh's shard_map takes the inputs as they are sharded: put them on P('data').
    rows = NamedSharding(mesh, P("data"))
    outside, inside = run(jax.device_put(z1, rows), jax.device_put(z2, rows))
    values = [v for v, _ in outside]
    _assert_equal_to_global(values, [g for _, g in outside], z1, z2)
    _assert_equal_to_global(values, inside, z1, z2)


def test_pmap_equals_global_batch():
    z1, z2 = views(2 * N_DEV, 5, seed=12)
    local = (z1.reshape(N_DEV, 2, -1), z2.reshape(N_DEV, 2, -1))
    local_fns = _local_fns("i")
    pmapped = jax.pmap(lambda a, b: [f(a, b) for f in local_fns], axis_name="i")
    values = pmapped(*local)
    for v in values:  # the same value on every device
        assert v.shape == (N_DEV,) and np.all(np.asarray(v) == np.asarray(v)[0])
    outside = [
        jax.grad(lambda a, b, k=k: pmapped(a, b)[k][0], argnums=(0, 1))(*local) for k in range(3)
    ]
    _assert_equal_to_global([v[0] for v in values], outside, z1, z2)
    # Inside pmap, psum's transpose sums the devices' cotangents: axis_size times the global one.
    inside = jax.pmap(
        lambda a, b: [jax.grad(f, argnums=(0, 1))(a, b) for f in local_fns], axis_name="i"
    )(*local)
    _assert_equal_to_global([v[0] for v in values], inside, z1, z2, grad_scale=N_DEV)


def test_jit_on_mesh_sharded_batch_equals_unsharded(mesh):
    """A batch on P('data'): the [D, D] contractions over the sharded rows must compile on an
    Explicit mesh (no ShardingTypeError) and give the unsharded values and gradients."""
    z1, z2 = views(2 * N_DEV, 5, seed=13)
    rows = NamedSharding(mesh, P("data"))
    s1, s2 = jax.device_put(z1, rows), jax.device_put(z2, rows)
    ref_values, ref_grads = _global_values_and_grads(z1, z2)
    step = jax.jit(
        lambda a, b: [jax.value_and_grad(f, argnums=(0, 1))(a, b) for f in _local_fns(None)]
    )
    out = step(s1, s2)
    for (value, grads), ref_value, ref_grad in zip(out, ref_values, ref_grads, strict=True):
        np.testing.assert_allclose(value, ref_value, rtol=2e-6)
        for g, r in zip(grads, ref_grad, strict=True):
            assert g.sharding.spec[0] == "data"  # the gradients stay batch-sharded
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)
    # One view sharded, the other replicated.
    replicated = jax.device_put(z2, NamedSharding(mesh, P()))
    np.testing.assert_allclose(
        jax.jit(barlow_twins_loss)(s1, replicated), barlow_jit(z1, z2), rtol=2e-6
    )
    terms = jax.jit(vicreg_terms)(s1, s2)
    for name, value in terms_jit(z1, z2).items():
        np.testing.assert_allclose(terms[name], value, rtol=2e-6, atol=1e-7, err_msg=name)
