"""Fine-tuning a whole encoder with a linear head on labelled images (and the supervised baseline).

    classifier = finetune_encoder(encoder, images, labels, num_classes=10, steps=94, seed=0)
    logits = classifier(test_images)   # uint8 [B, H, W, C] -> float32 [B, num_classes]

The start is an :class:`~ssl_jax.evaluation.features.Encoder`: a run's checkpoint, or
``random_init_encoder`` for the supervised-from-scratch baseline, trained by exactly the same
procedure. A head (a standardising BatchNorm, then a zero-initialised Linear) goes on top and all
of it is trained with cross-entropy (:class:`FinetuneHParams` has the defaults):

- BatchNorm in train mode (batch statistics, running averages updated); scoring in eval mode.
- Light on-device augmentation (:mod:`ssl_jax.augment`): random-resized crop of area (0.8, 1) and
  horizontal flip, no colour changes.
- AdamW with one peak learning rate, 3e-3, for encoder and head; linear warmup over the first 10%
  of the steps, then cosine decay to 0; weight decay 0.05 on kernels. Adam rather than SGD: its
  step size does not depend on the gradients' scale, which differs between a pretrained and a
  random encoder.
- A fixed number of steps (:func:`default_finetune_steps`: 40 epochs of the subset, within
  [50, 200] steps); batches drawn without replacement within each pass over the subset.

The settings were chosen once, with the Fashion-MNIST SimCLR convnet, by top-1 on validation
splits carved out of the 1% and 10% labelled subsets (``validation_split``, 20%: 120 and 1,200
images); the test split played no part. What decided them: a bare zero-initialised head on the
raw features learnt too slowly for this budget (1%: 62-71% validation top-1 against the linear
probe's 77.5%), hence the standardising BatchNorm; a smaller encoder rate did not help even the
pretrained encoder (1%: 1e-4 75.0%, 1e-3 79.2%); at 10% 3e-3 matched 1e-2 and beat 1e-3 (ssl
86.1 / 86.1 / 85.0%, supervised 82.9 / 83.3 / 79.7%); crop (0.8, 1) beat (0.5, 1) at 10% (ssl
88.2 vs 86.1%, supervised 87.4 vs 82.9%).

A run is a pure function of the seed (batch order, augmentation keys). It trains the
:class:`~ssl_jax.methods.state.TrainState` that every method trains (``apply_gradients`` with the
per-group learning rates as ``scale_updates``). One jitted step serves every fine-tuning of an
architecture and batch size: the schedule's length is an array (``state.extra['total_steps']``),
not a static field, so the 1% and 10% subsets and the supervised baseline share one compilation.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ssl_jax import augment, logs
from ssl_jax.evaluation.features import Encoder, extract_features
from ssl_jax.evaluation.metrics import topk_accuracy
from ssl_jax.methods.state import TrainState
from ssl_jax.models import decay_mask_for

FINETUNE_EPOCHS = 40  # passes over the labelled subset, within the step bounds below
FINETUNE_MIN_STEPS = 50  # tiny subsets still get enough updates to fit the head and adapt BN
FINETUNE_MAX_STEPS = 200  # bounds the cost whatever the subset size (see the cost note in suite)


@dataclasses.dataclass(frozen=True)
class FinetuneHParams:
    """Hyper-parameters of :func:`finetune_encoder` (frozen and hashable: static under ``jax.jit``).

    Chosen once, on validation splits of the labelled Fashion-MNIST subsets (see the module
    docstring), never on a test set; the same for every dataset and architecture.
    """

    batch_size: int = 256  # images per step; a subset smaller than this is cycled within a batch
    lr: float = 3e-3  # peak AdamW learning rate of the head
    encoder_lr: float = 3e-3  # peak AdamW learning rate of the encoder (lower did not help)
    weight_decay: float = 0.05  # decoupled (AdamW), on conv / linear kernels only
    warmup_frac: float = 0.1  # share of the steps with a linear warmup, then cosine decay to 0
    crop_scale: tuple[float, float] = (0.8, 1.0)  # area fraction of the random-resized crop
    flip_prob: float = 0.5  # horizontal flip

    def __post_init__(self):
        object.__setattr__(self, "crop_scale", tuple(float(s) for s in self.crop_scale))
        checks = (
            ("batch_size", isinstance(self.batch_size, int) and self.batch_size > 0, "an int > 0"),
            ("lr", self.lr > 0, "> 0"),
            ("encoder_lr", self.encoder_lr >= 0, ">= 0 (0 trains the head and BN stats only)"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("warmup_frac", 0 <= self.warmup_frac < 1, "in [0, 1)"),
            ("flip_prob", 0 <= self.flip_prob <= 1, "in [0, 1]"),
        )
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"finetune_{name} must be {allowed}, got {getattr(self, name)!r}")
        lo_hi = self.crop_scale
        if not (len(lo_hi) == 2 and 0 < lo_hi[0] <= lo_hi[1] <= 1):
            raise ValueError(
                f"finetune_crop_scale must be (lo, hi) with 0 < lo <= hi <= 1, got {lo_hi}"
            )

    def view(self, size: int, mean: tuple[float, ...], std: tuple[float, ...]):
        """The training augmentation: crop + flip only, normalised like the encoder's inputs."""
        return augment.ViewConfig(
            size=size,
            crop_scale=self.crop_scale,
            flip_prob=self.flip_prob,
            jitter_prob=0.0,  # no colour, blur or solarize
            brightness=0.0,
            contrast=0.0,
            saturation=0.0,
            hue=0.0,
            grayscale_prob=0.0,
            blur_prob=0.0,
            solarize_prob=0.0,
            mean=mean,
            std=std,
        )


