"""Tests for ssl_jax.models (encoders, heads, shared layers) and the convolution kernels of
ssl_jax.kernels (im2col, Winograd, the 'auto' dispatch and its GPU channel padding).

Models are tiny (width 1/16 ResNets, few channels, 8-32 px) so the module runs in seconds on a
2-core CPU; full-size ResNets are only built abstractly (``nnx.eval_shape``) to count parameters.
"""

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, struct
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ssl_jax.kernels import (
    AutoConv,
    auto_conv_general_dilated,
    get_conv_general_dilated,
    winograd_conv_general_dilated,
)
from ssl_jax.kernels import winograd as winograd_module
from ssl_jax.models import (
    BasicBlock,
    Bottleneck,
    ConvNet,
    Predictor,
    ProjectionMLP,
    ResNet,
    ResNet18,
    ResNet34,
    ResNet50,
    get_encoder,
    im2col_conv_general_dilated,
)
from ssl_jax.models.layers import without_gpu_channel_padding

TINY = 1 / 16  # ResNet width multiplier: 4 base channels


def count(module: nnx.Module, kind=nnx.Param) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, kind)))


def build(ctor: Callable[[], nnx.Module], seed: int = 0) -> nnx.Module:
    """Build ``ctor()`` abstractly and fill it with NumPy values (He-normal kernels, BN identity).

    On XLA:CPU every distinct kernel shape costs a compile of the random initialiser (about a
    second each on the shared 2-core machine), so tests that do not check initial values skip it.
    """
    graphdef, state = nnx.split(nnx.eval_shape(ctor))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-2].key
        if name == "kernel":
            std = np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.standard_normal(leaf.shape) * std, leaf.dtype)
        if name in ("scale", "var"):
            return jnp.ones(leaf.shape, leaf.dtype)
        return jnp.zeros(leaf.shape, leaf.dtype)  # biases, running means

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))


def tiny_convnet(**kwargs) -> ConvNet:
    kwargs.setdefault("features", (4, 8))
    kwargs.setdefault("strides", (2, 2))
    return build(lambda: ConvNet(rngs=nnx.Rngs(0), **kwargs))


def tiny_resnet(stage_sizes=(1, 1), block_cls=BasicBlock, **kwargs) -> ResNet:
    kwargs.setdefault("stem", "cifar")
    return build(lambda: ResNet(stage_sizes, block_cls, width=TINY, rngs=nnx.Rngs(0), **kwargs))


@nnx.jit
def apply(model: nnx.Module, x: jax.Array) -> jax.Array:
    """``model(x)``, compiled once per structure and input shape (eager ops compile one by one)."""
    return model(x)


def images(shape, seed=0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


# ----------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize(
    "ctor, params, batch_stats, num_features",
    [
        # torchvision resnet18 / resnet34 / resnet50 total minus fc (512*1000+1000, 2048*1000+1000)
        (ResNet18, 11_689_512 - 513_000, 9_600, 512),
        (ResNet34, 21_797_672 - 513_000, 17_024, 512),
        (ResNet50, 25_557_032 - 2_049_000, 53_120, 2048),
    ],
)
def test_param_counts_match_torchvision(ctor, params, batch_stats, num_features):
    model = nnx.eval_shape(lambda: ctor(rngs=nnx.Rngs(0)))
    assert count(model, nnx.Param) == params
    assert count(model, nnx.BatchStat) == batch_stats  # running mean + var, 2 per BN channel
    assert model.num_features == num_features


def test_param_counts_explicit():
    assert count(nnx.eval_shape(lambda: ResNet18(rngs=nnx.Rngs(0)))) == 11_176_512
    assert count(nnx.eval_shape(lambda: ResNet50(rngs=nnx.Rngs(0)))) == 23_508_032


def test_cifar_stem_and_width_param_counts():
    # cifar stem: 3x3x3x64 stem conv instead of 7x7x3x64 -> 9408 - 1728 fewer parameters.
    model = nnx.eval_shape(lambda: ResNet18(stem="cifar", rngs=nnx.Rngs(0)))
    assert count(model) == 11_176_512 - 7 * 7 * 3 * 64 + 3 * 3 * 3 * 64
    wide = nnx.eval_shape(lambda: ResNet50(width=2, rngs=nnx.Rngs(0)))
    assert wide.num_features == 4096
    # Every channel count doubles, so conv params grow ~4x (the stem only 2x).
    assert 3.9 < count(wide) / 23_508_032 < 4.0


