"""Self-supervised methods, one module each, registered by name in :data:`METHODS`.

A method module provides (see simclr.py, the shortest):

    Hparams                      a frozen dataclass of its settings, read from ``config.<name>``
                                 (defaults, one comment per field, ``validate()``)
    LOSS_SCOPES                  the named scopes of its losses (profiling reads them)
    init_state(config, key)      -> TrainState (methods/state.py), at step 0
    train_step(state, batch, key) -> (state, metrics): pure, jitted once, state donated
    encoder_of(state)            -> the trained encoder (an nnx.Module in eval mode)
    BATCH_KEYS (optional)        the batch entries the step reads (default ``("image",)``;
                                 ``("image", "label")`` makes the run need a labelled dataset)

Adding a method: its file here, one line below, its loss in ``ssl_jax/losses/`` and a recipe in
``configs/``. Everything else (config schema and validation, training, checkpoints, evaluation,
profiling) reads the registry.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any

from ssl_jax.registry import Registry

METHODS: Registry[ModuleType] = Registry("method", field="config.method")
METHODS.add("simclr", "ssl_jax.methods.simclr")
METHODS.add("byol", "ssl_jax.methods.byol")
METHODS.add("simsiam", "ssl_jax.methods.simsiam")
METHODS.add("barlow_twins", "ssl_jax.methods.barlow_twins")
METHODS.add("vicreg", "ssl_jax.methods.vicreg")
METHODS.add("moco_v3", "ssl_jax.methods.moco_v3")
METHODS.add("supcon", "ssl_jax.methods.supcon")
METHODS.add("dino", "ssl_jax.methods.dino")


def get_method(name: str) -> ModuleType:
    """The method module named by ``config.method``."""
    return METHODS.get(name)


def batch_keys(method: ModuleType) -> tuple[str, ...]:
    """The entries of the batch that ``method``'s train step reads (its ``BATCH_KEYS``): the train
    loop ships only these to the devices."""
    return tuple(getattr(method, "BATCH_KEYS", ("image",)))


def hparams_fields(name: str) -> dict[str, Any]:
    """The default settings of method ``name`` (its ``config.<name>`` block)."""
    return dataclasses.asdict(get_method(name).Hparams())


def validate_hparams(config: Any) -> None:
    """Check every method's settings block (a ValueError naming the field)."""
    for name, method in METHODS.items():
        method.Hparams(**config[name]).validate()