def default_finetune_steps(
    n_labels: int,
    batch_size: int,
    *,
    epochs: int = FINETUNE_EPOCHS,
    min_steps: int = FINETUNE_MIN_STEPS,
    max_steps: int = FINETUNE_MAX_STEPS,
) -> int:
    """``ceil(epochs * n_labels / batch_size)`` clipped to [min_steps, max_steps].

    With batch 256: 600 labels -> 94 steps (40 epochs), 6,000 -> 200 (8.5 epochs), so the cost is
    bounded whatever the subset size.
    """
    if n_labels <= 0 or batch_size <= 0:
        raise ValueError(f"n_labels and batch_size must be > 0, got {n_labels}, {batch_size}")
    return int(min(max_steps, max(min_steps, math.ceil(epochs * n_labels / batch_size))))


class LinearClassifier(nnx.Module):
    """An encoder and a linear head: ``[B, H, W, C] -> logits [B, num_classes]`` (float32).

    The head is a BatchNorm without scale or shift (a standardisation, as the linear probe
    standardises its features; MAE's probe head does the same) and a zero-initialised Linear: the
    head then learns at the same pace whatever the scale of the encoder's features (a pretrained
    and a random encoder differ), and before training every class scores the same.
    """

    def __init__(self, encoder: nnx.Module, num_features: int, num_classes: int):
        self.encoder = encoder
        self.norm = nnx.BatchNorm(
            num_features, use_bias=False, use_scale=False, momentum=0.9, rngs=nnx.Rngs(0)
        )
        zeros = nnx.initializers.zeros_init()
        self.head = nnx.Linear(
            num_features, num_classes, kernel_init=zeros, bias_init=zeros, rngs=nnx.Rngs(0)
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.norm(self.encoder(x).astype(jnp.float32)))


def _optimizer(hp: FinetuneHParams, model: nnx.Module) -> optax.GradientTransformation:
    """AdamW without its learning rate, which the step applies per parameter group; weight
    decay where the model's policy puts it (:func:`ssl_jax.models.decay_mask_for`: conv /
    linear kernels, not biases and BatchNorm scales / shifts)."""
    return _adamw(hp.weight_decay, decay_mask_for(model))


@functools.cache
def _adamw(weight_decay: float, mask: Any) -> optax.GradientTransformation:
    # One object per (decay, mask): the optimizer is a static field of the TrainState, so equal
    # settings must give the same object for every fine-tuning to share one compiled step.
    return optax.chain(optax.scale_by_adam(), optax.add_decayed_weights(weight_decay, mask=mask))


def lr_multiplier(step: jax.Array, total_steps: jax.Array, warmup_frac: float) -> jax.Array:
    """Learning-rate multiplier in [0, 1]: linear warmup over ``round(warmup_frac * total)``
    steps (the first step already non-zero), then cosine decay towards 0 at ``total_steps``.
    ``step`` and ``total_steps`` may be traced (unlike :func:`ssl_jax.optim.warmup_cosine`, an
    optax schedule of a fixed length), so runs of any length share one compiled step."""
    total = jnp.maximum(total_steps, 1).astype(jnp.float32)
    warmup = jnp.round(warmup_frac * total)
    step = step.astype(jnp.float32)
    ramp = (step + 1.0) / jnp.maximum(warmup, 1.0)
    progress = jnp.clip((step - warmup) / jnp.maximum(total - warmup, 1.0), 0.0, 1.0)
    return jnp.where(step < warmup, ramp, 0.5 * (1.0 + jnp.cos(jnp.pi * progress)))