def test_bottleneck_v15_layout():
    block = nnx.eval_shape(lambda: Bottleneck(16, 8, strides=2, rngs=nnx.Rngs(0)))
    assert block.conv1.kernel.shape == (1, 1, 16, 8) and block.conv1.strides == (1, 1)
    assert block.conv2.kernel.shape == (3, 3, 8, 8) and block.conv2.strides == (2, 2)
    assert block.conv3.kernel.shape == (1, 1, 8, 32)
    assert block.downsample_conv.kernel.shape == (1, 1, 16, 32)
    assert block.downsample_conv.strides == (2, 2)
    out = nnx.eval_shape(lambda b, x: b(x), block, jnp.zeros((2, 9, 9, 16)))
    assert out.shape == (2, 5, 5, 32)  # ceil(9 / 2), as torchvision's padding=1
    # Identity shortcut when the shape is kept.
    assert nnx.eval_shape(lambda: Bottleneck(32, 8, rngs=nnx.Rngs(0))).downsample_conv is None
    assert nnx.eval_shape(lambda: BasicBlock(8, 8, rngs=nnx.Rngs(0))).downsample_conv is None


def test_initialisation():
    """The real initialisers: torchvision's kaiming-normal (fan_out) convs, BN identity, and the
    optional zero-init of each block's last BN scale."""
    block = Bottleneck(8, 8, strides=2, rngs=nnx.Rngs(0))
    assert float(jnp.min(block.bn3.scale[...])) == 1.0
    np.testing.assert_array_equal(block.bn1.mean[...], 0.0)
    np.testing.assert_array_equal(block.bn1.var[...], 1.0)
    kernel = block.conv2.kernel[...]  # [3, 3, 8, 8]: fan_out = 3 * 3 * 8
    assert 0.8 < float(jnp.std(kernel)) / np.sqrt(2.0 / 72) < 1.2
    zero = Bottleneck(8, 8, strides=2, zero_init_residual=True, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(zero.bn3.scale[...], 0.0)
    np.testing.assert_array_equal(zero.bn2.scale[...], 1.0)
    np.testing.assert_array_equal(zero.downsample_bn.scale[...], 1.0)
    basic = nnx.eval_shape(lambda: BasicBlock(8, 8, zero_init_residual=True, rngs=nnx.Rngs(0)))
    assert basic.bn2.scale.shape == (8,)  # (BasicBlock's bn2 is the zero-initialised one)


# ----------------------------------------------------------------------------- shapes and dtypes


@pytest.mark.parametrize(
    "name, kwargs, shape, num_features",
    [
        ("resnet18", dict(stem="cifar"), (2, 8, 8, 3), 512),
        ("resnet18", dict(stem="imagenet", width=2), (2, 32, 40, 3), 1024),
        ("resnet34", dict(stem="cifar", in_channels=1, dtype=jnp.bfloat16), (2, 12, 10, 1), 512),
        ("resnet50", dict(stem="imagenet", dtype=jnp.bfloat16), (2, 64, 64, 3), 2048),
        ("resnet50", dict(stem="cifar", width=TINY), (2, 8, 8, 3), 128),
        ("convnet", dict(), (2, 28, 28, 1), 256),
        ("convnet", dict(dtype=jnp.bfloat16), (2, 8, 8, 1), 256),
        ("ConvNet", dict(features=(4, 8), strides=(1, 2), in_channels=3), (3, 16, 16, 3), 8),
    ],
)
def test_encoder_output_shapes(name, kwargs, shape, num_features):
    # Abstract evaluation: checks shapes and dtypes through the whole network without compiling.
    model = nnx.eval_shape(lambda: get_encoder(name, rngs=nnx.Rngs(0), **kwargs))
    assert model.num_features == num_features
    out = nnx.eval_shape(lambda m, x: m(x), model, jnp.zeros(shape))
    assert out.shape == (shape[0], num_features)
    assert out.dtype == jnp.float32


def test_encoder_runs():
    model = tiny_resnet((1, 1), Bottleneck, stem="imagenet")
    out = apply(model, images((2, 8, 8, 3)))
    assert out.shape == (2, 32) and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out))) and bool(jnp.all(out >= 0))  # mean of ReLUs
    assert float(jnp.max(out)) > 0


