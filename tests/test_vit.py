"""Vision Transformers: parameter counts against timm's, the forward pass against a float64 NumPy
transcription of the paper's equations, position-embedding interpolation, the decay policy, and
the errors. (A ViT trains through a method in tests/test_dino.py.)"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssl_jax import config as config_lib
from ssl_jax import models
from ssl_jax.methods.ema import EMATarget
from ssl_jax.models import VisionTransformer, ViTBase, ViTSmall, ViTTiny
from ssl_jax.models.stochastic_depth import DropPath, key_scope


def _count(module) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


@pytest.mark.parametrize(
    "constructor,timm_with_head,width",
    [(ViTTiny, 5_717_416, 192), (ViTSmall, 22_050_664, 384), (ViTBase, 86_567_656, 768)],
)
def test_parameter_counts_equal_timms_without_the_head(constructor, timm_with_head, width):
    """timm's vit_{tiny,small,base}_patch16_224 (1000 classes) minus its head (width x 1000 +
    1000)."""
    vit = nnx.eval_shape(lambda: constructor(rngs=nnx.Rngs(0)))
    assert _count(vit) == timm_with_head - (width * 1000 + 1000)


# ----------------------------------------------------------------------------- NumPy reference


def _layer_norm(x, scale, bias, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def _gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def vit_reference(params, images, *, patch, heads, pool):
    """Dosovitskiy et al. 2021, Eq. 1-4, in float64 with loops over images, heads and tokens:
    z0 = [x_class; x_p E] + E_pos; z' = MSA(LN(z)) + z; z = MLP(LN(z')) + z'; y = LN(z_L)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    out = []
    for img in np.asarray(images, np.float64):
        h, w, c = img.shape
        rows = []
        for i in range(h // patch):
            for j in range(w // patch):
                rows.append(img[i * patch : (i + 1) * patch, j * patch : (j + 1) * patch].ravel())
        x = np.stack(rows) @ p["patch_embed"]["kernel"] + p["patch_embed"]["bias"]
        z = np.concatenate([p["cls_token"][0], x]) + p["pos_embed"][0]
        for blk in p["blocks"].values():
            y = _layer_norm(z, blk["norm1"]["scale"], blk["norm1"]["bias"])
            qkv = y @ blk["attn"]["qkv"]["kernel"] + blk["attn"]["qkv"]["bias"]
            d = z.shape[1]
            dh = d // heads
            heads_out = []
            for hd in range(heads):
                q = qkv[:, hd * dh : (hd + 1) * dh]
                k = qkv[:, d + hd * dh : d + (hd + 1) * dh]
                v = qkv[:, 2 * d + hd * dh : 2 * d + (hd + 1) * dh]
                att = np.zeros((len(z), len(z)))
                for t in range(len(z)):
                    s = q[t] @ k.T / math.sqrt(dh)
                    att[t] = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
                heads_out.append(att @ v)
            msa = np.concatenate(heads_out, axis=1)
            z = z + msa @ blk["attn"]["proj"]["kernel"] + blk["attn"]["proj"]["bias"]
            y = _layer_norm(z, blk["norm2"]["scale"], blk["norm2"]["bias"])
            hidden = _gelu(y @ blk["fc1"]["kernel"] + blk["fc1"]["bias"])
            z = z + hidden @ blk["fc2"]["kernel"] + blk["fc2"]["bias"]
        z = _layer_norm(z, p["norm"]["scale"], p["norm"]["bias"])
        out.append(z[0] if pool == "cls" else z[1:].mean(0))
    return np.stack(out)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_forward_matches_a_float64_transcription_of_the_paper(pool):
    vit = VisionTransformer(
        width=8, depth=2, heads=2, patch_size=4, image_size=8, pool=pool, in_channels=2,
        rngs=nnx.Rngs(0),
    )  # fmt: skip
    images = np.random.default_rng(0).normal(size=(3, 8, 8, 2)).astype(np.float32)
    params = nnx.to_pure_dict(nnx.state(vit, nnx.Param))
    want = vit_reference(params, images, patch=4, heads=2, pool=pool)
    np.testing.assert_allclose(vit(jnp.asarray(images)), want, rtol=2e-4, atol=2e-5)


def test_bfloat16_compute_gives_float32_features_close_to_float32():
    kw = dict(width=16, depth=2, heads=2, patch_size=4, image_size=16, in_channels=1)
    f32 = VisionTransformer(**kw, rngs=nnx.Rngs(0))
    bf16 = VisionTransformer(**kw, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(4, 16, 16, 1)), jnp.float32)
    a, b = f32(x), bf16(x)
    assert b.dtype == jnp.float32
    assert float(jnp.abs(a - b).max()) < 0.1 * float(jnp.abs(a).max())


# ----------------------------------------------------------------------------- other sizes


def test_position_embeddings_interpolate_for_other_grids():
    vit = VisionTransformer(
        width=8, depth=1, heads=2, patch_size=4, image_size=16, in_channels=1, rngs=nnx.Rngs(0)
    )
    native = vit.position_embeddings(4, 4)
    assert native is vit.pos_embed[...]  # the layout it was made for: untouched
    small = vit.position_embeddings(2, 3)
    assert small.shape == (1, 1 + 6, 8)
    np.testing.assert_array_equal(small[:, 0], vit.pos_embed[...][:, 0])  # the class token's
    vit.pos_embed[...] = jnp.full(vit.pos_embed[...].shape, 0.5)
    np.testing.assert_allclose(vit.position_embeddings(6, 6), 0.5, rtol=1e-6)  # constant stays
    assert vit(jnp.zeros((2, 8, 12, 1))).shape == (2, 8)  # a local crop


def test_inputs_that_are_not_whole_patches_are_an_error_naming_the_fix():
    vit = VisionTransformer(
        width=8, depth=1, heads=2, patch_size=4, image_size=16, in_channels=1, rngs=nnx.Rngs(0)
    )
    with pytest.raises(ValueError, match="multiple of 4"):
        vit(jnp.zeros((1, 14, 16, 1)))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        VisionTransformer(width=8, depth=1, heads=2, patch_size=5, image_size=16, rngs=nnx.Rngs(0))
    c = config_lib.base_config()
    c.model.vit.patch_size = 5
    with pytest.raises(ValueError, match="config.model.vit.image_size=224 is not a multiple"):
        config_lib.validate(c)


def test_no_weight_decay_on_position_embeddings_class_token_norms_and_biases():
    vit = VisionTransformer(
        width=8, depth=1, heads=2, patch_size=4, image_size=8, in_channels=1, rngs=nnx.Rngs(0)
    )
    mask = models.decay_mask_for(vit)(nnx.state(vit, nnx.Param))
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
    decayed = {k for k, v in flat.items() if v}
    assert decayed and all("kernel" in k for k in decayed)
    assert all(not v for k, v in flat.items() if "pos_embed" in k or "cls_token" in k)


# ----------------------------------------------------------------------------- drop-path


def test_drop_path_drops_whole_samples_and_rescales_the_kept_ones():
    drop = DropPath(0.25)
    x = jnp.ones((4000, 3, 2))
    with key_scope(jax.random.key(0)):
        y, y2 = np.asarray(drop(x)), np.asarray(drop(x))
    rows = y.reshape(4000, -1)
    assert set(np.unique(rows)) <= {0.0, np.float32(1 / 0.75)}
    assert (rows == rows[:, :1]).all()  # a sample is dropped or kept as a whole
    dropped = (rows[:, 0] == 0).mean()
    assert abs(dropped - 0.25) < 4 * np.sqrt(0.25 * 0.75 / 4000)
    assert not np.array_equal(y, y2)  # two calls in one step draw two masks
    with key_scope(jax.random.key(0)):
        np.testing.assert_array_equal(np.asarray(drop(x)), y)  # the same key, the same mask


def test_vit_drop_path_rates_rise_linearly_and_are_training_only():
    kw = dict(width=8, depth=4, heads=2, patch_size=4, image_size=8, in_channels=1)
    vit = VisionTransformer(**kw, drop_path=0.3, rngs=nnx.Rngs(0))
    rates = [block.drop_path.rate for block in vit.blocks]
    np.testing.assert_allclose(rates, np.linspace(0, 0.3, 4))  # timm's / DINO's schedule
    x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 8, 8, 1)), jnp.float32)
    with pytest.raises(RuntimeError, match="key_scope"):
        vit(x)  # train mode without a key: an error, never a silent no-op
    with key_scope(jax.random.key(1)):
        trained = vit(x)
    plain = VisionTransformer(**kw, rngs=nnx.Rngs(0))
    assert float(jnp.abs(trained - plain(x)).max()) > 1e-3  # some branches were dropped
    target = EMATarget.of(vit).module()  # a teacher / momentum encoder: no drop-path
    np.testing.assert_allclose(target(x), plain(x), rtol=1e-6)
    vit.eval()
    np.testing.assert_allclose(vit(x), plain(x), rtol=1e-6)
