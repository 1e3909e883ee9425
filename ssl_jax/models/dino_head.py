"""DINO's projection head (Caron et al. 2021, arXiv:2104.14294, sec. 3.1 and the official
``DINOHead``): an MLP to a bottleneck, L2 normalisation, and a weight-normalised linear layer
without bias to ``K`` prototypes.

    head = DINOHead(192, 4096, rngs=nnx.Rngs(0))   # [B, 192] -> [B, 4096] logits (float32)

The MLP is ``num_layers`` Linear layers (width ``hidden_features``, GELU between them; BatchNorm
before each GELU only with ``use_bn``, the official ``--use_bn_in_head``, off by default) ending
at ``bottleneck``. The last layer is
``W = g * v / ||v||`` per output unit (PyTorch's ``weight_norm``); with ``norm_last_layer=True``
(the default, as DINO's ViT-S recipes) ``g`` is fixed at 1 and there is no ``scale`` parameter.
Its parameters live under ``last_layer``: DINO freezes them during the first epoch (see
:mod:`ssl_jax.methods.dino`). Initialisation: truncated normal (std 0.02) weights, zero biases.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ssl_jax.models.layers import make_batch_norm

trunc_normal = nnx.initializers.truncated_normal(stddev=0.02)
_NORM_EPS = 1e-12  # torch.nn.functional.normalize's


def _l2_normalize(x: jax.Array, axis: int) -> jax.Array:
    norm = jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True))
    return x / jnp.maximum(norm, _NORM_EPS)


class WeightNormLinear(nnx.Module):
    """``[B, in] -> [B, out]``: ``x @ (v / ||v||_columns) * g``, no bias (``g`` fixed at 1 when
    ``learn_scale=False``)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        learn_scale: bool,
        param_dtype: Any,
        rngs: nnx.Rngs,
    ):
        self.direction = nnx.Param(
            trunc_normal(rngs.params(), (in_features, out_features), param_dtype)
        )
        self.scale = nnx.Param(jnp.ones((out_features,), param_dtype)) if learn_scale else None

    def __call__(self, x: jax.Array) -> jax.Array:
        w = _l2_normalize(self.direction[...], axis=0).astype(x.dtype)
        y = x @ w
        return y if self.scale is None else y * self.scale[...].astype(x.dtype)


class DINOHead(nnx.Module):
    """DINO's head: ``[B, in_features] -> [B, out_features]`` float32 logits.

    Args:
      in_features: the encoder's feature size.
      out_features: ``K``, the number of prototypes (65,536 in the paper's ImageNet recipes).
      hidden_features: width of the MLP's hidden layers (2048).
      bottleneck: the MLP's output width, L2-normalised before the last layer (256).
      num_layers: Linear layers in the MLP (3).
      norm_last_layer: fix the last layer's weight-norm scale at 1 (True).
      use_bn: BatchNorm after each hidden Linear (the official ``--use_bn_in_head``; False).
      dtype: compute dtype; param_dtype: storage dtype of the parameters.
      rngs: NNX random streams (``params``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int = 65536,
        *,
        hidden_features: int = 2048,
        bottleneck: int = 256,
        num_layers: int = 3,
        norm_last_layer: bool = True,
        use_bn: bool = False,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}.")
        widths = [in_features] + [hidden_features] * (num_layers - 1) + [bottleneck]
        self.mlp = nnx.List(
            [
                nnx.Linear(
                    a, b, dtype=dtype, param_dtype=param_dtype, kernel_init=trunc_normal, rngs=rngs
                )
                for a, b in zip(widths[:-1], widths[1:], strict=True)
            ]
        )
        hidden = widths[1:-1]
        self.norms = nnx.List(
            [
                make_batch_norm(w, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                for w in (hidden if use_bn else [])
            ]
        )
        self.last_layer = WeightNormLinear(
            bottleneck,
            out_features,
            learn_scale=not norm_last_layer,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.in_features, self.dtype = in_features, dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 2 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"Expected input of shape [B, {self.in_features}], got {tuple(x.shape)}."
            )
        x = jnp.asarray(x, self.dtype)
        for i, linear in enumerate(self.mlp):
            x = linear(x)
            if i < len(self.mlp) - 1:
                if self.norms:
                    x = self.norms[i](x)
                x = nnx.gelu(x, approximate=False)
        x = _l2_normalize(x.astype(jnp.float32), axis=-1)
        return self.last_layer(x.astype(self.dtype)).astype(jnp.float32)
