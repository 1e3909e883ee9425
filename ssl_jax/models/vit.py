"""Vision Transformers (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words",
arXiv:2010.11929), laid out as timm's ``VisionTransformer`` and DINO's ``vit_*``.

Pre-norm blocks (LayerNorm -> multi-head self-attention -> residual, LayerNorm -> MLP(4x, GELU)
-> residual), a class token and learned position embeddings, a final LayerNorm, no classifier
head. With 3 input channels, patch 16 and ``image_size=224`` the parameter counts equal timm's
``vit_{tiny,small,base}_patch16_224`` without the head: ViT-Ti 5,524,416, ViT-S 21,665,664,
ViT-B 85,798,656 (ViT-L 303,301,632).

- The patch embedding is timm's stride-``p`` ``p x p`` convolution written as a matmul over the
  flattened patches (the same parameters, ``p * p * C`` inputs per patch, row-major over
  ``(y, x, c)``).
- Position embeddings are laid out for ``image_size``; other input sizes (DINO's local crops)
  get them resized over the patch grid with ``jax.image.resize(..., 'bicubic')`` (the class
  token's embedding is kept). DINO's code uses PyTorch's bicubic, whose cubic kernel has
  ``a = -0.75`` where JAX's has ``a = -0.5``: the interpolated embeddings differ slightly.
- Attention is ``jax.nn.dot_product_attention``: XLA's fused attention, cuDNN's on GPU when the
  shapes and dtype allow it.
- Features: ``pool='cls'`` the final-normed class token (DINO's and MoCo v3's representation);
  ``pool='mean'`` the mean of the final-normed patch tokens.
- No weight decay on the position embeddings and the class token (``NO_WEIGHT_DECAY``), nor on
  norms and biases (1-D), as DINO and timm.
- Initialisation as DINO's: truncated normal (std 0.02) for the linear layers, the position
  embeddings and the class token; zero biases; LayerNorm scales 1.

- Drop-path (stochastic depth, ``drop_path``): the rate rises linearly over the blocks from 0
  to ``drop_path`` (timm's and DINO's schedule); each block drops its attention and its MLP
  branch per sample (:class:`ssl_jax.models.stochastic_depth.DropPath`). Training only: the
  train step supplies the key, evaluation and EMA targets/teachers run without it.

Not here yet: layer scale.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ssl_jax.models.layers import check_image_input
from ssl_jax.models.registry import ENCODERS, EncoderEntry
from ssl_jax.models.stochastic_depth import DropPath

POOLS = ("cls", "mean")
LN_EPSILON = 1e-6  # timm's and DINO's
trunc_normal = nnx.initializers.truncated_normal(stddev=0.02)

# name: (width, depth, heads), as timm and DINO define them.
SIZES = {
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
}


def _linear(d_in: int, d_out: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        d_in, d_out, dtype=dtype, param_dtype=param_dtype, kernel_init=trunc_normal, rngs=rngs
    )


def _layer_norm(dim: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(dim, epsilon=LN_EPSILON, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class Attention(nnx.Module):
    """Multi-head self-attention: ``[B, T, D] -> [B, T, D]`` (one fused qkv projection)."""

    def __init__(self, dim: int, heads: int, **kw: Any):
        self.heads = heads
        self.qkv = _linear(dim, 3 * dim, **kw)
        self.proj = _linear(dim, dim, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        q, k, v = jnp.split(self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads), 3, axis=2)
        y = jax.nn.dot_product_attention(q[:, :, 0], k[:, :, 0], v[:, :, 0])  # [B, T, H, D/H]
        return self.proj(y.reshape(b, t, d))


class Block(nnx.Module):
    """A pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(
        self, dim: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0, **kw: Any
    ):
        self.norm1 = _layer_norm(dim, **kw)
        self.attn = Attention(dim, heads, **kw)
        self.norm2 = _layer_norm(dim, **kw)
        hidden = int(dim * mlp_ratio)
        self.fc1 = _linear(dim, hidden, **kw)
        self.fc2 = _linear(hidden, dim, **kw)
        self.drop_path = DropPath(drop_path)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.fc2(nnx.gelu(self.fc1(self.norm2(x)), approximate=False)))


