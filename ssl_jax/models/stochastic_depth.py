"""Stochastic depth ("drop-path", Huang et al. 2016, "Deep Networks with Stochastic Depth",
arXiv:1603.09382), as timm's ``DropPath`` and DINO's ``drop_path``: in training, each sample's
residual branch is dropped with probability ``rate`` and the kept ones are scaled by
``1 / (1 - rate)``.

The randomness comes from a key scope rather than from the modules (the train state holds no
RNG state): the jitted train step (:func:`ssl_jax.run.jit_train_step`) runs the method inside
:func:`key_scope` with a fresh key per step, and each :class:`DropPath` call draws its mask from
that key folded with a call counter (two forwards in one step draw different masks). A
:class:`DropPath` is the identity when ``rate`` is 0, when it is ``deterministic`` (``.eval()``,
an EMA target or teacher: :meth:`ssl_jax.methods.ema.EMATarget.module`), and fails with a clear
error in train mode outside a key scope.

Example:
  >>> import jax, jax.numpy as jnp
  >>> drop = DropPath(0.5)
  >>> with key_scope(jax.random.key(0)):
  ...     y = drop(jnp.ones((8, 3, 2)))
  >>> sorted(set(float(v) for v in y[:, 0, 0]))  # dropped rows 0, kept rows x 2
  [0.0, 2.0]
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["DropPath", "key_scope"]

_SCOPE: contextvars.ContextVar[list | None] = contextvars.ContextVar("drop_path_key", default=None)


@contextlib.contextmanager
def key_scope(key: jax.Array) -> Iterator[None]:
    """Within the block, training-mode :class:`DropPath` layers draw their masks from ``key``."""
    token = _SCOPE.set([key, 0])
    try:
        yield
    finally:
        _SCOPE.reset(token)


def _next_key() -> jax.Array | None:
    scope = _SCOPE.get()
    if scope is None:
        return None
    scope[1] += 1
    return jax.random.fold_in(scope[0], scope[1])


class DropPath(nnx.Module):
    """Per-sample residual-branch dropout: ``[B, ...] -> [B, ...]``.

    Args:
      rate: the probability of dropping a sample's branch, in [0, 1).
      deterministic: the identity when True (``module.eval()`` sets it).
    """

    def __init__(self, rate: float = 0.0, *, deterministic: bool = False):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop_path rate={rate!r} is invalid: it must be in [0, 1).")
        self.rate, self.deterministic = float(rate), deterministic

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.rate == 0.0 or self.deterministic:
            return x
        key = _next_key()
        if key is None:
            raise RuntimeError(
                f"DropPath(rate={self.rate}) in train mode needs a key: call the model inside "
                "ssl_jax.models.stochastic_depth.key_scope(key), or .eval() it."
            )
        keep = jax.random.bernoulli(key, 1.0 - self.rate, (x.shape[0],) + (1,) * (x.ndim - 1))
        return jnp.where(keep, x / (1.0 - self.rate), 0.0).astype(x.dtype)