def test_get_encoder_unknown_name():
    with pytest.raises(ValueError, match=r"'convnet', 'resnet18', 'resnet34', 'resnet50'"):
        get_encoder("vit", rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "ctor, shape, match",
    [
        (lambda: ResNet18(rngs=nnx.Rngs(0)), (1, 16, 16, 3), r"32x32.*stem='cifar'"),
        (lambda: ResNet18(rngs=nnx.Rngs(0)), (1, 224, 31, 3), r"224x31.*minimum.*32x32"),
        (lambda: ResNet18(stem="cifar", rngs=nnx.Rngs(0)), (1, 4, 8, 3), "8x8"),
        (lambda: ConvNet(rngs=nnx.Rngs(0)), (1, 7, 7, 1), "8x8"),
        (lambda: ConvNet(rngs=nnx.Rngs(0)), (1, 28, 28, 3), "1 input channels"),
        (lambda: ConvNet(rngs=nnx.Rngs(0)), (28, 28, 1), r"\[B, H, W, C\]"),
    ],
)
def test_bad_input_raises(ctor, shape, match):
    model = nnx.eval_shape(ctor)
    with pytest.raises(ValueError, match=match):  # raised at trace time, from static shapes
        nnx.eval_shape(lambda m, x: m(x), model, jnp.zeros(shape))


def test_too_small_input_raises_eagerly_and_under_jit():
    model = tiny_convnet()
    with pytest.raises(ValueError, match="minimum input size is 4x4"):
        model(jnp.zeros((1, 3, 3, 1)))
    with pytest.raises(ValueError, match="minimum input size is 4x4"):
        apply(model, jnp.zeros((1, 3, 3, 1)))