@functools.partial(jax.jit, static_argnames=("view",), donate_argnames=("state",))
def _train_step(state: TrainState, images, labels, key, *, view):
    """One update on a uint8 batch [B, H, W, C] with int labels [B]; the step is folded into
    ``key`` for the augmentation. ``state.extra['total_steps']`` is the schedule's length (an
    array: runs of any length share the compilation); ``state.hparams`` the settings."""
    hp = state.hparams
    x = augment.augment(images, jax.random.fold_in(key, state.step), view)
    x = jax.lax.stop_gradient(x)

    def loss_fn(params):
        model = state.module(params, copy=True)
        logits = model(x)
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
        return loss, (nnx.state(model, nnx.BatchStat), logits)

    (loss, (batch_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    scale = state.schedule(state.step, state.extra["total_steps"], hp.warmup_frac)

    def apply_lr(updates):  # the peak rate of the head or of the encoder, times the schedule
        return jax.tree_util.tree_map_with_path(
            lambda path, u: -(hp.lr if path[0].key == "head" else hp.encoder_lr) * scale * u,
            updates,
        )

    state, _ = state.apply_gradients(grads, scale_updates=apply_lr, batch_stats=batch_stats)
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(logits, axis=-1) == labels),
        "lr_scale": scale,
    }
    return state, metrics


@dataclasses.dataclass(frozen=True)
class FinetunedClassifier(Encoder):
    """A fine-tuned encoder + head in eval mode (BatchNorm running averages): an
    :class:`~ssl_jax.evaluation.features.Encoder` (same call, same input checks) whose outputs
    are float32 logits [B, C], with the record of its training.

    Attributes:
      graphdef, state: the :class:`LinearClassifier` split in eval mode.
      config, step, workdir: those of the start encoder (step: its checkpoint's).
      image_size, mean, std: input preparation (see
        :func:`~ssl_jax.evaluation.features.preprocess`).
      steps: updates applied; hparams: the settings used.
      train_loss, train_top1: mean loss and accuracy of the (augmented) batches of the last
        10% of the steps (None after 0 steps).
    """

    steps: int
    hparams: FinetuneHParams
    train_loss: float | None
    train_top1: float | None

    @property
    def num_features(self) -> int:
        """C: one output per class."""
        return int(self.module.head.out_features)


