"""Which parameters get weight decay (and LARS trust-ratio adaptation): a policy of the encoder.

The default is the SimCLR/BYOL rule: kernels (``ndim > 1``) decay; biases and normalisation
scales/offsets (1-D) do not. A module that holds parameters that must not decay although they are
matrices (a ViT's position embedding and class token) lists their names in a class attribute
``NO_WEIGHT_DECAY``; :func:`decay_mask_for` collects those names from every submodule.
"""

from __future__ import annotations

from collections.abc import Callable
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


def decay_mask_for(module: nnx.Module) -> Callable[[Any], Any]:
    """``mask(params) -> tree of bools``: True where weight decay applies. A parameter decays
    when it has ``ndim > 1`` and no name on its path is in a submodule's ``NO_WEIGHT_DECAY``."""
    exempt: set[str] = set()
    for _, sub in nnx.iter_graph(module):
        exempt.update(getattr(type(sub), "NO_WEIGHT_DECAY", ()))

    def mask(params: Any) -> Any:
        return jax.tree_util.tree_map_with_path(
            lambda path, p: p.ndim > 1 and not (_path_names(path) & exempt), params
        )

    return mask
