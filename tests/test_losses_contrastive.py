"""Contrastive losses on meshes, MoCo v3 and SupCon: float64 loop references, 8-device runs.

The fake devices come from tests/conftest.py. nt_xent's own references are in test_losses.py;
here it is checked on an Explicit-axis mesh (``jax.make_mesh``'s default) and an Auto one.
"""

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

from ssl_jax.losses.contrastive import contrastive_accuracy, nt_xent
from ssl_jax.losses.momentum_contrast import moco_v3_loss
from ssl_jax.losses.supervised_contrastive import supcon_loss

N_DEV = 8


# ----------------------------------------------------------------------------- references


def moco_v3_algorithm1(q1, q2, k1, k2, tau):
    """MoCo v3 Algorithm 1 (Chen, Xie & He 2021) with plain loops in float64."""

    def normalize(x):
        out = []
        for row in np.asarray(x, np.float64):
            out.append(row / math.sqrt(row @ row))
        return out

    def ctr(q, k):
        q, k = normalize(q), normalize(k)
        n = len(q)
        ce = 0.0
        for i in range(n):  # logits = q k^T / tau, labels = range(N)
            logits = [float(q[i] @ k[j]) / tau for j in range(n)]
            ce += -math.log(math.exp(logits[i]) / sum(math.exp(x) for x in logits))
        return 2 * tau * ce / n

    return ctr(q1, k2) + ctr(q2, k1)


