"""Optimizers and learning-rate schedules built from a config.

SimCLR (Chen et al. 2020, arXiv:2002.05709, appendix B.1) and BYOL (Grill et al. 2020,
arXiv:2006.07733, appendix C) both train with LARS, excluding biases and BatchNorm parameters
from weight decay and from the trust-ratio adaptation, under a linear warmup followed by cosine
decay. The learning rate scales with the global batch: ``base_lr * B / 256`` (linear) or, for
SimCLR at small batch, ``base_lr * sqrt(B)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("lars", "sgd", "adamw")
LR_SCALINGS = ("linear", "sqrt", "none")


def scaled_learning_rate(base_lr: float, global_batch_size: int, scaling: str) -> float:
    """The peak learning rate for a global batch.

    Args:
      base_lr: the learning rate quoted by the recipe.
      global_batch_size: images per step over all devices and processes.
      scaling: ``'linear'`` (``base_lr * B / 256``, Goyal et al. 2017), ``'sqrt'``
        (``base_lr * sqrt(B)``, SimCLR's rule for small batches) or ``'none'``.
    """
    if scaling == "linear":
        return base_lr * global_batch_size / 256.0
    if scaling == "sqrt":
        return base_lr * math.sqrt(global_batch_size)
    if scaling == "none":
        return base_lr
    raise ValueError(f"config.lr_scaling={scaling!r} is not one of {LR_SCALINGS}.")


def warmup_cosine(peak_lr: float, total_steps: int, warmup_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to ``peak_lr`` over ``warmup_steps``, then cosine decay to 0."""
    warmup_steps = min(warmup_steps, total_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak_lr,
        warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1),
        end_value=0.0,
    )


def decay_mask(params: Any) -> Any:
    """True for the weights that get weight decay and LARS adaptation: kernels (ndim > 1).

    Biases and BatchNorm scales/offsets are 1-D and are excluded, as SimCLR and BYOL do.
    """
    return jax.tree.map(lambda p: p.ndim > 1, params)


@dataclasses.dataclass(frozen=True)
class LrGroup:
    """Parameters that train at their own learning rate, within one optimizer.

    ``select(params)`` is a tree of bools, True for the group's parameters (None: those the decay
    mask exempts from weight decay: biases, norms, ...). They get the run's
    schedule times ``scale``, or with ``constant=True`` the PEAK learning rate times ``scale`` at
    every step (no warm-up, no decay). Examples: SimSiam's fixed predictor lr (Chen & He 2021,
    sec. 4.2, Table 1; ``LrGroup(TopLevel("predictor"), constant=True)``); Barlow Twins' biases
    and BatchNorm parameters at 0.0048 / 0.2 of the weights' lr (Zbontar et al. 2021, sec. 4;
    ``LrGroup(None, scale=0.024)``).
    Weight decay and LARS adaptation inside the group follow the run's decay mask as elsewhere.
    """

    select: Callable[[Any], Any] | None
    scale: float = 1.0
    constant: bool = False


@dataclasses.dataclass(frozen=True)
class TopLevel:
    """``select(params)``: True for the parameters under the top-level entry ``name`` (e.g. the
    ``predictor`` of a network). Hashable."""

    name: str

    def __call__(self, params: Any) -> Any:
        return jax.tree_util.tree_map_with_path(
            lambda path, _: getattr(path[0], "key", None) == self.name, params
        )


def make_optimizer(
    config: Any,
    *,
    total_steps: int,
    global_batch_size: int,
    decay_mask: Callable[[Any], Any] = decay_mask,
    group: LrGroup | None = None,
) -> tuple[optax.GradientTransformation, Callable[[Any], Any]]:
    """Build ``(optimizer, schedule)`` from the config fields.

    ``decay_mask(params)`` says which parameters get weight decay and LARS adaptation (the
    encoder's policy, :func:`ssl_jax.models.decay_mask_for`; default: ``ndim > 1``). ``group``:
    parameters with their own learning rate (:class:`LrGroup`); the returned schedule is the
    other parameters'.

    Fields read: ``optimizer`` (lars | sgd | adamw), ``base_lr``, ``lr_scaling``
    (linear | sqrt | none), ``warmup_steps``, ``weight_decay``, ``momentum`` (lars, sgd),
    ``lars_trust_coefficient``, ``adam_b1``/``adam_b2`` (adamw), ``weight_decay_end`` (adamw,
    sgd: a cosine weight-decay schedule; absent or None: constant).
    """
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(f"config.optimizer={config.optimizer!r} is not one of {OPTIMIZERS}.")
    if config.base_lr <= 0:
        raise ValueError(f"config.base_lr must be > 0, got {config.base_lr}.")
    if config.weight_decay < 0:
        raise ValueError(f"config.weight_decay must be >= 0, got {config.weight_decay}.")
    if config.warmup_steps < 0:
        raise ValueError(f"config.warmup_steps must be >= 0, got {config.warmup_steps}.")
    peak = scaled_learning_rate(config.base_lr, global_batch_size, config.lr_scaling)
    schedule = warmup_cosine(peak, total_steps, config.warmup_steps)
    tx = _transformation(config, schedule, decay_mask, _weight_decay(config, total_steps))
    if group is None:
        return tx, schedule
    if group.constant:
        group_lr: Any = peak * group.scale
    else:
        group_lr = lambda step: group.scale * schedule(step)  # noqa: E731

    def labels(params: Any) -> Any:
        if group.select is None:
            return jax.tree.map(lambda d: "rest" if d else "group", decay_mask(params))
        return jax.tree.map(lambda g: "group" if g else "rest", group.select(params))

    weight_decay = _weight_decay(config, total_steps)
    transforms = {"rest": tx, "group": _transformation(config, group_lr, decay_mask, weight_decay)}
    return optax.multi_transform(transforms, labels), schedule


def _weight_decay(config: Any, total_steps: int) -> Any:
    """``config.weight_decay``, or with ``config.weight_decay_end`` a cosine from the one to the
    other over the run (DINO's ``cosine_scheduler`` for the weight decay: 0.04 -> 0.4)."""
    start, end = config.weight_decay, config.get("weight_decay_end")
    if end is None:
        return start

    def schedule(step: Any) -> Any:
        progress = jnp.minimum(step / max(total_steps, 1), 1.0)
        return end + 0.5 * (start - end) * (1.0 + jnp.cos(math.pi * progress))

    return schedule


def _transformation(
    config: Any, lr: Any, decay_mask: Callable[[Any], Any], weight_decay: Any
) -> optax.GradientTransformation:
    """The configured optimizer at learning rate ``lr`` and weight decay ``weight_decay`` (each a
    schedule or a float; LARS takes a float only, config.validate checks it)."""
    if config.optimizer == "lars":
        tx = optax.lars(
            lr,
            weight_decay=weight_decay,
            weight_decay_mask=decay_mask,
            trust_coefficient=config.lars_trust_coefficient,
            trust_ratio_mask=decay_mask,
            momentum=config.momentum,
        )
    elif config.optimizer == "sgd":
        tx = optax.chain(
            optax.add_decayed_weights(weight_decay, mask=decay_mask),
            optax.sgd(lr, momentum=config.momentum),
        )
    else:
        tx = optax.adamw(
            lr,
            b1=config.adam_b1,
            b2=config.adam_b2,
            weight_decay=weight_decay,
            mask=decay_mask,
        )
    return tx