class VisionTransformer(nnx.Module):
    """A ViT encoder: ``[B, H, W, in_channels]`` images -> ``[B, width]`` float32 features.

    Args:
      width, depth, heads: the token width, the number of blocks and of attention heads.
      patch_size: side of the square patches; H and W must be multiples of it.
      image_size: the input side the position embeddings are laid out for (other sides of
        multiples of ``patch_size`` interpolate them).
      pool: ``'cls'`` (the class token) or ``'mean'`` (the mean of the patch tokens), after the
        final LayerNorm.
      in_channels: channels of the input images.
      mlp_ratio: the MLP's hidden width over ``width``.
      drop_path: the stochastic-depth rate of the last block (linear from 0 over the blocks).
      dtype: compute dtype (bfloat16 for speed); parameters stay in ``param_dtype`` and the
        features are float32.
      conv_impl: accepted for the encoder interface and unused (there is no convolution).
      rngs: NNX random streams (``params``).

    Example:
      >>> from flax import nnx
      >>> import jax.numpy as jnp
      >>> vit = ViTTiny(patch_size=4, image_size=28, in_channels=1, rngs=nnx.Rngs(0))
      >>> vit(jnp.zeros((2, 28, 28, 1))).shape, vit(jnp.zeros((2, 12, 12, 1))).shape
      ((2, 192), (2, 192))
    """

    NO_WEIGHT_DECAY = ("pos_embed", "cls_token")

    def __init__(
        self,
        *,
        width: int,
        depth: int,
        heads: int,
        patch_size: int = 16,
        image_size: int = 224,
        pool: str = "cls",
        in_channels: int = 3,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        conv_impl: str = "auto",
        rngs: nnx.Rngs,
    ):
        del conv_impl
        if width % heads:
            raise ValueError(f"width={width} must be a multiple of heads={heads}.")
        if pool not in POOLS:
            raise ValueError(f"pool={pool!r} is not one of {POOLS}.")
        if patch_size < 1 or image_size % patch_size:
            raise ValueError(
                f"image_size={image_size} must be a multiple of patch_size={patch_size}."
            )
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.patch_size, self.in_channels, self.pool, self.dtype = (
            patch_size,
            in_channels,
            pool,
            dtype,
        )
        self.grid = image_size // patch_size
        self.num_features = width
        self.min_input_size = patch_size
        self.patch_embed = _linear(patch_size * patch_size * in_channels, width, **kw)
        self.cls_token = nnx.Param(trunc_normal(rngs.params(), (1, 1, width), param_dtype))
        self.pos_embed = nnx.Param(
            trunc_normal(rngs.params(), (1, 1 + self.grid**2, width), param_dtype)
        )
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nnx.List([Block(width, heads, mlp_ratio, rate, **kw) for rate in rates])
        self.norm = _layer_norm(width, **kw)

    def patchify(self, x: jax.Array) -> jax.Array:
        """``[B, H, W, C] -> [B, (H/p) * (W/p), p * p * C]``, patches in row-major order."""
        b, h, w, c = x.shape
        p = self.patch_size
        x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(b, (h // p) * (w // p), p * p * c)

    def position_embeddings(self, gh: int, gw: int) -> jax.Array:
        """``[1, 1 + gh * gw, width]``: the class token's and the patch grid's, resized (bicubic)
        from the ``grid x grid`` layout when the grid differs."""
        pos = self.pos_embed[...]
        if (gh, gw) == (self.grid, self.grid):
            return pos
        patches = pos[0, 1:].reshape(self.grid, self.grid, -1)
        patches = jax.image.resize(patches, (gh, gw, patches.shape[-1]), "bicubic")
        return jnp.concatenate([pos[:, :1], patches.reshape(1, gh * gw, -1)], axis=1)

    def __call__(self, x: jax.Array) -> jax.Array:
        check_image_input(x, in_channels=self.in_channels, min_size=self.min_input_size)
        b, h, w, _ = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(
                f"Input of {h}x{w} pixels is not a whole number of {p}x{p} patches: crop or "
                f"resize it to a multiple of {p} (or choose another patch_size)."
            )
        tokens = self.patch_embed(self.patchify(jnp.asarray(x, self.dtype)))
        cls = jnp.broadcast_to(self.cls_token[...], (b, 1, tokens.shape[-1])).astype(tokens.dtype)
        tokens = jnp.concatenate([cls, tokens], axis=1)
        tokens = tokens + self.position_embeddings(h // p, w // p).astype(tokens.dtype)
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens).astype(jnp.float32)
        return tokens[:, 0] if self.pool == "cls" else jnp.mean(tokens[:, 1:], axis=1)


def _vit(name: str) -> Any:
    width, depth, heads = SIZES[name]
    return functools.partial(VisionTransformer, width=width, depth=depth, heads=heads)


ViTTiny, ViTSmall, ViTBase, ViTLarge = (_vit(n) for n in SIZES)


@dataclasses.dataclass(frozen=True)
class ViTSettings:
    """The ViTs' settings: ``config.model.vit.*``."""

    patch_size: int = 16  # 16 or 8 at 224 px; 4 or 2 for 28-32 px images
    image_size: int = 224  # the side the position embeddings are laid out for (global crops)
    pool: str = "cls"  # cls (the class token) | mean (the patch tokens' mean)
    drop_path: float = 0.0  # stochastic depth of the last block (DINO's ViT-S: 0.1)

    def validate(self) -> None:
        if not (self.patch_size >= 1 and self.image_size >= 1):
            raise ValueError(
                f"config.model.vit.patch_size={self.patch_size!r} and image_size="
                f"{self.image_size!r} are invalid: both must be >= 1."
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"config.model.vit.image_size={self.image_size} is not a multiple of "
                f"config.model.vit.patch_size={self.patch_size}: set one so that it is."
            )
        if self.pool not in POOLS:
            raise ValueError(f"config.model.vit.pool={self.pool!r} is invalid: use cls or mean.")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(
                f"config.model.vit.drop_path={self.drop_path!r} is invalid: it must be in [0, 1)."
            )

    def kwargs(self) -> dict[str, Any]:
        return dict(
            patch_size=int(self.patch_size),
            image_size=int(self.image_size),
            pool=self.pool,
            drop_path=float(self.drop_path),
        )


for _name in SIZES:
    ENCODERS.add(_name, EncoderEntry(block="vit", settings=ViTSettings, constructor=_vit(_name)))
