"""Which parameters get weight decay (and LARS trust-ratio adaptation): a policy of the encoder.

The default is the SimCLR/BYOL rule: kernels (``ndim > 1``) decay; biases and normalisation
scales/offsets (1-D) do not. A module that holds parameters that must not decay although they are
matrices (a ViT's position embedding and class token) lists their names in a class attribute
``NO_WEIGHT_DECAY``; :func:`decay_mask_for` collects those names from every submodule.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import nnx


def _path_names(path: tuple) -> set[str]:
    names = set()
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                names.add(str(getattr(key, attr)))
                break
    return names


@dataclasses.dataclass(frozen=True)
class DecayMask:
    """``mask(params) -> tree of bools``: True where weight decay applies. A parameter decays
    when it has ``ndim > 1`` and no name on its path is in ``exempt``. Hashable, so optimizers
    built from equal masks can be cached and shared by compilations."""

    exempt: frozenset[str] = frozenset()

    def __call__(self, params: Any) -> Any:
        return jax.tree_util.tree_map_with_path(
            lambda path, p: p.ndim > 1 and not (_path_names(path) & self.exempt), params
        )


def decay_mask_for(module: nnx.Module) -> DecayMask:
    """The weight-decay mask of ``module``: the names every submodule lists in its class
    attribute ``NO_WEIGHT_DECAY`` are exempt, besides every parameter with ``ndim <= 1``."""
    exempt: set[str] = set()
    for _, sub in nnx.iter_graph(module):
        exempt.update(getattr(type(sub), "NO_WEIGHT_DECAY", ()))
    return DecayMask(frozenset(exempt))
