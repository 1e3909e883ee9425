"""Projection and prediction MLP heads for SimCLR and BYOL.

* BYOL (Grill et al. 2020, arXiv:2006.07733): projector and predictor are both
  ``Linear(4096) + BN + ReLU + Linear(256)``:
  ``ProjectionMLP(2048, 4096, 256)`` and ``Predictor(256, 4096, 256)``.
* SimCLR v2 (Chen et al. 2020, arXiv:2006.10029): a 3-layer projector with BatchNorm after every
  layer, the last one without ReLU and without BN shift (``center=False`` in the reference code):
  ``ProjectionMLP(2048, 2048, 128, num_layers=3, last_bn=True)``.
* SimCLR v1 (arXiv:2002.05709): ``ProjectionMLP(2048, 2048, 128, use_bn=False)``.

A Linear followed by BatchNorm has no bias (the BN shift makes it redundant); the final Linear has
a bias only when no BN follows it. (BYOL's Haiku code omits the final bias; with a linear bias the
head has ``out_features`` more parameters and is otherwise the same.)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ssl_jax.models.layers import make_batch_norm


class ProjectionMLP(nnx.Module):
    """MLP head: ``[B, in_features] -> [B, out_features]`` (float32).

    Layers: ``num_layers - 1`` times (Linear(hidden_features) [+ BN] + ReLU), then
    Linear(out_features) [+ BN if ``last_bn``], with no ReLU at the end.

    Args:
      in_features: input feature size (the encoder's ``num_features``).
      hidden_features: width of the hidden layers.
      out_features: output size.
      num_layers: number of Linear layers (>= 1): 2 for SimCLR v1 / BYOL, 3 for SimCLR v2.
      use_bn: BatchNorm after each hidden Linear.
      last_bn: BatchNorm (scale only, no shift) after the final Linear, as in SimCLR v2.
      dtype: compute dtype; parameters and BN statistics stay in ``param_dtype``; output float32.
      param_dtype: storage dtype of parameters.
      rngs: NNX random streams.

    Attributes:
      linears: the ``num_layers`` ``nnx.Linear`` layers.
      norms: the BatchNorm after each Linear, or ``None`` where there is none.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int,
        *,
        num_layers: int = 2,
        use_bn: bool = True,
        last_bn: bool = False,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}.")
        self.in_features = in_features
        self.out_features = out_features
        self.num_layers = num_layers
        self.dtype = dtype
        linears, norms = [], []
        d_in = in_features
        for i in range(num_layers):
            last = i == num_layers - 1
            d_out = out_features if last else hidden_features
            bn = last_bn if last else use_bn
            linears.append(
                nnx.Linear(
                    d_in,
                    d_out,
                    use_bias=not bn,
                    dtype=dtype,
                    param_dtype=param_dtype,
                    rngs=rngs,
                )
            )
            norms.append(
                make_batch_norm(
                    d_out,
                    dtype=dtype,
                    param_dtype=param_dtype,
                    use_bias=not last,  # SimCLR v2: the last BN has no shift (center=False)
                    rngs=rngs,
                )
                if bn
                else None
            )
            d_in = d_out
        self.linears = nnx.List(linears)
        self.norms = nnx.List(norms)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x``: ``[B, in_features]`` -> ``[B, out_features]`` float32."""
        if x.ndim != 2 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"Expected input of shape [B, {self.in_features}], got {tuple(x.shape)}."
            )
        x = jnp.asarray(x, self.dtype)
        for i, (linear, norm) in enumerate(zip(self.linears, self.norms, strict=True)):
            x = linear(x)
            if norm is not None:
                x = norm(x)
            if i < self.num_layers - 1:
                x = nnx.relu(x)
        return x.astype(jnp.float32)


class Predictor(ProjectionMLP):
    """BYOL's predictor: ``Linear(hidden) + BN + ReLU + Linear(out)``, ``[B, in] -> [B, out]``.

    Same shape as BYOL's projector (arXiv:2006.07733, Sec. 3.3): defaults 256 -> 4096 -> 256.
    """

    def __init__(
        self,
        in_features: int = 256,
        hidden_features: int = 4096,
        out_features: int = 256,
        *,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        super().__init__(
            in_features,
            hidden_features,
            out_features,
            num_layers=2,
            use_bn=True,
            last_bn=False,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
