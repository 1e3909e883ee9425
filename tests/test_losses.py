"""Tests for ssl_jax.losses: float64 NumPy paper transcriptions, invariants, 8-device runs."""

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

from ssl_jax.losses import byol_loss, contrastive_accuracy, nt_xent
from ssl_jax.profiling import collectives

N_DEV = 8


# ----------------------------------------------------------------------------- references


def simclr_algorithm1(z1, z2, tau):
    """SimCLR Algorithm 1 (Chen et al. 2020) as written, with plain loops in float64.

    The paper interleaves the views: z_{2k-1} is the first view of image k and z_{2k} the second.
    """
    n = len(z1)
    z = [None] * (2 * n + 1)  # 1-indexed like the paper
    for k in range(1, n + 1):
        z[2 * k - 1] = np.asarray(z1[k - 1], np.float64)
        z[2 * k] = np.asarray(z2[k - 1], np.float64)

    def s(i, j):
        return float(z[i] @ z[j]) / (math.sqrt(z[i] @ z[i]) * math.sqrt(z[j] @ z[j]))

    def ell(i, j):
        denom = sum(math.exp(s(i, k) / tau) for k in range(1, 2 * n + 1) if k != i)
        return -math.log(math.exp(s(i, j) / tau) / denom)

    total = 0.0
    for k in range(1, n + 1):
        total += ell(2 * k - 1, 2 * k) + ell(2 * k, 2 * k - 1)
    return total / (2 * n)


def byol_reference(p, t):
    """Mean over rows of ||p/|p| - t/|t| ||^2 = 2 - 2 cos(p, t) (Grill et al. 2020, Eq. 2)."""
    total = 0.0
    for pi, ti in zip(np.asarray(p, np.float64), np.asarray(t, np.float64), strict=True):
        pn = pi / math.sqrt(pi @ pi)
        tn = ti / math.sqrt(ti @ ti)
        total += float((pn - tn) @ (pn - tn))
    return total / len(p)


