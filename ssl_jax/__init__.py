"""ssl_jax: self-supervised pretraining (SimCLR, BYOL) in JAX/Flax."""

__version__ = "0.1.0"