def batch_order(n: int, steps: int, batch_size: int, seed: int) -> np.ndarray:
    """int64 [steps, batch_size] indices into the n labelled images: consecutive random
    permutations of range(n) (every image once per pass), cut into batches."""
    rng = np.random.default_rng([seed, 2])
    need = steps * batch_size
    passes = [rng.permutation(n) for _ in range(-(-need // n))] if need else []
    flat = np.concatenate(passes) if passes else np.zeros(0, np.int64)
    return flat[:need].reshape(steps, batch_size).astype(np.int64)


def finetune_encoder(
    encoder: Encoder,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    steps: int,
    seed: int,
    hparams: FinetuneHParams | None = None,
    description: str = "",
) -> FinetunedClassifier:
    """Fine-tune all of ``encoder`` plus a new linear head on labelled images.

    Args:
      encoder: the starting point (its weights are not modified: a copy is trained).
      images: uint8 [N, H, W, C], the labelled images (any size: the crop resizes them to
        ``encoder.image_size``).
      labels: int [N] classes in [0, num_classes).
      num_classes: C, the head's outputs.
      steps: updates (>= 0; 0 returns the untrained classifier, which scores every class alike).
      seed: fixes the batch order and the augmentation.
      hparams: the settings (default :class:`FinetuneHParams`).
      description: what to call the run in a progress message ('' for none).

    Returns:
      A :class:`FinetunedClassifier` in eval mode.
    """
    hp = FinetuneHParams() if hparams is None else hparams
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4 or images.dtype != np.uint8 or len(images) == 0:
        raise ValueError(
            f"images must be a non-empty uint8 [N, H, W, C] array, got {images.dtype} "
            f"{images.shape}"
        )
    if labels.shape != (len(images),):
        raise ValueError(f"labels must be [N] = [{len(images)}], got shape {labels.shape}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must be in [0, num_classes={num_classes}), got "
            f"[{labels.min()}, {labels.max()}]"
        )
    if not isinstance(steps, int | np.integer) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    steps = int(steps)

    # A copy in train mode: the caller's encoder (its arrays too) stays as it was.
    model = LinearClassifier(
        nnx.merge(encoder.graphdef, encoder.state, copy=True), encoder.num_features, num_classes
    )
    model.train()
    state = TrainState.create(
        model,
        tx=_optimizer(hp, model),
        schedule=lr_multiplier,
        hparams=hp,
        extra={"total_steps": jnp.asarray(steps, jnp.int32)},
    )
    # Fresh buffers (the step donates its state, and merge may share the encoder's arrays),
    # committed to one device like the step's outputs, so the first call compiles the same
    # program as every later one (uncommitted arrays would make a second compilation).
    state = jax.tree.map(jnp.copy, state)
    state = jax.device_put(state, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    view = hp.view(encoder.image_size, encoder.mean, encoder.std)
    key = jax.random.key(seed)
    order = batch_order(len(images), steps, hp.batch_size, seed)
    labels = labels.astype(np.int32)
    history = []
    t0 = said = time.perf_counter()
    for i in range(steps):
        idx = order[i]
        state, metrics = _train_step(state, images[idx], labels[idx], key, view=view)
        history.append(metrics)
        if description and time.perf_counter() - said >= 30.0:  # never quiet for long
            said = time.perf_counter()
            logs.console(f"  {description}: step {i + 1}/{steps} ({said - t0:.0f} s)")
    train_loss = train_top1 = None
    if history:
        tail = jax.device_get(history[-max(1, steps // 10) :])  # one transfer, at the end
        train_loss = float(np.mean([m["loss"] for m in tail]))
        train_top1 = float(np.mean([m["accuracy"] for m in tail]))
        if not np.isfinite(train_loss):
            raise FloatingPointError(f"fine-tuning diverged: training loss {train_loss}")
    if description:
        dt = time.perf_counter() - t0
        logs.console(
            f"  {description}: {steps} steps of {hp.batch_size} on {len(images):,} labelled "
            f"images in {dt:.1f} s ({steps * hp.batch_size / max(dt, 1e-9):,.0f} images/s)"
            + (f", final training loss {train_loss:.3f}" if train_loss is not None else "")
        )

    model = state.module()
    model.eval()
    eval_graphdef, eval_state = nnx.split(model)
    return FinetunedClassifier(
        graphdef=eval_graphdef,
        state=eval_state,
        config=encoder.config,
        step=encoder.step,
        workdir=encoder.workdir,
        image_size=encoder.image_size,
        mean=encoder.mean,
        std=encoder.std,
        steps=steps,
        hparams=hp,
        train_loss=train_loss,
        train_top1=train_top1,
    )


def finetune_and_score(
    starts: Mapping[str, Encoder],
    images: np.ndarray,
    labels: np.ndarray,
    test_source: Any,
    *,
    num_classes: int,
    steps: int,
    seed: int,
    hparams: FinetuneHParams | None = None,
    batch_size: int = 512,
    description: str = "",
) -> dict[str, dict]:
    """Fine-tune each start encoder on the same labelled images (same batches and augmentation:
    one seed) and score it on every image of ``test_source``.

    Args:
      starts: name -> starting :class:`Encoder` (e.g. 'ssl': the run, 'supervised': random init).
      images, labels: the labelled subset, uint8 [N, H, W, C] and int [N].
      test_source: a random-access source with labels (only scored).
      num_classes, steps, seed, hparams: as in :func:`finetune_encoder`.
      batch_size: images per scoring batch.
      description: what to call the subset in the progress messages ('' for none).

    Returns:
      name -> {'top1', 'top5' (None if C <= 5), 'steps', 'batch_size', 'lr', 'encoder_lr',
      'train_loss'}.
    """
    hp = FinetuneHParams() if hparams is None else hparams
    out = {}
    for name, start in starts.items():
        t = time.perf_counter()
        classifier = finetune_encoder(
            start,
            images,
            labels,
            num_classes=num_classes,
            steps=steps,
            seed=seed,
            hparams=hp,
            description=f"{name} fine-tuning, {description}" if description else "",
        )
        logits, test_y = extract_features(
            test_source, {"logits": classifier}, batch_size=batch_size
        )
        out[name] = {
            "top1": topk_accuracy(logits["logits"], test_y, 1),
            "top5": topk_accuracy(logits["logits"], test_y, 5),
            "steps": steps,
            "batch_size": hp.batch_size,
            "lr": hp.lr,
            "encoder_lr": hp.encoder_lr,
            "train_loss": classifier.train_loss,
        }
        if description:
            logs.console(
                f"  {name} finetune, {description}: top-1 {100 * out[name]['top1']:.1f}% "
                f"[{time.perf_counter() - t:.1f} s with scoring]"
            )
    return out
