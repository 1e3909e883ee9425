"""Self-supervised methods. Each module has a state type, ``init_state(config, key)`` and a pure
``train_step(state, batch, key) -> (state, metrics)``, plus ``encoder_of(state)``."""

from types import ModuleType

from ssl_jax.methods import byol, simclr

METHODS: dict[str, ModuleType] = {"simclr": simclr, "byol": byol}


def get_method(name: str) -> ModuleType:
    """The method module for ``config.method``."""
    if name not in METHODS:
        raise ValueError(f"config.method={name!r} is not one of {sorted(METHODS)}.")
    return METHODS[name]
