"""A method written outside ssl_jax, as a user would write one: this file and one registration
(``METHODS.add("toy", "toy_method")``) are all it takes (tests/test_plugins.py).

The loss pulls the two views' L2-normalised projections together (mean squared distance): no
negatives and no target, so it collapses -- it is plumbing, not a method to train with.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from ssl_jax.methods import network as network_lib
from ssl_jax.methods.state import TrainState, embedding_std, make_views, step_key

LOSS_SCOPES = ("toy_loss",)


@dataclasses.dataclass(frozen=True)
class Hparams:
    """The toy method's settings: ``config.toy.*``."""

    weight: float = 1.0  # the loss's scale

    def validate(self) -> None:
        if not self.weight > 0:
            raise ValueError(f"config.toy.weight={self.weight!r} is invalid: must be > 0.")


def toy_loss(z1: jax.Array, z2: jax.Array) -> jax.Array:
    with jax.named_scope("toy_loss"):
        n1 = z1 / jnp.linalg.norm(z1, axis=-1, keepdims=True)
        n2 = z2 / jnp.linalg.norm(z2, axis=-1, keepdims=True)
        return jnp.mean(jnp.sum((n1 - n2) ** 2, axis=-1))


def init_state(config, key):
    network = network_lib.build_network(config, nnx.Rngs(params=key))
    network.train()
    tx, schedule = network_lib.optimizer_for(config, network)
    settings = network_lib.step_settings(config)
    return TrainState.create(
        network, tx=tx, schedule=schedule, settings=settings, hparams=Hparams(**config.toy)
    )


def train_step(state, batch, key):
    x1, x2 = make_views(batch, step_key(key, state.step), state.settings)

    def loss_fn(params):
        network = state.module(params, copy=True)
        _, z1 = network(x1)
        _, z2 = network(x2)
        loss = state.hparams.weight * toy_loss(z1, z2)
        return loss, (nnx.state(network, nnx.BatchStat), z1)

    (loss, (batch_stats, z1)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state, metrics = state.apply_gradients(grads, batch_stats=batch_stats)
    metrics.update(loss=loss, embed_std=embedding_std(z1), learning_rate=state.schedule(state.step))
    return new_state, metrics


def encoder_of(state):
    network = state.module()
    network.eval()
    return network.encoder