def supcon_eq2(z, labels, tau):
    """L^sup_out (Khosla et al. 2020, Eq. 2), plain loops in float64; mean over anchors with a
    positive, 0 if none has one."""
    z = np.asarray(z, np.float64)
    m = len(z)

    def s(i, j):
        return float(z[i] @ z[j]) / (math.sqrt(z[i] @ z[i]) * math.sqrt(z[j] @ z[j]))

    total, count = 0.0, 0
    for i in range(m):
        positives = [p for p in range(m) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denom = sum(math.exp(s(i, a) / tau) for a in range(m) if a != i)
        total += -sum(math.log(math.exp(s(i, p) / tau) / denom) for p in positives) / len(positives)
        count += 1
    return total / count if count else 0.0


def rows(n, d, seed, k=2, noise=0.5, dtype=np.float32):
    """k correlated [n, d] arrays: noisy copies of the same n points."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, d))
    return [(base + noise * rng.normal(size=(n, d))).astype(dtype) for _ in range(k)]


LABELS_16 = np.array([0, 1, 2, 0, 1, 3, 2, 2, 4, 0, 1, 5, 2, 6, 0, 1], np.int32)  # 4, 5, 6 alone

moco_jit = jax.jit(moco_v3_loss)
supcon_jit = jax.jit(supcon_loss)


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("n,d,tau", [(1, 3, 0.2), (5, 4, 0.5), (12, 8, 0.1)])
def test_moco_v3_matches_algorithm1(n, d, tau):
    q1, q2, k1, k2 = rows(n, d, seed=n, k=4)
    got = moco_jit(q1, q2, k1, k2, temperature=tau)
    assert got.dtype == jnp.float32 and got.shape == ()
    np.testing.assert_allclose(got, moco_v3_algorithm1(q1, q2, k1, k2, tau), rtol=2e-5)


@pytest.mark.parametrize(
    "labels,tau",
    [(LABELS_16, 0.1), (np.arange(16) % 3, 0.5), (np.zeros(16, np.int32), 1.0)],
)
def test_supcon_matches_eq2(labels, tau):
    (z,) = rows(16, 6, seed=3, k=1)
    got = supcon_jit(z, labels, temperature=tau)
    assert got.dtype == jnp.float32 and got.shape == ()
    np.testing.assert_allclose(got, supcon_eq2(z, labels, tau), rtol=2e-5)


def test_float64_inputs_give_float64_results():
    q1, q2, k1, k2 = rows(5, 4, seed=1, k=4, dtype=np.float64)
    with jax.enable_x64(True):
        got = moco_jit(q1, q2, k1, k2, temperature=0.3)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(got, moco_v3_algorithm1(q1, q2, k1, k2, 0.3), rtol=1e-12)
        got = supcon_jit(q1, LABELS_16[:5] % 2, temperature=0.3)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(got, supcon_eq2(q1, LABELS_16[:5] % 2, 0.3), rtol=1e-12)


def test_supcon_with_image_labels_equals_nt_xent():
    z1, z2 = rows(7, 5, seed=4)
    z, labels = np.concatenate([z1, z2]), np.tile(np.arange(7), 2)
    for tau in (0.1, 0.7):
        np.testing.assert_allclose(
            supcon_jit(z, labels, temperature=tau), nt_xent(z1, z2, temperature=tau), rtol=1e-5
        )
    g = jax.grad(supcon_loss)(z, labels, temperature=0.3)
    g1, g2 = jax.grad(nt_xent, argnums=(0, 1))(z1, z2, temperature=0.3)
    np.testing.assert_allclose(g, np.concatenate([g1, g2]), rtol=1e-4, atol=1e-7)


def test_nt_xent_and_supcon_equal_optax_ntxent():
    """An external reference: optax.losses.ntxent (its own implementation: cosines, positives by
    label, the mean over positive pairs) on the 2N stacked views with one label per image."""
    import optax

    z1, z2 = rows(9, 6, seed=5)
    z, labels = np.concatenate([z1, z2]), np.tile(np.arange(9), 2)
    for tau in (0.1, 0.5):
        want = optax.losses.ntxent(jnp.asarray(z), jnp.asarray(labels), temperature=tau)
        np.testing.assert_allclose(nt_xent(z1, z2, temperature=tau), want, rtol=1e-5)
        np.testing.assert_allclose(supcon_jit(z, labels, temperature=tau), want, rtol=1e-5)
    g_optax = jax.grad(optax.losses.ntxent)(jnp.asarray(z), jnp.asarray(labels), 0.5)
    g1, g2 = jax.grad(nt_xent, argnums=(0, 1))(z1, z2, temperature=0.5)
    np.testing.assert_allclose(np.concatenate([g1, g2]), g_optax, rtol=1e-4, atol=1e-6)


def test_supcon_without_positives_is_zero_with_finite_gradient():
    (z,) = rows(6, 3, seed=5, k=1)
    value, grad = jax.value_and_grad(supcon_loss)(z, np.arange(6), temperature=0.05)
    assert float(value) == 0.0 and np.all(np.asarray(grad) == 0.0)
    # Zero and duplicated rows: finite too.
    dup = np.concatenate([np.zeros((2, 3)), np.ones((4, 3))]).astype(np.float32)
    value, grad = jax.value_and_grad(supcon_loss)(dup, np.array([0, 0, 1, 1, 1, 2]))
    assert np.isfinite(value) and np.isfinite(grad).all()


def test_moco_identical_keys_and_queries():
    e = np.eye(3, 5, dtype=np.float32)
    tau = 0.2
    # Positive logit 1/tau, the others 0: 2 * 2 tau * log(1 + (N - 1) exp(-1/tau)).
    expected = 4 * tau * math.log1p(2 * math.exp(-1 / tau))
    np.testing.assert_allclose(moco_jit(e, e, e, e, temperature=tau), expected, rtol=1e-5)
    assert moco_jit(e, e, e, e).dtype == jnp.float32


# ----------------------------------------------------------------------------- gradients


def test_finite_difference_gradients_float64():
    q1, q2, k1, k2 = rows(4, 3, seed=6, k=4, dtype=np.float64)
    with jax.enable_x64(True):
        q1, q2, k1, k2 = map(jnp.asarray, (q1, q2, k1, k2))
        tau = jnp.asarray(0.4, jnp.float64)
        # The keys are stop_gradient-ed: only the queries (and tau) against differences.
        check_grads(
            lambda a, b, t: moco_jit(a, b, k1, k2, temperature=t),
            (q1, q2, tau),
            order=1,
            modes=("rev",),
            eps=1e-6,
        )
        z, labels = jnp.concatenate([q1, q2]), jnp.asarray([0, 1, 0, 2, 1, 3, 0, 2])
        check_grads(
            lambda a, t: supcon_jit(a, labels, temperature=t),
            (z, tau),
            order=1,
            modes=("rev",),
            eps=1e-6,
        )


def test_moco_keys_get_exactly_zero_gradient():
    q1, q2, k1, k2 = rows(5, 4, seed=7, k=4)
    grads = jax.jit(jax.grad(moco_v3_loss, argnums=(0, 1, 2, 3)))(q1, q2, k1, k2)
    assert np.abs(grads[0]).max() > 1e-3 and np.abs(grads[1]).max() > 1e-3
    assert np.all(np.asarray(grads[2]) == 0.0) and np.all(np.asarray(grads[3]) == 0.0)


# ----------------------------------------------------------------------------- dtypes, errors


def test_bfloat16_inputs_give_float32_close_to_float32():
    q1, q2, k1, k2 = rows(8, 16, seed=8, k=4)
    b = [jnp.asarray(x, jnp.bfloat16) for x in (q1, q2, k1, k2)]
    got = moco_jit(*b)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, moco_jit(q1, q2, k1, k2), rtol=2e-2, atol=2e-2)
    z = np.concatenate([q1, q2])
    labels = np.tile(np.arange(8) % 5, 2)
    got = supcon_jit(jnp.asarray(z, jnp.bfloat16), labels)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, supcon_jit(z, labels), rtol=2e-2, atol=2e-2)


def test_moco_bad_shapes_raise():
    a, b = np.ones((4, 3)), np.ones((5, 3))
    with pytest.raises(ValueError, match=r"q1 and k2 must have the same shape.*\(4, 3\).*\(5, 3"):
        moco_v3_loss(a, a, a, b)
    with pytest.raises(ValueError, match=r"q1 and q2 must have the same shape.*\(4, 2\)"):
        jax.jit(moco_v3_loss)(a, np.ones((4, 2)), a, a)
    with pytest.raises(ValueError, match=r"k1 must be 2-D.*got 1-D shape \(3,\)"):
        moco_v3_loss(a, a, np.ones(3), a)
    with pytest.raises(ValueError, match=r"q1 must be 2-D.*vmap"):
        moco_v3_loss(np.ones((2, 4, 3)), a, a, a)
    with pytest.raises(ValueError, match=r"temperature must be > 0"):
        moco_v3_loss(a, a, a, a, temperature=0.0)


def test_supcon_bad_inputs_raise():
    z = np.ones((6, 3))
    with pytest.raises(ValueError, match=r"z must be 2-D.*reshape\(V \* N, D\)"):
        supcon_loss(np.ones((2, 3, 3)), np.arange(6))
    with pytest.raises(ValueError, match=r"labels must have shape \[M\] = \(6,\).*\(3,\).*tile"):
        jax.jit(supcon_loss)(z, np.arange(3))
    with pytest.raises(ValueError, match=r"labels must be integers.*argmax"):
        supcon_loss(z, np.eye(6))
    with pytest.raises(ValueError, match=r"labels must be integers.*float32"):
        supcon_loss(z, np.zeros(6, np.float32))
    with pytest.raises(ValueError, match=r"at least one row"):
        supcon_loss(np.ones((0, 3)), np.zeros(0, np.int32))
    with pytest.raises(ValueError, match=r"z must be real"):
        supcon_loss(z.astype(np.complex64), np.arange(6))
    with pytest.raises(ValueError, match=r"temperature must be a scalar"):
        supcon_loss(z, np.arange(6), temperature=np.ones(2))


# ----------------------------------------------------------------------------- 8 devices


@pytest.fixture(scope="module")
def auto_mesh():
    assert jax.device_count() == N_DEV, "tests/conftest.py should fake 8 CPU devices"
    return jax.make_mesh((N_DEV,), ("data",), axis_types=(AxisType.Auto,))


@pytest.fixture(scope="module")
def default_mesh():
    mesh = jax.make_mesh((N_DEV,), ("data",))  # the default axis types: Explicit
    assert mesh.axis_types == (AxisType.Explicit,)
    return mesh


def _jit_values_and_grads(block_size):
    """Jitted {name: (value, grads)} of the four functions; accuracy has no gradients."""

    @jax.jit
    def run(q1, q2, k1, k2, z, labels):
        nt = partial(nt_xent, temperature=0.2, block_size=block_size)
        return {
            "nt_xent": jax.value_and_grad(nt, argnums=(0, 1))(q1, q2),
            "accuracy": (contrastive_accuracy(q1, q2, block_size=block_size), ()),
            "moco": jax.value_and_grad(moco_v3_loss, argnums=(0, 1, 2, 3))(q1, q2, k1, k2),
            "supcon": jax.value_and_grad(supcon_loss, argnums=(0,))(z, labels),
        }

    return run


@pytest.mark.parametrize("block_size", [None, 5])
@pytest.mark.parametrize("mesh_kind", ["default", "auto"])
def test_jit_on_mesh_sharded_batch_equals_one_device(mesh_kind, block_size, request):
    """jit on a batch sharded over a jax.make_mesh mesh (Explicit or Auto axes): the values and
    gradients of one device; the gradients keep the batch sharding."""
    mesh = request.getfixturevalue(f"{mesh_kind}_mesh")
    inputs = rows(2 * N_DEV, 6, seed=40, k=4, noise=0.8)
    inputs += [np.concatenate(inputs[:2]), np.tile(LABELS_16, 2)]
    sharding = NamedSharding(mesh, P("data"))
    sharded = [jax.device_put(x, sharding) for x in inputs]
    run = _jit_values_and_grads(block_size)
    got, expected = run(*sharded), run(*inputs)
    for name, (value, grads) in expected.items():
        np.testing.assert_allclose(got[name][0], value, rtol=2e-6, err_msg=name)
        for g, e in zip(got[name][1], grads, strict=True):
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-7, err_msg=name)
            if mesh_kind == "default":  # Explicit: the sharding is in the type
                assert g.sharding.spec[0] == "data", (name, g.sharding)
    assert 0.0 < float(expected["accuracy"][0]) < 1.0


def _mapped_losses(axis):
    return (
        lambda a, b, c, d: moco_v3_loss(a, b, c, d, temperature=0.3, axis_name=axis),
        lambda z, labels: supcon_loss(z, labels, temperature=0.3, axis_name=axis),
    )


def test_shard_map_and_pmap_equal_global_batch(auto_mesh):
    q1, q2, k1, k2 = rows(2 * N_DEV, 5, seed=41, k=4)
    z, labels = np.concatenate([q1, q2]), np.concatenate([LABELS_16, LABELS_16[::-1]])
    moco_global, supcon_global = _mapped_losses(None)
    moco_ref = jax.jit(jax.value_and_grad(moco_global, argnums=(0, 1, 2, 3)))(q1, q2, k1, k2)
    supcon_ref = jax.jit(jax.value_and_grad(supcon_global))(z, labels)
    moco_local, supcon_local = _mapped_losses("data")
    data = P("data")

    @jax.jit
    def run(q1, q2, k1, k2, z, labels):
        m = jax.shard_map(moco_local, mesh=auto_mesh, in_specs=data, out_specs=P())
        s = jax.shard_map(supcon_local, mesh=auto_mesh, in_specs=data, out_specs=P())
        outside = (
            jax.value_and_grad(m, argnums=(0, 1, 2, 3))(q1, q2, k1, k2),
            jax.value_and_grad(s)(z, labels),
        )
        # Gradients taken INSIDE shard_map, of the local rows only: already global.
        inside = (
            jax.shard_map(
                jax.grad(moco_local, argnums=(0, 1, 2, 3)),
                mesh=auto_mesh,
                in_specs=data,
                out_specs=data,
            )(q1, q2, k1, k2),
            jax.shard_map(jax.grad(supcon_local), mesh=auto_mesh, in_specs=data, out_specs=data)(
                z, labels
            ),
        )
        return outside, inside

    (moco_out, supcon_out), (moco_in, supcon_in) = run(q1, q2, k1, k2, z, labels)
    for (value, _), ref in ((moco_out, moco_ref), (supcon_out, supcon_ref)):
        np.testing.assert_allclose(value, ref[0], rtol=2e-6)
    for got, ref in ((moco_out[1], moco_ref[1]), (moco_in, moco_ref[1])):
        for g, e in zip(got, ref, strict=True):
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-7)
    for got in (supcon_out[1], supcon_in):
        np.testing.assert_allclose(got, supcon_ref[1], rtol=1e-4, atol=1e-7)

    # pmap: the psum convention makes the local gradients axis_size times the global ones.
    moco_i, supcon_i = _mapped_losses("i")

    def split(x):
        return x.reshape(N_DEV, -1, *x.shape[1:])

    values = jax.pmap(moco_i, axis_name="i")(*map(split, (q1, q2, k1, k2)))
    assert np.all(np.asarray(values) == np.asarray(values)[0])
    np.testing.assert_allclose(values[0], moco_ref[0], rtol=2e-6)
    grads = jax.pmap(jax.grad(moco_i, argnums=(0, 1, 2, 3)), axis_name="i")(
        *map(split, (q1, q2, k1, k2))
    )
    for g, e in zip(grads, moco_ref[1], strict=True):
        np.testing.assert_allclose(g.reshape(e.shape) / N_DEV, e, rtol=1e-4, atol=1e-7)
    value, grad = jax.pmap(jax.value_and_grad(supcon_i), axis_name="i")(split(z), split(labels))
    np.testing.assert_allclose(value, np.full(N_DEV, supcon_ref[0]), rtol=2e-6)
    np.testing.assert_allclose(grad.reshape(z.shape) / N_DEV, supcon_ref[1], rtol=1e-4, atol=1e-7)


def test_supcon_without_positives_under_shard_map_is_zero(auto_mesh):
    (z,) = rows(N_DEV, 3, seed=42, k=1)
    local = partial(supcon_loss, axis_name="data")
    fn = jax.shard_map(
        jax.value_and_grad(local), mesh=auto_mesh, in_specs=P("data"), out_specs=(P(), P("data"))
    )
    value, grad = jax.jit(fn)(z, np.arange(N_DEV))
    assert float(value) == 0.0 and np.all(np.asarray(grad) == 0.0)


@pytest.mark.parametrize("block_size", [None, 12])
def test_default_mesh_compiles_to_the_collectives_of_an_auto_mesh(
    default_mesh, auto_mesh, block_size
):
    """Resharding the candidates on an Explicit mesh is the all-gather XLA picks by itself on an
    Auto one: the same collectives (kind, count, bytes), the anchors still row-sharded."""
    from ssl_jax.profiling import collectives

    def plan(mesh):
        rows_, repl = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
        x = jax.device_put(np.ones((4 * N_DEV, 6), np.float32), rows_)
        w = jax.device_put(np.ones((6, 5), np.float32), repl)

        def loss(w, a, b):
            return nt_xent(a @ w, b @ w, temperature=0.2, block_size=block_size)

        text = jax.jit(jax.value_and_grad(loss)).lower(w, x, x).compile().as_text()
        return sorted((c["kind"], c["count"], c["bytes"]) for c in collectives(text, N_DEV))

    explicit = plan(default_mesh)
    assert explicit == plan(auto_mesh)
    assert ("all-gather", 1, 2 * 4 * N_DEV * 5 * 4) in explicit  # the [2, N, P] embeddings, once