def test_constructor_validation():
    with pytest.raises(ValueError, match="stem"):
        nnx.eval_shape(lambda: ResNet18(stem="tiny", rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="conv_impl"):
        nnx.eval_shape(lambda: ConvNet(conv_impl="cudnn", rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="width"):
        nnx.eval_shape(lambda: ResNet18(width=0.001, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="equal length"):
        nnx.eval_shape(lambda: ConvNet(features=(4, 8), rngs=nnx.Rngs(0)))


# ----------------------------------------------------------------------------- BatchNorm modes


def test_train_mode_uses_batch_statistics_and_updates_running_averages():
    model = tiny_convnet()
    x = images((4, 8, 8, 1))
    y = apply(model, x)
    # Momentum 0.9 (torch's 0.1): from (mean 0, var 1), one step gives 0.1 * batch + 0.9 * init.
    h = nnx.jit(lambda m, x: m.convs[0](x))(model, x)
    np.testing.assert_allclose(
        model.norms[0].mean[...], 0.1 * jnp.mean(h, axis=(0, 1, 2)), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        model.norms[0].var[...], 0.9 + 0.1 * jnp.var(h, axis=(0, 1, 2)), rtol=1e-4, atol=1e-5
    )
    for v in jax.tree.leaves(nnx.state(model.norms[1], nnx.BatchStat)):
        assert not bool(jnp.all((v == 0) | (v == 1)))
    # The output of example 0 depends on the other examples of the batch.
    x2 = x.at[1:].set(images((3, 8, 8, 1), seed=1))
    y2 = apply(model, x2)
    assert float(jnp.max(jnp.abs(y[0] - y2[0]))) > 1e-3


def test_eval_mode_uses_running_averages_per_example():
    model = tiny_convnet()
    x = images((4, 8, 8, 1))
    x2 = x.at[1:].set(images((3, 8, 8, 1), seed=1))
    model.eval()
    y = apply(model, x)
    stats = jax.tree.map(jnp.copy, nnx.state(model, nnx.BatchStat))
    y2 = apply(model, x2)
    np.testing.assert_allclose(y[0], y2[0], rtol=1e-6, atol=1e-6)  # per-example
    # eval does not update the statistics ...
    jax.tree.map(np.testing.assert_array_equal, stats, nnx.state(model, nnx.BatchStat))
    # ... but uses them: once a training step has moved them, eval outputs change.
    model.train()
    apply(model, x * 3.0 + 1.0)
    model.eval()
    assert float(jnp.max(jnp.abs(apply(model, x) - y))) > 1e-3


# ----------------------------------------------------------------------------- compute dtype


def test_bfloat16_compute():
    f32 = tiny_resnet((1, 1), Bottleneck, stem="imagenet")
    bf16 = tiny_resnet((1, 1), Bottleneck, stem="imagenet", dtype=jnp.bfloat16)
    x = images((4, 16, 16, 3))
    y32, y16 = apply(f32, x), apply(bf16, x)
    assert y16.dtype == jnp.float32
    for v in jax.tree.leaves(nnx.state(bf16, nnx.Param)):
        assert v.dtype == jnp.float32
    for v in jax.tree.leaves(nnx.state(bf16, nnx.BatchStat)):
        assert v.dtype == jnp.float32
    h = nnx.eval_shape(lambda m, x: m.stem_conv(x), bf16, x)
    assert h.dtype == jnp.bfloat16  # the convolutions really compute in bf16
    rel = float(jnp.linalg.norm(y16 - y32) / jnp.linalg.norm(y32))
    assert 0.0 < rel < 0.05, rel
    # The running statistics, accumulated in float32, agree too.
    for a, b in zip(
        jax.tree.leaves(nnx.state(f32, nnx.BatchStat)),
        jax.tree.leaves(nnx.state(bf16, nnx.BatchStat)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=0.05, atol=0.02)


# ----------------------------------------------------------------------------- im2col conv

CONV_CASES = [
    # (kernel, stride, padding, in_hw): the convolutions in ResNet and ConvNet, and a few more.
    (3, 1, ((1, 1), (1, 1)), (8, 8)),  # 3x3 body conv / cifar stem / ConvNet stride 1
    (3, 2, ((1, 1), (1, 1)), (9, 8)),  # strided 3x3 (odd and even sizes)
    (1, 1, ((0, 0), (0, 0)), (5, 5)),  # bottleneck 1x1
    (1, 2, ((0, 0), (0, 0)), (7, 6)),  # projection shortcut
    (7, 2, ((3, 3), (3, 3)), (13, 12)),  # imagenet stem
    (3, 2, "SAME", (7, 8)),
    (5, 1, "VALID", (9, 7)),
    (4, 3, ((2, 0), (1, 3)), (10, 11)),  # asymmetric padding, even kernel
    (3, 1, ((-1, 1), (1, 0)), (8, 8)),  # negative padding crops
]


@pytest.mark.parametrize("kernel, stride, padding, hw", CONV_CASES)
def test_im2col_conv_matches_xla(kernel, stride, padding, hw):
    c_in, c_out = 3, 5
    x = images((2, *hw, c_in))
    w = images((kernel, kernel, c_in, c_out), seed=1) / kernel
    cot = images((2, 16, 16, c_out), seed=2)

    @jax.jit
    def both(x, w):
        results = []
        for impl in (lax.conv_general_dilated, im2col_conv_general_dilated):
            f = functools.partial(
                impl,
                window_strides=(stride, stride),
                padding=padding,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
            # Under vjp the im2col path computes its forward as patches + matmul: check that
            # value as well as the plain (undifferentiated) one.
            y, vjp_fn = jax.vjp(f, x, w)
            results.append((f(x, w), y, *vjp_fn(cot[:, : y.shape[1], : y.shape[2]])))
        return results

    (y_ref, _, gx_ref, gw_ref), (y_plain, y, gx, gw) = both(x, w)
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype
    np.testing.assert_allclose(y_plain, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gx, gx_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gw, gw_ref, rtol=1e-5, atol=1e-5)


def test_im2col_gradient_has_no_convolution():
    """The im2col path really replaces the convolutions of the training step (and 'auto' picks
    it on CPU), while inference keeps the XLA convolution."""
    assert jax.default_backend() == "cpu"
    x = jnp.zeros((2, 8, 8, 1))

    def hlo(conv_impl, differentiate):
        graphdef, params, rest = nnx.split(tiny_convnet(conv_impl=conv_impl), nnx.Param, ...)

        def loss(p):
            return jnp.sum(nnx.merge(graphdef, p, rest, copy=True)(x))

        return jax.jit(jax.grad(loss) if differentiate else loss).lower(params).as_text()

    grad_hlo = hlo("auto", differentiate=True)
    assert "convolution" not in grad_hlo and "dot_general" in grad_hlo
    assert hlo("auto", differentiate=False).count("convolution") == 2
    assert "convolution" in hlo("xla", differentiate=True)


def test_im2col_dilation_and_fallbacks():
    x, w, wg = images((2, 9, 9, 4)), images((3, 3, 4, 6), seed=1), images((3, 3, 2, 6), seed=2)
    dn = ("NHWC", "HWIO", "NHWC")

    @jax.jit
    def both(x, w, wg):
        out = []
        for impl in (lax.conv_general_dilated, im2col_conv_general_dilated):
            dilated = impl(x, w, (1, 1), "SAME", rhs_dilation=(2, 2), dimension_numbers=dn)
            # Grouped convolution is not im2col'd but must still be right (lax fallback).
            grouped = impl(x, wg, (2, 2), "SAME", dimension_numbers=dn, feature_group_count=2)
            out.append((dilated, grouped))
        return out

    (d_ref, g_ref), (d, g) = both(x, w, wg)
    np.testing.assert_allclose(d, d_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(g, g_ref)


@pytest.mark.parametrize("c_in", [1, 3, 8])
def test_auto_conv_pads_few_input_channels_on_gpu(monkeypatch, c_in):
    """On GPU, 'auto' zero-pads fewer than 8 input channels (cuDNN has no tensor-core kernel for
    a 3-channel stem); the result and both gradients are the unpadded convolution's. The GPU
    branch is traced on the CPU by reporting the backend as 'gpu'."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    x = images((2, 13, 12, c_in))
    w = images((7, 7, c_in, 5), seed=1) / 7
    cot = images((2, 7, 6, 5), seed=2)
    kw = dict(
        window_strides=(2, 2), padding=((3, 3), (3, 3)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    auto = functools.partial(auto_conv_general_dilated, **kw)
    ref = functools.partial(lax.conv_general_dilated, **kw)

    def conv_in_channels(conv):
        eqns = jax.make_jaxpr(lambda a, b: conv(a, b, **kw))(x, w).eqns  # a new function: no cache
        return [e.invars[0].aval.shape[-1] for e in eqns if e.primitive.name.startswith("conv")]

    assert conv_in_channels(auto_conv_general_dilated) == [8]  # padded to 8 (or left at 8)
    assert conv_in_channels(AutoConv()) == [8]
    # Without the padding: what benchmarks count as the model's FLOPs.
    assert conv_in_channels(AutoConv(pad_gpu_channels=False)) == [c_in]
    unpadded = functools.partial(auto_conv_general_dilated, pad_gpu_channels=False)
    assert conv_in_channels(unpadded) == [c_in]
    (y, g), (y_ref, g_ref) = (jax.vjp(f, x, w) for f in (auto, ref))
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(g(cot), g_ref(cot), strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_conv_impl_selection():
    assert get_conv_general_dilated("xla") is lax.conv_general_dilated
    assert get_conv_general_dilated("im2col") is im2col_conv_general_dilated
    assert get_conv_general_dilated("winograd") is winograd_conv_general_dilated
    assert get_conv_general_dilated("auto") == AutoConv(pad_gpu_channels=True)
    assert get_conv_general_dilated("auto", pad_gpu_channels=False) == AutoConv(False)
    with pytest.raises(ValueError, match="conv_impl"):
        get_conv_general_dilated("fast")
    model = nnx.eval_shape(lambda: ResNet18(conv_impl="im2col", rngs=nnx.Rngs(0)))
    assert model.stem_conv.conv_general_dilated is im2col_conv_general_dilated
    assert model.blocks[-1].conv2.conv_general_dilated is im2col_conv_general_dilated


def test_without_gpu_channel_padding_rewrites_graph_definitions(monkeypatch):
    """On GPU a model's 'auto' convolutions pad fewer than 8 input channels to 8. The graph
    definition without_gpu_channel_padding returns, alone or as a static field of a train-state
    dataclass, traces the stem unpadded (the model's own FLOPs); the original is untouched and
    two models built alike have equal graph definitions."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    graphdef, state = nnx.split(tiny_resnet((1, 1), BasicBlock, stem="imagenet"))
    assert graphdef == nnx.graphdef(tiny_resnet((1, 1), BasicBlock, stem="imagenet"))

    @struct.dataclass
    class TrainState:
        state: Any
        graphdef: nnx.GraphDef = struct.field(pytree_node=False)

    x = images((2, 32, 32, 3))

    def conv_in_channels(train_state):
        def apply(ts, x):
            return nnx.merge(ts.graphdef, ts.state)(x)

        eqns = jax.make_jaxpr(apply)(train_state, x).eqns
        return [e.invars[0].aval.shape[-1] for e in eqns if e.primitive.name.startswith("conv")]

    padded = TrainState(state, graphdef)
    unpadded = without_gpu_channel_padding(padded)
    channels = conv_in_channels(unpadded)  # the model's own: 3 in the stem, 4-8 in the body
    assert channels[0] == 3 and min(channels[1:]) == 4
    assert conv_in_channels(padded) == [max(c, 8) for c in channels]
    assert unpadded.graphdef != graphdef and padded.graphdef is graphdef
    assert without_gpu_channel_padding((graphdef,))[0] == unpadded.graphdef
    assert jax.tree.structure(unpadded.state) == jax.tree.structure(state)


@pytest.mark.parametrize("impl", ["im2col", "winograd"])
def test_model_conv_impls_agree(monkeypatch, impl):
    """Same parameters give the same outputs and gradients whichever convolution is used. (The
    tiny ResNet has 4-8 channels: Winograd's channel minimum is lowered so its body uses it.)"""
    monkeypatch.setattr(winograd_module, "WINOGRAD_MIN_IN_CHANNELS", 4)
    x = images((4, 16, 16, 3))
    xla = tiny_resnet((1, 1), BasicBlock, stem="imagenet", conv_impl="xla")
    other = tiny_resnet((1, 1), BasicBlock, stem="imagenet", conv_impl=impl)
    gd_x, params, rest = nnx.split(xla, nnx.Param, ...)
    gd_i = nnx.graphdef(other)

    @jax.jit
    def both(params, rest):
        def loss(p, graphdef):
            return jnp.sum(nnx.merge(graphdef, p, rest, copy=True)(x) ** 2)

        return [jax.value_and_grad(loss)(params, gd) for gd in (gd_x, gd_i)]

    if impl == "winograd":
        assert "batching_dims" in both.lower(params, rest).as_text()  # Winograd's batched products
    (l_x, g_x), (l_i, g_i) = both(params, rest)
    np.testing.assert_allclose(l_i, l_x, rtol=1e-5)
    # Train-mode BN on a tiny batch amplifies float rounding; compare relative to each leaf's scale.
    for a, b in zip(jax.tree.leaves(g_i), jax.tree.leaves(g_x), strict=True):
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-4 * float(jnp.max(jnp.abs(b)))


# ----------------------------------------------------------------------------- Winograd conv


def conv3x3_f64(x, w, cot):
    """3x3, stride 1, pad 1 convolution (NHWC, HWIO) and the gradients of sum(y * cot) with
    respect to x and w, directly in float64 NumPy: the independent reference."""
    x, w, cot = (np.asarray(a, np.float64) for a in (x, w, cot))
    _, h, wd, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = np.zeros(x.shape[:3] + (w.shape[-1],))
    gxp, gw = np.zeros_like(xp), np.zeros_like(w)
    for a in range(3):
        for b in range(3):
            window = xp[:, a : a + h, b : b + wd]
            y += window @ w[a, b]
            gw[a, b] = np.einsum("nijc,nijo->co", window, cot)
            gxp[:, a : a + h, b : b + wd] += cot @ w[a, b].T
    return y, gxp[:, 1:-1, 1:-1], gw


@pytest.mark.parametrize("shape", [(2, 8, 8, 16, 5), (3, 6, 10, 24, 7), (1, 2, 4, 16, 3)])
def test_winograd_conv_matches_float64_reference(shape):
    n, h, w, c_in, c_out = shape
    x, k = images((n, h, w, c_in)), images((3, 3, c_in, c_out), seed=1) / 3
    cot = images((n, h, w, c_out), seed=2)
    conv = functools.partial(
        winograd_conv_general_dilated,
        window_strides=(1, 1),
        padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )

    @jax.jit
    def run(x, k, cot):
        y, vjp_fn = jax.vjp(conv, x, k)  # differentiated: the Winograd forward
        return conv(x, k), y, *vjp_fn(cot)

    y_ref, gx_ref, gw_ref = conv3x3_f64(x, k, cot)
    for got, ref in zip(run(x, k, cot), (y_ref, y_ref, gx_ref, gw_ref), strict=True):
        assert got.shape == ref.shape and got.dtype == jnp.float32
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


WINOGRAD_CASES = [
    # (in shape, kernel shape, stride, padding, dtype, Winograd?)
    ((2, 8, 8, 16), (3, 3, 16, 4), 1, "SAME", jnp.float32, True),
    ((2, 8, 8, 16), (3, 3, 16, 4), 1, ((1, 1), (1, 1)), jnp.float32, True),
    ((2, 8, 8, 8), (3, 3, 8, 4), 1, "SAME", jnp.float32, False),  # too few input channels
    ((2, 8, 8, 16), (3, 3, 16, 4), 2, "SAME", jnp.float32, False),  # strided
    ((2, 7, 8, 16), (3, 3, 16, 4), 1, "SAME", jnp.float32, False),  # odd side
    ((2, 8, 8, 16), (3, 3, 16, 4), 1, "VALID", jnp.float32, False),  # no padding
    ((2, 8, 8, 16), (1, 1, 16, 4), 1, "SAME", jnp.float32, False),  # 1x1
    ((2, 8, 8, 16), (3, 3, 16, 4), 1, "SAME", jnp.bfloat16, False),
]


@pytest.mark.parametrize("x_shape, k_shape, stride, padding, dtype, expect", WINOGRAD_CASES)
def test_winograd_applies_where_it_should(
    monkeypatch, x_shape, k_shape, stride, padding, dtype, expect
):
    """Winograd for 3x3 stride-1 'same' float32 convolutions with enough channels and even sides,
    im2col for the rest ('auto' picks the same on CPU); each is still the right convolution."""
    assert jax.default_backend() == "cpu"
    x, k = images(x_shape).astype(dtype), (images(k_shape, seed=1) / 3).astype(dtype)
    kw = dict(window_strides=(stride, stride), padding=padding)
    kw["dimension_numbers"] = ("NHWC", "HWIO", "NHWC")

    def grads(impl):
        return jax.jit(jax.grad(lambda a, b: jnp.sum(impl(a, b, **kw) ** 2), (0, 1)))

    def uses_winograd(impl):
        text = grads(impl).lower(x, k).as_text()
        assert "convolution" not in text  # Winograd or im2col
        return "batching_dims" in text  # Winograd's 16 batched products

    assert uses_winograd(winograd_conv_general_dilated) == expect
    # 'auto' on CPU: the same on one device; im2col with several (the tests run with 8), where
    # Winograd's weight gradient would be all-reduced in its 16-tap basis.
    assert jax.device_count() > 1 and not uses_winograd(auto_conv_general_dilated)
    with monkeypatch.context() as m:
        m.setattr(jax, "device_count", lambda: 1)
        assert uses_winograd(auto_conv_general_dilated) == expect
    tol = 1e-4 if dtype == jnp.float32 else 0.1
    got, ref = grads(winograd_conv_general_dilated)(x, k), grads(lax.conv_general_dilated)(x, k)
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_allclose(
            np.asarray(a, np.float32),
            np.asarray(b, np.float32),
            rtol=0,
            atol=tol * float(jnp.max(jnp.abs(b.astype(jnp.float32)))),
        )


# ----------------------------------------------------------------------------- heads


def test_byol_projector_structure():
    mlp = build(lambda: ProjectionMLP(16, 32, 8, rngs=nnx.Rngs(0)))
    assert len(mlp.linears) == 2
    assert [n is not None for n in mlp.norms] == [True, False]
    assert mlp.linears[0].bias is None  # a BN follows
    assert mlp.linears[1].bias is not None
    # Linear(16->32, no bias) + BN(32: scale, shift) + Linear(32->8, bias)
    assert count(mlp) == 16 * 32 + 2 * 32 + 32 * 8 + 8
    y = apply(mlp, images((4, 16)))
    assert y.shape == (4, 8) and y.dtype == jnp.float32
    assert bool(jnp.any(y < 0))  # no ReLU at the end
    with pytest.raises(ValueError, match=r"\[B, 16\]"):
        mlp(images((4, 9)))


def test_simclr_v2_projector_structure():
    mlp = build(lambda: ProjectionMLP(16, 32, 8, num_layers=3, last_bn=True, rngs=nnx.Rngs(0)))
    assert len(mlp.linears) == 3 and all(n is not None for n in mlp.norms)
    assert all(lin.bias is None for lin in mlp.linears)
    assert mlp.norms[-1].bias is None and mlp.norms[-1].scale is not None  # center=False
    assert mlp.norms[0].bias is not None
    assert count(mlp) == 16 * 32 + 32 * 32 + 32 * 8 + 2 * 32 + 2 * 32 + 8
    y = apply(mlp, images((6, 16)))
    assert y.shape == (6, 8) and y.dtype == jnp.float32
    # Train-mode BN on the output (scale 1, no shift): each output feature has batch mean 0.
    np.testing.assert_allclose(jnp.mean(y, axis=0), 0.0, atol=1e-5)
    assert bool(jnp.any(y < 0))


def test_simclr_v1_projector_and_predictor():
    mlp = nnx.eval_shape(lambda: ProjectionMLP(16, 32, 8, use_bn=False, rngs=nnx.Rngs(0)))
    assert all(n is None for n in mlp.norms)
    assert count(mlp) == 16 * 32 + 32 + 32 * 8 + 8
    pred = nnx.eval_shape(lambda: Predictor(rngs=nnx.Rngs(0)))
    assert count(pred) == 256 * 4096 + 2 * 4096 + 4096 * 256 + 256  # BYOL: 256 -> 4096 -> 256
    pred = nnx.eval_shape(lambda: Predictor(8, 16, 8, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
    y = nnx.eval_shape(lambda m, x: m(x), pred, jnp.zeros((4, 8)))
    assert y.shape == (4, 8) and y.dtype == jnp.float32


# ----------------------------------------------------------------------------- jit / SPMD


def test_functional_jit_pattern():
    model = tiny_convnet()
    x = images((8, 8, 8, 1))

    @functools.partial(jax.jit, static_argnums=0)
    def forward(graphdef, state, x):
        m = nnx.merge(graphdef, state)
        y = m(x)
        return y, nnx.state(m)

    graphdef, state = nnx.split(model)
    y_jit, new_state = forward(graphdef, state, x)
    assert y_jit.shape == (8, 8) and y_jit.dtype == jnp.float32
    # The running statistics come back in the returned state; the input state is untouched.
    np.testing.assert_array_equal(state["norms"][0]["mean"][...], 0.0)
    assert float(jnp.max(jnp.abs(new_state["norms"][0]["mean"][...]))) > 0
    # Eval mode changes the graphdef (use_running_average is static), so split again.
    nnx.update(model, new_state)
    model.eval()
    graphdef_eval, state = nnx.split(model)
    assert graphdef_eval != graphdef
    y_eval, _ = forward(graphdef_eval, state, x)
    assert float(jnp.max(jnp.abs(y_eval - y_jit))) > 1e-4
    np.testing.assert_allclose(y_eval, apply(model, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "ctor",
    [
        lambda: ResNet18(rngs=nnx.Rngs(0)),
        lambda: ConvNet(rngs=nnx.Rngs(0)),
        lambda: ProjectionMLP(8, 16, 4, num_layers=3, last_bn=True, rngs=nnx.Rngs(0)),
    ],
)
def test_state_is_params_and_batch_stats_only(ctor):
    # Methods split models into (graphdef, params, batch_stats); no other state may hide inside.
    graphdef, params, stats = nnx.split(nnx.eval_shape(ctor), nnx.Param, nnx.BatchStat)
    assert len(jax.tree.leaves(params)) > 0
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(stats))


def test_batchnorm_statistics_are_global_under_spmd_jit():
    """A batch sharded over 8 devices gives the same features and stats as on one device."""
    devices = np.array(jax.devices()[:8])
    assert devices.size == 8
    mesh = Mesh(devices, ("data",))
    model = tiny_convnet()
    x = images((16, 8, 8, 1))
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, x):
        m = nnx.merge(graphdef, state)
        return m(x), nnx.state(m, nnx.BatchStat)

    y1, s1 = forward(state, x)
    xs = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
    state_r = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
    y8, s8 = forward(state_r, xs)
    assert len(y8.sharding.device_set) == 8
    np.testing.assert_allclose(y8, y1, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), s8, s1)


def _grid_pool_reference(x: np.ndarray, grid: int) -> np.ndarray:
    """Adaptive average pooling (PyTorch's bins), float64 loops, cells row-major then channels."""
    b, h, w, c = x.shape
    out = np.zeros((b, grid, grid, c))
    for i in range(grid):
        for j in range(grid):
            r0, r1 = (i * h) // grid, -(-((i + 1) * h) // grid)
            c0, c1 = (j * w) // grid, -(-((j + 1) * w) // grid)
            out[:, i, j] = x[:, r0:r1, c0:c1].astype(np.float64).mean(axis=(1, 2))
    return out.reshape(b, -1)


@pytest.mark.parametrize(
    "hw,grid", [((4, 4), 1), ((4, 4), 2), ((4, 4), 4), ((7, 7), 2), ((7, 5), 3)]
)
def test_grid_pool_matches_adaptive_average_pooling(hw, grid):
    from ssl_jax.models.convnet import grid_pool

    x = np.random.default_rng(0).normal(size=(2, *hw, 3)).astype(np.float32)
    got = np.asarray(jax.jit(grid_pool, static_argnums=1)(jnp.asarray(x), grid))
    np.testing.assert_allclose(got, _grid_pool_reference(x, grid), rtol=1e-6, atol=1e-6)


def test_convnet_output_grid_features_and_minimum_size():
    model = ConvNet(features=(4, 8), strides=(1, 2), output_grid=3, rngs=nnx.Rngs(0))
    assert model.num_features == 8 * 9
    assert model(jnp.zeros((2, 6, 6, 1))).shape == (2, 72)  # 6 -> 6 -> 3: the full 3x3 map
    with pytest.raises(ValueError, match="minimum input size is 5x5.*output_grid=3"):
        model(jnp.zeros((2, 4, 4, 1)))  # 4 -> 2: fewer cells than the grid
    with pytest.raises(ValueError, match="output_grid"):
        ConvNet(output_grid=0, rngs=nnx.Rngs(0))
