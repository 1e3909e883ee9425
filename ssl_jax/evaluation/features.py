"""Frozen encoders and feature extraction: a run directory in, [N, F] feature arrays out.

    encoder = load_encoder('runs/simclr')         # the latest checkpoint, eval mode
    feats = encoder(images)                       # uint8 [B, H, W, C] -> float32 [B, F]

Float images are taken to be in [0, 1] already (uint8 / 255), never [0, 255]: the encoder checks
that whenever the images are concrete arrays (not traced inside a user's ``jax.jit``).

Images are prepared as in training but without augmentation: scaled to [0, 1], resized (shorter
side) and centre-cropped to ``config.image_size`` if they differ, then normalised with the mean
and std of the run's view preset. BatchNorm uses its running averages.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from ssl_jax import augment, data, encoder_files, logs
from ssl_jax.methods import get_method
from ssl_jax.run import Run


def preprocess(
    images: jax.Array,
    size: int,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> jax.Array:
    """uint8 [B, H, W, C] -> float32 [B, size, size, C]: [0, 1], shorter side resized to ``size``
    (antialiased bilinear) and centre-cropped when (H, W) != (size, size), then
    ``(x - mean) / std`` if given. Deterministic: no augmentation."""
    x = augment.to_float(images)
    b, h, w, c = x.shape
    if (h, w) != (size, size):
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        x = jax.image.resize(x, (b, nh, nw, c), method="linear", antialias=True)
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[:, top : top + size, left : left + size, :]
    if mean is not None:
        x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    return x


@functools.partial(jax.jit, static_argnames=("graphdef", "size", "mean", "std"))
def _forward(graphdef, state, images, *, size, mean, std):
    # Every frozen model's call (encoders and fine-tuned classifiers): one compilation per
    # architecture, image shape and input preparation.
    return nnx.merge(graphdef, state)(preprocess(images, size, mean, std))


@functools.partial(jax.jit, static_argnames=("size",))
def raw_pixels(images: jax.Array, *, size: int) -> jax.Array:
    """The raw-pixel baseline's features: uint8 [B, H, W, C] -> float32 [B, size*size*C] in
    [0, 1] (resized and centre-cropped like the encoders' inputs, not normalised)."""
    x = preprocess(images, size)
    return x.reshape(x.shape[0], -1)


def _checked_images(images: Any, channels: int | None) -> Any:
    """Check what :class:`Encoder` accepts, on the array as given (before any cast, so int64
    input is reported as int64, not as JAX's int32), and return it as an array."""
    if not isinstance(images, (np.ndarray, jax.Array)):  # lists, PIL images, other frameworks
        images = np.asarray(images)
    dtype, shape = images.dtype, tuple(images.shape)
    is_float = jnp.issubdtype(dtype, jnp.floating)
    if dtype != np.uint8 and not is_float:
        hint = (
            " (integer images in [0, 255]: images.astype(np.uint8))"
            if jnp.issubdtype(dtype, jnp.integer)
            else ""
        )
        raise ValueError(
            f"images must be uint8 in [0, 255] or float in [0, 1]; got dtype {dtype}{hint}."
        )
    if len(shape) != 4:
        hint = ""
        if len(shape) == 3:
            hint = (
                ": for one image [H, W, C] pass images[None]; for a batch of single-channel "
                "images [B, H, W] pass images[..., None]"
            )
        raise ValueError(f"images must be a batch [B, H, W, C]; got shape {shape}{hint}.")
    if shape[0] == 0:
        raise ValueError(f"images is an empty batch: shape {shape}; pass at least one image.")
    if channels is not None and shape[-1] != channels:
        raise ValueError(
            f"images have {shape[-1]} channels (shape {shape}) but the encoder was trained on "
            f"{channels}-channel images (config.image_channels)."
        )
    if is_float and not isinstance(images, jax.core.Tracer):
        # A traced batch (the encoder called inside a user's jit) has no values to check.
        lo, hi = float(images.min()), float(images.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"float images must be in [0, 1]; got values in [{lo:g}, {hi:g}]. Pass uint8 "
                "images in [0, 255], or divide float images in [0, 255] by 255 (the encoder "
                "applies the run's mean/std normalisation itself: do not normalise them)."
            )
    return images


@dataclasses.dataclass(frozen=True)
class Encoder:
    """A frozen encoder in eval mode; call it on images [B, H, W, C] to get float32 features
    [B, F]. The call is jitted; encoders of one architecture share the compilation. (The one
    frozen-model wrapper: a fine-tuned classifier,
    :class:`~ssl_jax.evaluation.finetune.FinetunedClassifier`, is an Encoder whose outputs are
    logits.)

    Images are uint8 in [0, 255] or float in [0, 1] (uint8 / 255), with ``config.image_channels``
    channels; any size (resized and centre-cropped to ``image_size``). Float images in [0, 255]
    would silently give wrong features, so when the images are concrete (not traced under a
    user's ``jax.jit``) a float batch outside [0, 1] is a ValueError, as are other dtypes
    (integer images other than uint8 included: ``images.astype(np.uint8)``), a single image
    ``[H, W, C]`` (pass ``images[None]``), an empty batch and a channel count the encoder was
    not trained on.

    Attributes:
      graphdef, state: the NNX module split (``module`` merges them).
      config: the run's config.
      step: the checkpoint's step (0 for a random initialisation).
      workdir: the run directory (None if not loaded from one).
      image_size, mean, std: input preparation (see :func:`preprocess`).
    """

    graphdef: Any
    state: Any
    config: Any
    step: int
    workdir: str | None
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def module(self) -> nnx.Module:
        return nnx.merge(self.graphdef, self.state)

    @property
    def num_features(self) -> int:
        return int(self.module.num_features)

    def __call__(self, images: Any) -> jax.Array:
        """uint8 [B, H, W, C] in [0, 255] or float in [0, 1] -> float32 features [B, F]."""
        channels = getattr(self.config, "image_channels", None)
        return _forward(
            self.graphdef,
            self.state,
            jnp.asarray(_checked_images(images, channels)),
            size=self.image_size,
            mean=self.mean,
            std=self.std,
        )


def encoder_from_state(config: Any, state: Any, *, workdir: str | None = None) -> Encoder:
    """The eval-mode encoder of a method's train state (``method.encoder_of``)."""
    module = get_method(config.method).encoder_of(state)
    graphdef, enc_state = nnx.split(module)
    view = augment.get_views(config.augment, config.image_size)[0]
    return Encoder(
        graphdef=graphdef,
        state=enc_state,
        config=config,
        step=int(state.step),
        workdir=workdir,
        image_size=int(config.image_size),
        mean=tuple(view.mean),
        std=tuple(view.std),
    )


@functools.partial(jax.jit, static_argnums=0)
def _init_state(config: ml_collections.FrozenConfigDict, key: jax.Array) -> Any:
    # A frozen (hashable) config makes jit cache by value: equal configs compile once.
    return get_method(config.method).init_state(config, key)


def random_init_encoder(config: Any) -> Encoder:
    """The run's encoder as it was before training: ``init_state`` with ``config.seed``."""
    state = _init_state(ml_collections.FrozenConfigDict(config), jax.random.key(config.seed))
    return encoder_from_state(config, state)


def load_encoder(workdir: str, *, step: int | str | None = None) -> Encoder:
    """Rebuild a run's encoder from ``workdir/config.json`` and restore a checkpoint into it.

    Args:
      workdir: a directory written by ``ssl-jax pretrain`` / ``ssl_jax.train.train``, or one
        written by ``ssl-jax export`` (``encoder.json``: read without any training state).
      step: the checkpoint to restore (default: the latest); an int, or a string of digits
        such as ``"1000"`` (converted with ``int``).

    Returns:
      An :class:`Encoder` in eval mode (BatchNorm running averages) on the default device. It
      maps uint8 images ``[B, H, W, C]`` in [0, 255], or float images in [0, 1] (never
      [0, 255]: divide those by 255), to float32 features ``[B, F]``.

    Raises:
      FileNotFoundError: no config.json, no checkpoint, or no checkpoint of that step.
      TypeError: ``step`` is neither None, an int nor a string of an int.
      ValueError: the checkpoint's weights are not all finite.
    """
    if encoder_files.is_export_dir(workdir):
        return Encoder(**encoder_files.read(workdir, step=step))
    run = Run(workdir)
    config = run.config
    state = run.restore_state(step, config=config)
    _check_finite_weights(state, run.workdir)
    return encoder_from_state(config, state, workdir=run.workdir)


def _check_finite_weights(state: Any, workdir: str) -> None:
    """A ValueError naming the checkpoint when any weight or statistic is NaN or Inf (a run that
    diverged before the NaN guard covered the weights saved such checkpoints)."""
    trees = (state.params, state.batch_stats)
    finite = all(bool(np.isfinite(np.asarray(x)).all()) for x in jax.tree.leaves(trees))
    if not finite:
        step = int(np.asarray(state.step))
        raise ValueError(
            f"The checkpoint of step {step} in {workdir} has NaN or Inf weights (the run "
            "diverged): pass an earlier checkpoint with --step, or retrain with a lower lr."
        )


def extract_features(
    source: Any,
    extractors: Mapping[str, Callable[[Any], Any]],
    *,
    batch_size: int = 512,
    description: str = "",
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Run every extractor over a whole source in one in-order pass.

    Args:
      source: a random-access source (``ssl_jax.data``).
      extractors: name -> function of uint8 images [B, H, W, C] returning [B, F_name].
      batch_size: images per batch (the last batch is padded; padded rows are dropped).
      description: what to call the pass in the progress messages ('' for none).

    Returns:
      ``(features, labels)``: name -> float32 [N, F_name] in source order, and int32 [N].
    """
    batches = data.eval_batches(source, batch_size=batch_size)
    out: dict[str, list[np.ndarray]] = {name: [] for name in extractors}
    labels = []
    t0 = reported = time.perf_counter()
    report_every = max(1, len(batches) // 4)  # and at least every 30 s
    for i, batch in enumerate(batches):
        mask = np.asarray(batch["mask"], bool)
        images = jnp.asarray(batch["image"])  # one host-to-device copy for every extractor
        results = {name: fn(images) for name, fn in extractors.items()}  # all dispatched
        for name, feats in results.items():
            out[name].append(np.asarray(feats, np.float32)[mask])
        labels.append(np.asarray(batch["label"], np.int32)[mask])
        quiet = time.perf_counter() - reported  # a quarter done, or 30 s, but not twice in 5 s
        quarter = (i + 1) % report_every == 0 and quiet >= 5.0
        if description and (quarter or quiet >= 30.0 or i + 1 == len(batches)):
            done = min((i + 1) * batch_size, batches.num_examples)
            reported = time.perf_counter()
            dt = reported - t0
            logs.console(
                f"  {description}: {done:,}/{batches.num_examples:,} images "
                f"({done / max(dt, 1e-9):,.0f} images/s)"
            )
    feats = {name: np.concatenate(parts) for name, parts in out.items()}
    return feats, np.concatenate(labels)