def views(n, d, seed=0, noise=0.5, dtype=np.float32):
    """Two correlated views of n random points, so positives are more similar than negatives."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, d))
    z1 = base + noise * rng.normal(size=(n, d))
    z2 = base + noise * rng.normal(size=(n, d))
    return z1.astype(dtype), z2.astype(dtype)


# Jitted once per shape: eager dispatch would compile every primitive separately, which is slower
# on this CPU than compiling the whole loss. The temperature is traced (one compile for all values),
# as when it is scheduled during training; the eager calls in the error tests check it concretely.
nt_xent_jit = jax.jit(nt_xent)
accuracy_jit = jax.jit(contrastive_accuracy)
byol_jit = jax.jit(byol_loss)


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    "n,d,tau",
    [(1, 3, 0.1), (2, 8, 0.5), (7, 5, 1.0), (16, 32, 0.05), (16, 4, 0.2)],
)
def test_nt_xent_matches_algorithm1(n, d, tau):
    z1, z2 = views(n, d, seed=n + d)
    got = nt_xent_jit(z1, z2, temperature=tau)
    assert got.dtype == jnp.float32 and got.shape == ()
    np.testing.assert_allclose(got, simclr_algorithm1(z1, z2, tau), rtol=2e-5, atol=1e-6)


def test_nt_xent_matches_algorithm1_in_float64():
    z1, z2 = views(7, 6, seed=3, dtype=np.float64)
    with jax.enable_x64(True):
        got = nt_xent_jit(z1, z2, temperature=0.3)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(got, simclr_algorithm1(z1, z2, 0.3), rtol=1e-12)


@pytest.mark.parametrize("n,d", [(1, 3), (5, 8), (16, 4)])
def test_byol_matches_reference(n, d):
    p, t = views(n, d, seed=10 + n)
    got = byol_jit(p, t)
    assert got.dtype == jnp.float32 and got.shape == ()
    np.testing.assert_allclose(got, byol_reference(p, t), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [1, 4])
def test_nt_xent_identical_embeddings_gives_log_2n_minus_1(n):
    z = np.ones((n, 3), np.float32)
    for tau in (0.05, 1.0):
        np.testing.assert_allclose(
            nt_xent_jit(z, z, temperature=tau), math.log(2 * n - 1), atol=1e-5
        )


def test_nt_xent_aligned_orthogonal_pairs():
    n = 4
    z = np.eye(n, 6, dtype=np.float32)
    # Positive logit 1/tau, every negative 0: loss = log(1 + (2n - 2) exp(-1/tau)). atol: the
    # float32 logsumexp is ~10, so its ulp (~1e-6) bounds the accuracy of this small difference.
    np.testing.assert_allclose(
        nt_xent_jit(z, z, temperature=0.1), math.log1p((2 * n - 2) * math.exp(-10.0)), atol=3e-6
    )
    assert float(nt_xent_jit(z, z, temperature=0.01)) < 1e-6
    assert float(accuracy_jit(z, z)) == 1.0
    # Each anchor's own twin sits at the next index: the best match is always the wrong image.
    assert float(accuracy_jit(z, np.roll(z, 1, axis=0))) == 0.0


def test_contrastive_accuracy_matches_loop():
    z1, z2 = views(12, 3, seed=5, noise=0.8)
    z = np.concatenate([z1, z2]).astype(np.float64)
    u = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    hits = 0
    for i in range(2 * n):
        best = max((j for j in range(2 * n) if j != i), key=lambda j: u[i] @ u[j])
        hits += best == (i + n) % (2 * n)
    expected = hits / (2 * n)
    assert 0.0 < expected < 1.0  # the case must discriminate
    np.testing.assert_allclose(accuracy_jit(z1, z2), expected)


def test_symmetry_and_scale_invariance():
    z1, z2 = views(6, 5, seed=1)
    scale = np.random.default_rng(2).uniform(1e-2, 1e2, size=(6, 1)).astype(np.float32)
    loss = nt_xent_jit(z1, z2)
    np.testing.assert_allclose(nt_xent_jit(z2, z1), loss, rtol=1e-6)
    np.testing.assert_allclose(nt_xent_jit(z1 * scale, z2), loss, rtol=1e-5)
    np.testing.assert_allclose(accuracy_jit(z2, z1), accuracy_jit(z1, z2))
    b = byol_jit(z1, z2)
    np.testing.assert_allclose(byol_jit(z2, z1), b, rtol=1e-6)
    np.testing.assert_allclose(byol_jit(z1 * scale, z2 / scale[::-1]), b, rtol=1e-5)


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("n,d", [(2, 3), (5, 4)])
def test_finite_difference_gradients_float64(n, d):
    z1, z2 = views(n, d, seed=20 + n, dtype=np.float64)
    with jax.enable_x64(True):
        z1, z2 = jnp.asarray(z1), jnp.asarray(z2)
        check_grads(
            lambda a, b: nt_xent_jit(a, b, temperature=0.5),
            (z1, z2),
            order=1,
            modes=("rev",),
            eps=1e-6,
        )
        # The target is stop-gradient'ed, so only the prediction is checked against differences.
        check_grads(lambda a: byol_jit(a, z2), (z1,), order=1, modes=("rev",), eps=1e-6)


@pytest.mark.parametrize("block_size", [None, 3])
def test_no_nan_gradients_for_duplicated_and_zero_rows(block_size):
    dup = np.tile(np.arange(1.0, 5.0, dtype=np.float32), (4, 1))
    zero = np.zeros((4, 4), np.float32)
    mixed = np.concatenate([dup[:2], zero[:2]])
    grad_nt = jax.jit(jax.value_and_grad(partial(nt_xent, block_size=block_size), argnums=(0, 1)))
    grad_byol = jax.jit(jax.value_and_grad(byol_loss))
    for a, b in [(dup, dup), (zero, zero), (mixed, dup), (dup, mixed)]:
        for tau in (0.01, 0.5):
            value, grads = grad_nt(a, b, temperature=tau)
            assert np.isfinite(value) and all(np.isfinite(g).all() for g in grads)
        value, grad = grad_byol(a, b)
        assert np.isfinite(value) and np.isfinite(grad).all()
    # A zero embedding has cosine 0 with everything.
    np.testing.assert_allclose(grad_nt(zero, zero, temperature=0.5)[0], math.log(7), atol=1e-6)
    np.testing.assert_allclose(grad_byol(zero, dup)[0], 2.0)


def test_byol_target_gets_exactly_zero_gradient():
    p, t = views(5, 4, seed=7)
    gp, gt = jax.jit(jax.grad(byol_loss, argnums=(0, 1)))(p, t)
    assert np.all(np.asarray(gt) == 0.0)
    assert np.abs(gp).max() > 1e-3


def test_contrastive_accuracy_has_no_gradient():
    z1, z2 = views(4, 3)
    g1, g2 = jax.grad(contrastive_accuracy, argnums=(0, 1))(z1, z2)
    assert np.all(np.asarray(g1) == 0.0) and np.all(np.asarray(g2) == 0.0)


# ----------------------------------------------------------------------------- dtypes, transforms


def test_bfloat16_inputs_are_accumulated_in_float32():
    z1, z2 = views(8, 16, seed=4)
    b1, b2 = jnp.asarray(z1, jnp.bfloat16), jnp.asarray(z2, jnp.bfloat16)
    up1, up2 = b1.astype(jnp.float32), b2.astype(jnp.float32)
    for fn in (nt_xent_jit, byol_jit, accuracy_jit):
        got = fn(b1, b2)
        assert got.dtype == jnp.float32
        # Cast up before any arithmetic: identical to the float32 loss of the rounded inputs ...
        np.testing.assert_allclose(got, fn(up1, up2), rtol=1e-6, atol=1e-6)
        # ... and within bfloat16 input rounding (~3 significant digits) of the float32 loss.
        np.testing.assert_allclose(got, fn(z1, z2), rtol=2e-2, atol=2e-2)


def test_jit_vmap_grad():
    batch = [views(6, 5, seed=s) for s in range(3)]
    z1 = np.stack([b[0] for b in batch])
    z2 = np.stack([b[1] for b in batch])
    fns = (
        partial(nt_xent, temperature=0.2),
        partial(nt_xent, temperature=0.2, block_size=5),
        contrastive_accuracy,
        partial(contrastive_accuracy, block_size=5),
        byol_loss,
    )
    for fn in fns:
        got = jax.jit(jax.vmap(fn))(z1, z2)
        assert got.shape == (3,)
        expected = [jax.jit(fn)(a, b) for a, b in batch]
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    for block_size in (None, 5):
        grad_fn = jax.grad(partial(nt_xent, block_size=block_size), argnums=(0, 1))
        grads = jax.jit(jax.vmap(grad_fn))(z1, z2)
        for i, (a, b) in enumerate(batch):
            for g, e in zip(grads, jax.jit(grad_fn)(a, b), strict=True):
                np.testing.assert_allclose(g[i], e, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("fn", [nt_xent, byol_loss, contrastive_accuracy])
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


@pytest.mark.parametrize("block_size", [0, -4, 2.5, True, "8"])
def test_bad_block_size_raises(block_size):
    z = np.ones((4, 3))
    with pytest.raises(ValueError, match=r"block_size must be a positive int .* got"):
        nt_xent(z, z, block_size=block_size)
    with pytest.raises(ValueError, match=r"block_size must be a positive int .* got"):
        contrastive_accuracy(z, z, block_size=block_size)


@pytest.mark.parametrize("tau", [0, 0.0, -0.5, np.float32(-1.0)])
def test_bad_temperature_raises(tau):
    with pytest.raises(ValueError, match=r"temperature must be > 0; got"):
        nt_xent(np.ones((2, 3)), np.ones((2, 3)), temperature=tau)


@pytest.mark.parametrize("fn", [nt_xent, contrastive_accuracy])
def test_traced_block_size_says_how_to_make_it_static(fn):
    z1, z2 = views(6, 4)
    name = fn.__name__
    advice = rf"must be static: .*jax.jit\({name}, static_argnames='block_size'\)"
    with pytest.raises(ValueError, match=advice):
        jax.jit(fn)(z1, z2, block_size=4)
    # The advice works, and gives the direct formula's value.
    got = jax.jit(fn, static_argnames="block_size")(z1, z2, block_size=4)
    np.testing.assert_allclose(got, fn(z1, z2), rtol=1e-5)


@pytest.mark.parametrize("tau", [[0.1, 0.2], np.array([0.1]), np.full((1, 1), 0.5)])
def test_non_scalar_temperature_raises(tau):
    z1, z2 = views(4, 3)
    with pytest.raises(ValueError, match=r"temperature must be a scalar; got shape"):
        nt_xent(z1, z2, temperature=tau)
    with pytest.raises(ValueError, match=r"temperature must be a scalar; got shape"):
        jax.jit(nt_xent)(z1, z2, temperature=jnp.asarray(tau))
    # One scalar per problem: vmap over the temperatures instead.
    taus = jnp.array([0.1, 0.2])
    got = jax.vmap(lambda t: nt_xent(z1, z2, temperature=t))(taus)
    np.testing.assert_allclose(got, [nt_xent(z1, z2, temperature=t) for t in (0.1, 0.2)], rtol=1e-6)


def test_complex_inputs_and_temperature_raise():
    z1, z2 = views(4, 3)
    c = z1.astype(np.complex64)
    for fn in (nt_xent, contrastive_accuracy, byol_loss):
        with pytest.raises(ValueError, match=r"z1 must be real .* got complex64|prediction must"):
            fn(c, z2)
        with pytest.raises(ValueError, match=r"must be real .* got complex64"):
            jax.jit(fn)(z1, c)
    with pytest.raises(ValueError, match=r"temperature must be a real number"):
        nt_xent(z1, z2, temperature=0.1 + 0j)
    # Ints (and bools) are still real: cast up to float32 as documented.
    assert nt_xent(np.ones((2, 3), np.int32), np.eye(2, 3, dtype=np.int64)).dtype == jnp.float32


def test_streamed_path_rejects_forward_mode_as_documented():
    """The docstring says the block_size path is reverse-mode only; keep it honest."""
    z1, z2 = views(4, 3)
    assert "reverse-mode only" in " ".join(nt_xent.__doc__.split())
    jax.grad(lambda a: nt_xent(a, z2, block_size=3))(z1)  # reverse mode works
    tangent = np.ones_like(z1)
    with pytest.raises(TypeError, match=r"can't apply forward-mode autodiff"):
        jax.jvp(lambda a: nt_xent(a, z2, block_size=3), (z1,), (tangent,))
    jax.jvp(lambda a: nt_xent(a, z2), (z1,), (tangent,))  # the direct formula has forward mode


# ----------------------------------------------------------------------------- 8 devices


@pytest.fixture(scope="module")
def mesh():
    assert jax.device_count() == N_DEV, "tests/conftest.py should fake 8 CPU devices"
    return jax.make_mesh((N_DEV,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


@jax.jit
def _global_values_and_grads(z1, z2):
    """Single-device reference: (values, grads) of the three losses on the whole batch."""
    fns = (partial(nt_xent, temperature=0.2), contrastive_accuracy, byol_loss)
    out = [jax.value_and_grad(fn, argnums=(0, 1))(z1, z2) for fn in fns]
    return [v for v, _ in out], [g for _, g in out]


def _assert_equal_to_global(values, grads, z1, z2):
    ref_values, ref_grads = _global_values_and_grads(z1, z2)
    for v, r in zip(values, ref_values, strict=True):
        np.testing.assert_allclose(v, r, rtol=2e-6)
    for g, r in zip(grads, ref_grads, strict=True):
        for gi, ri in zip(g, r, strict=True):
            np.testing.assert_allclose(np.asarray(gi).reshape(ri.shape), ri, rtol=1e-4, atol=1e-7)


def test_shard_map_equals_global_batch(mesh):
    z1, z2 = views(2 * N_DEV, 6, seed=11)
    local_fns = (
        lambda a, b: nt_xent(a, b, temperature=0.2, axis_name="data"),
        lambda a, b: contrastive_accuracy(a, b, axis_name="data"),
        lambda a, b: byol_loss(a, b, axis_name="data"),
    )

    def sharded(fn):
        return jax.shard_map(fn, mesh=mesh, in_specs=P("data"), out_specs=P())

    def local_grads(fn):
        # Gradients taken INSIDE shard_map, of the local rows only: they must already be global.
        grad = jax.grad(fn, argnums=(0, 1))
        return jax.shard_map(grad, mesh=mesh, in_specs=P("data"), out_specs=P("data"))

    @jax.jit
    def run(a, b):
        outside = [jax.value_and_grad(sharded(fn), argnums=(0, 1))(a, b) for fn in local_fns]
        inside = [local_grads(fn)(a, b) for fn in local_fns]
        return outside, inside

    outside, inside = run(z1, z2)
    values = [v for v, _ in outside]
    _assert_equal_to_global(values, [g for _, g in outside], z1, z2)
    _assert_equal_to_global(values, inside, z1, z2)
    assert 0.0 < float(values[1]) < 1.0  # the accuracy case must discriminate


def test_pmap_equals_global_batch():
    z1, z2 = views(2 * N_DEV, 6, seed=12)
    local = (z1.reshape(N_DEV, 2, -1), z2.reshape(N_DEV, 2, -1))
    local_fns = (
        lambda a, b: nt_xent(a, b, temperature=0.2, axis_name="i"),
        lambda a, b: contrastive_accuracy(a, b, axis_name="i"),
        lambda a, b: byol_loss(a, b, axis_name="i"),
    )

    pmapped = jax.pmap(lambda a, b: [fn(a, b) for fn in local_fns], axis_name="i")
    values = pmapped(*local)
    for v in values:  # the same value on every device
        assert v.shape == (N_DEV,) and np.all(np.asarray(v) == np.asarray(v)[0])
    # Each device's copy is the global loss, so differentiating one copy from outside pmap must
    # give the global gradients. (Gradients taken inside pmap follow pmap's psum convention; see
    # test_encoder_gradients_with_usual_data_parallel_recipes.)
    outside = [
        jax.grad(lambda a, b, k=k: pmapped(a, b)[k][0], argnums=(0, 1))(*local) for k in range(3)
    ]
    _assert_equal_to_global([v[0] for v in values], outside, z1, z2)


def test_encoder_gradients_with_usual_data_parallel_recipes(mesh):
    """A linear encoder: shard_map with replicated params, and pmap + pmean of the gradients."""
    x1, x2 = views(2 * N_DEV, 5, seed=14)
    w = np.random.default_rng(15).normal(size=(5, 4)).astype(np.float32)

    def loss(w, a, b, axis_name=None):
        return nt_xent(a @ w, b @ w, axis_name=axis_name) + byol_loss(
            a @ w, b @ w, axis_name=axis_name
        )

    expected = jax.jit(jax.grad(loss))(w, x1, x2)
    grad_local = jax.grad(partial(loss, axis_name="data"))
    via_shard_map = jax.jit(
        jax.shard_map(grad_local, mesh=mesh, in_specs=(P(), P("data"), P("data")), out_specs=P())
    )(w, x1, x2)
    np.testing.assert_allclose(via_shard_map, expected, rtol=1e-5, atol=1e-7)

    def pmap_step(w, a, b):
        return jax.lax.pmean(jax.grad(partial(loss, axis_name="i"))(w, a, b), "i")

    via_pmap = jax.pmap(pmap_step, axis_name="i")(
        np.broadcast_to(w, (N_DEV, *w.shape)), x1.reshape(N_DEV, 2, -1), x2.reshape(N_DEV, 2, -1)
    )
    np.testing.assert_allclose(via_pmap[0], expected, rtol=1e-5, atol=1e-7)


def test_jit_on_mesh_sharded_batch_equals_unsharded(mesh):
    z1, z2 = views(2 * N_DEV, 6, seed=13)
    sharding = NamedSharding(mesh, P("data"))
    s1, s2 = jax.device_put(z1, sharding), jax.device_put(z2, sharding)
    fn = jax.jit(lambda a, b: (nt_xent(a, b), contrastive_accuracy(a, b), byol_loss(a, b)))
    for got, expected in zip(fn(s1, s2), fn(z1, z2), strict=True):
        np.testing.assert_allclose(got, expected, rtol=2e-6)


# ------------------------------------------------------------------------ streamed (block_size)


def _loss_acc_grads(block_size):
    """Jitted (loss, accuracy, (d/dz1, d/dz2, d/dtau)) of one NT-Xent path; tau is traced."""

    def loss(a, b, tau):
        return nt_xent(a, b, temperature=tau, block_size=block_size)

    @jax.jit
    def fn(a, b, tau):
        value, grads = jax.value_and_grad(loss, argnums=(0, 1, 2))(a, b, tau)
        return value, contrastive_accuracy(a, b, block_size=block_size), grads

    return fn


def _assert_grads_close(got, expected):
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6)


# 2N = 24 candidates: blocks of 1 (24 steps), 5 and 7 (the last block padded), 24 (one block) and
# 100 (one block larger than the batch).
@pytest.mark.parametrize("block_size", [1, 5, 7, 24, 100])
def test_streamed_equals_direct_and_algorithm1(block_size):
    z1, z2 = views(12, 6, seed=30, noise=0.8)
    direct, streamed = _loss_acc_grads(None), _loss_acc_grads(block_size)
    # 0.02: logits up to 50, so the online max shift matters (a fixed shift would underflow).
    for tau in (0.02, 0.5):
        value, acc, grads = streamed(z1, z2, tau)
        ref_value, ref_acc, ref_grads = direct(z1, z2, tau)
        np.testing.assert_allclose(value, simclr_algorithm1(z1, z2, tau), rtol=2e-5)
        np.testing.assert_allclose(value, ref_value, rtol=2e-6)
        assert float(acc) == float(ref_acc)
        _assert_grads_close(grads, ref_grads)
    assert 0.0 < float(ref_acc) < 1.0  # the accuracy case must discriminate
    assert abs(float(ref_grads[2])) > 1e-2  # and the temperature must matter


def test_streamed_accuracy_breaks_ties_like_argmax():
    # Four distinct directions for 2N = 20 anchors: nearly every anchor has tied best candidates,
    # spread over several blocks; the lowest index must win, as with jnp.argmax.
    dirs = np.eye(4, dtype=np.float32)
    rng = np.random.default_rng(33)
    z1, z2 = dirs[rng.integers(0, 4, 10)], dirs[rng.integers(0, 4, 10)]
    expected = float(accuracy_jit(z1, z2))
    assert 0.0 < expected < 1.0
    for block_size in (1, 3, 8):
        assert float(contrastive_accuracy(z1, z2, block_size=block_size)) == expected


def test_streamed_identical_embeddings_and_float64():
    z = np.ones((4, 3), np.float32)
    np.testing.assert_allclose(nt_xent(z, z, block_size=3), math.log(7), atol=1e-5)
    z1, z2 = views(5, 4, seed=31, dtype=np.float64)
    with jax.enable_x64(True):
        fn = jax.jit(lambda a, b, t: nt_xent(a, b, temperature=t, block_size=3))
        tau = jnp.asarray(0.3, jnp.float64)
        got = fn(z1, z2, tau)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(got, simclr_algorithm1(z1, z2, 0.3), rtol=1e-12)
        # The custom VJP (embeddings) and the zero-valued temperature term, against differences.
        check_grads(fn, (jnp.asarray(z1), jnp.asarray(z2), tau), order=1, modes=("rev",), eps=1e-6)


@pytest.mark.parametrize("block_size", [5, 64])
def test_streamed_shard_map_and_pmap_equal_global_batch(mesh, block_size):
    z1, z2 = views(2 * N_DEV, 6, seed=32)  # 2N = 32: blocks of 5 (padded) and one block of 64
    ref_value, ref_acc, ref_grads = _loss_acc_grads(None)(z1, z2, 0.2)
    specs = (P("data"), P("data"), P())

    def local(a, b, tau):
        return nt_xent(a, b, temperature=tau, axis_name="data", block_size=block_size)

    def local_acc(a, b):
        return contrastive_accuracy(a, b, axis_name="data", block_size=block_size)

    @jax.jit
    def run(a, b, tau):
        mapped = jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P())
        outside = jax.value_and_grad(mapped, argnums=(0, 1, 2))(a, b, tau)
        inside = jax.shard_map(
            jax.grad(local, argnums=(0, 1, 2)), mesh=mesh, in_specs=specs, out_specs=specs
        )(a, b, tau)
        acc = jax.shard_map(local_acc, mesh=mesh, in_specs=specs[:2], out_specs=P())(a, b)
        return outside, inside, acc

    (value, outside), inside, acc = run(z1, z2, 0.2)
    np.testing.assert_allclose(value, ref_value, rtol=2e-6)
    assert float(acc) == float(ref_acc)
    _assert_grads_close(outside, ref_grads)
    _assert_grads_close(inside, ref_grads)  # shard_map: the local gradients are already global

    # pmap: the psum convention makes the local gradients axis_size times the global ones.
    def local_i(a, b, tau):
        return nt_xent(a, b, temperature=tau, axis_name="i", block_size=block_size)

    pmapped = jax.pmap(jax.grad(local_i, argnums=(0, 1, 2)), axis_name="i", in_axes=(0, 0, None))
    g1, g2, gtau = pmapped(z1.reshape(N_DEV, 2, -1), z2.reshape(N_DEV, 2, -1), 0.2)
    _assert_grads_close(
        (g1.reshape(z1.shape) / N_DEV, g2.reshape(z2.shape) / N_DEV, np.mean(gtau)), ref_grads
    )


def test_streamed_jit_on_sharded_batch_keeps_rows_on_their_device(mesh):
    """Plain jit on a batch-sharded array: same values; the only collectives are the gathers of
    the embeddings (and of two scalars per anchor) and the parameter all-reduce, none in a loop."""
    x1, x2 = views(4 * N_DEV, 6, seed=34)
    w = np.random.default_rng(35).normal(size=(6, 5)).astype(np.float32)

    def loss(w, a, b):
        return nt_xent(a @ w, b @ w, temperature=0.2, block_size=12)

    expected = jax.jit(jax.value_and_grad(_direct_encoder_loss))(w, x1, x2)
    rows, repl = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    step = jax.jit(jax.value_and_grad(loss), in_shardings=(repl, rows, rows))
    value, grad = step(w, x1, x2)
    np.testing.assert_allclose(value, expected[0], rtol=2e-6)
    np.testing.assert_allclose(grad, expected[1], rtol=1e-4, atol=1e-7)

    colls = collectives(step.lower(w, x1, x2).compile().as_text(), N_DEV)
    embed_bytes = 2 * x1.shape[0] * w.shape[1] * 4  # the [2, N, P] gathered embeddings
    assert {c["kind"] for c in colls} <= {"all-gather", "all-reduce"}, colls
    assert all(c["count"] == 1 for c in colls), "a collective inside the streaming loop"
    gathers = [c for c in colls if c["kind"] == "all-gather"]
    assert gathers and all(c["scope"] == "nt_xent" for c in gathers), gathers
    assert max(c["bytes"] for c in gathers) == embed_bytes
    # No [2N, P] all-reduce of candidate gradients (the direct path's backward has one).
    reduced = [b for c in colls if c["kind"] == "all-reduce" for b in c["array_bytes"]]
    assert max(reduced) <= w.size * 4, colls


def _direct_encoder_loss(w, a, b):
    return nt_xent(a @ w, b @ w, temperature=0.2)


def _temp_bytes(fn, n, d, sharding=None):
    """Temporary buffer bytes (per device) of jit(value_and_grad(fn)) at z1, z2: [n, d]."""
    spec = jax.ShapeDtypeStruct((n, d), jnp.float32, sharding=sharding)
    kwargs = {} if sharding is None else dict(in_shardings=(sharding, sharding))
    lowered = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)), **kwargs).lower(spec, spec)
    analysis = lowered.compile().memory_analysis()
    assert analysis is not None, "memory_analysis() is unavailable on this backend"
    return analysis.temp_size_in_bytes


def test_streamed_memory_is_bounded(mesh):
    """Compiled, not run: per-device temporaries of the direct and streamed forward+backward."""
    n, d, block = 1024, 32, 64  # 2N = 2048: the full matrix is 16.8 MB
    full = (2 * n) ** 2 * 4
    streamed = partial(nt_xent, block_size=block)
    # A few [rows, block] buffers plus a few copies of the [2N, D] candidates.
    bound = 4 * 4 * (2 * n * block + 2 * n * d)
    direct_1, streamed_1 = _temp_bytes(nt_xent, n, d), _temp_bytes(streamed, n, d)
    assert direct_1 >= full and streamed_1 <= min(bound, full / 4), (direct_1, streamed_1)
    # Doubling the batch: the streamed temporaries double (linear), the direct ones quadruple. A
    # streamed forward differentiated by plain autodiff would keep every block: quadratic.
    assert _temp_bytes(streamed, 2 * n, d) <= 2.5 * streamed_1
    assert _temp_bytes(nt_xent, 2 * n, d) >= 3.5 * direct_1
    # 8 devices, plain jit on the sharded batch: each device holds its [2n, B] blocks only.
    rows = NamedSharding(mesh, P("data"))
    direct_8, streamed_8 = _temp_bytes(nt_xent, n, d, rows), _temp_bytes(streamed, n, d, rows)
    bound_8 = 4 * 4 * (2 * n // N_DEV * block + 2 * n * d)
    assert direct_8 >= full / N_DEV and streamed_8 <= bound_8, (direct_8, streamed_8)


def test_docstring_examples():
    import doctest
    import importlib
    import pkgutil

    import ssl_jax.losses

    # testmod only collects the objects a module defines, not those it re-exports: walk the
    # package so that every family module (and any added later) is run.
    names = [ssl_jax.losses.__name__]
    names += [m.name for m in pkgutil.walk_packages(ssl_jax.losses.__path__, "ssl_jax.losses.")]
    attempted = 0
    for name in names:
        result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, name
        attempted += result.attempted
    assert attempted >= 3
