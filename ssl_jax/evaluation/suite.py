"""The evaluation of one run: features once, every protocol, ``eval.json`` and ``eval.md``.

For each label fraction a class-balanced labelled subset of the training split is drawn once
(:mod:`ssl_jax.evaluation.splits`) and shared by every representation and protocol; the test
split is only ever scored. Representations (:data:`~ssl_jax.evaluation.protocol.REPRESENTATIONS`):

  ssl          the run's encoder (latest checkpoint)
  random_init  the same architecture as initialised by ``init_state`` with the run's seed
  raw_pixels   flattened pixels in [0, 1] (linear probe only), at most RAW_PIXEL_FEATURES of them
  supervised   random_init fine-tuned on the labelled subset (fine-tuning only): the
               supervised-from-scratch baseline

Protocols, each an object registered in :data:`~ssl_jax.evaluation.protocol.PROTOCOLS`: ``knn``
(knn_protocol.py: k=200, votes exp(sim / 0.1), and ``knn_k20``, k=20, majority, both with the
labelled subset as the memory bank), ``linear`` (linear_protocol.py: L2-regularised logistic
regression on frozen features), and ``finetune`` (finetune_protocol.py: the whole encoder plus a
linear head trained on the labelled subset; ssl and supervised, by default at the fractions
below 1). :func:`evaluate` runs the selected ones; ``report.py`` orders, merges and writes the
rows.

Cost: fine-tuning is capped at 200 steps of 256 images a run (``default_finetune_steps``). On
Fashion-MNIST ssl and supervised at 1% and 10% (94 + 200 steps each) took 336 s with their scoring
on a 2-core CPU shared with other jobs (bare encoder forward+backward ~550 images/s there; ~2-2.5
minutes at an idle machine's ~1,000-1,500). 100% labels would add two 200-step runs, so it is
only fine-tuned on request (``finetune_fractions``); ``protocols=('knn', 'linear')`` skips it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ssl_jax import data, logs
from ssl_jax.checkpoint import checkpoint_id
from ssl_jax.data.from_config import no_labels_message
from ssl_jax.evaluation import report
from ssl_jax.evaluation.features import (
    Encoder,
    extract_features,
    load_encoder,
    random_init_encoder,
    raw_pixels,
)
from ssl_jax.evaluation.finetune import FinetuneHParams
from ssl_jax.evaluation.linear import DEFAULT_L2_GRID
from ssl_jax.evaluation.protocol import (
    REPRESENTATIONS,
    EvalInputs,
    Protocol,
    build_protocols,
    fraction_name,
    protocol_names,
)
from ssl_jax.evaluation.report import format_table
from ssl_jax.evaluation.splits import class_balanced_subset
from ssl_jax.run import Run, evaluation_data

# What ``evaluate(protocols=...)`` selects, by rank: 'knn' is both kNN rows (one neighbour search).
PROTOCOL_CHOICES = protocol_names()
MAP_POINTS = 2000  # test images in the embedding maps (t-SNE is O(N^2): ~1-2 min on a CPU)
# The raw-pixel baseline's most features (larger images are resized down for it): the linear
# probe's preconditioner is an F x F eigendecomposition, 4.4 s at 4,096 on the 2-core CPU but
# minutes at a 64 px RGB image's 12,288. Fashion-MNIST (784) and CIFAR (3,072) stay whole.
RAW_PIXEL_FEATURES = 4096

__all__ = ["PROTOCOL_CHOICES", "REPRESENTATIONS", "evaluate", "format_table"]


def evaluate(
    workdir: str,
    *,
    label_fractions: Sequence[float] = (0.01, 0.1, 1.0),
    seed: int = 0,
    representations: Sequence[str] = REPRESENTATIONS,
    protocols: Sequence[str] = PROTOCOL_CHOICES,
    step: int | None = None,
    test_split: str = "test",
    batch_size: int = 512,
    knn_k: int = 200,
    knn_temperature: float = 0.1,
    knn_majority_k: int = 20,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    max_iter: int = 50,
    finetune_fractions: Sequence[float] | None = None,
    finetune_steps: int | None = None,
    finetune_batch_size: int = FinetuneHParams.batch_size,
    finetune_lr: float = FinetuneHParams.lr,
    finetune_encoder_lr: float = FinetuneHParams.encoder_lr,
    write: bool = True,
    plots: bool = True,
    unevaluable: str = "raise",
) -> list[dict]:
    """Evaluate a pretraining run with kNN and linear probes and fine-tuning at several label
    fractions, next to baselines.

    Args:
      workdir: the run directory (config.json + checkpoints/).
      label_fractions: fractions of the training labels, each in (0, 1].
      seed: draws the labelled subsets and validation splits (the same for every
        representation) and fixes the fine-tuning runs (batch order, augmentation).
      representations: any of ``REPRESENTATIONS``; each is evaluated with the selected
        protocols that apply to it (supervised: finetune only; raw_pixels: linear only).
      protocols: names in :data:`~ssl_jax.evaluation.protocol.PROTOCOLS` (the default,
        ``PROTOCOL_CHOICES``: all three built-in ones; 'knn' gives both kNN rows); leave out
        'finetune' for a quick evaluation.
      step: checkpoint to evaluate (default: the latest).
      test_split: the split that is scored (only scored: no choice looks at it).
      batch_size: images per feature-extraction (and fine-tuned scoring) batch.
      knn_k, knn_temperature, ...: the protocols' settings, each read by the protocol whose
        field has its name (:meth:`~ssl_jax.evaluation.protocol.Protocol.from_options`).
        knn_k, knn_temperature: the weighted kNN; knn_majority_k: the majority-vote kNN.
      l2_grid, max_iter: the linear probe's L2 candidates and L-BFGS iterations.
      finetune_fractions: the label fractions that are fine-tuned on, each one of
        ``label_fractions``; None: those below 1 (fine-tuning on every label is the costly one).
      finetune_steps: updates per fine-tuning run; None: ``default_finetune_steps`` of the
        subset (40 epochs, within [50, 200] steps).
      finetune_batch_size, finetune_lr, finetune_encoder_lr: the fine-tuning batch and peak
        AdamW learning rates of the head and of the encoder (see ``FinetuneHParams``).
      write: write ``workdir/eval.json`` and ``workdir/eval.md`` (atomically): this call's rows
        and those of an earlier evaluation of the same checkpoint, seed and test split, made with
        the same settings, that it did not redo (so ``protocols=('finetune',)`` adds to the kNN
        and linear rows). Two evaluations of one workdir at the same time: the last one written
        wins.
      plots: with ``write``, also the PNG pictures of :func:`ssl_jax.evaluation.plots.write_plots`
        (test-set embedding maps of the ssl features, training curves, label efficiency).
      unevaluable: what an image folder without labels or without a test split does: 'raise'
        (a one-line ValueError naming the fix) or 'skip' (that line on the console and no rows:
        pretraining's evaluation at the end, on a folder just trained on).

    Returns:
      This call's rows, one dict per (representation, protocol, label fraction):
      representation, protocol, label_fraction, n_labels, top1, top5 (None when there are <= 5
      classes), seed, step, checkpoint_id (see :func:`ssl_jax.checkpoint.checkpoint_id`),
      test_split, and k and temperature (kNN), l2 (the final fit's),
      l2_selected (the grid value chosen), select_by, val_top1, val_ce and n_val (linear), or
      steps, batch_size, lr, encoder_lr and train_loss (finetune). Accuracies are in [0, 1].
    """
    t_start = time.perf_counter()
    fractions = _check_selection(representations, protocols, label_fractions)
    if unevaluable not in ("raise", "skip"):
        raise ValueError(f"unevaluable must be 'raise' or 'skip', got {unevaluable!r}")
    every = build_protocols(  # all of them: those not run still judge the earlier rows kept
        dict(
            knn_k=knn_k,
            knn_temperature=knn_temperature,
            knn_majority_k=knn_majority_k,
            l2_grid=l2_grid,
            max_iter=max_iter,
            finetune_fractions=finetune_fractions,
            finetune_steps=finetune_steps,
            finetune_batch_size=finetune_batch_size,
            finetune_lr=finetune_lr,
            finetune_encoder_lr=finetune_encoder_lr,
        )
    )
    plan = _plan(every, protocols, representations, fractions)

    if unevaluable == "skip" and (why := _not_evaluable(Run(workdir).config, test_split)):
        logs.console(why)  # before the checkpoint is read: nothing to evaluate
        return []
    encoder = load_encoder(workdir, step=step)
    run = Run(encoder.workdir)
    with contextlib.ExitStack() as stack:
        if write:  # the console also goes to W/eval.log (pretraining's own goes to train.log)
            stack.enter_context(logs.RunLog(os.path.join(run.workdir, logs.EVAL_LOG)))
        # A folder named by the run's config is checked and announced before it is read.
        config = evaluation_data(encoder.config, encoder.workdir, test_split=test_split)
        train_src, test_src = _sources(config, test_split)
        pairs = {name: [p.name for p, reps, _ in plan if name in reps] for name in representations}
        pairs = {name: names for name, names in pairs.items() if names}
        models = _models(encoder, pairs)
        featured = {name for p, reps, _ in plan if p.uses_features for name in reps}
        extractors = {name: models[name] for name in pairs if name in featured}
        logs.console(
            f"evaluating {encoder.workdir} ({config.method}, checkpoint step {encoder.step}): "
            f"{config.dataset}, {len(train_src):,} train / {len(test_src):,} {test_split} images; "
            + "; ".join(f"{name}: {', '.join(names)}" for name, names in pairs.items())
        )
        stage = Stages(1 + len(plan) + (2 if write and plots else 0))
        with stage(
            "features",
            f"{', '.join(extractors) or 'labels only'} of the {len(train_src):,} train and "
            f"{len(test_src):,} {test_split} images",
        ):
            train_x, train_y = extract_features(
                train_src, extractors, batch_size=batch_size, description="train features"
            )
            test_x, test_y = extract_features(
                test_src, extractors, batch_size=batch_size, description=f"{test_split} features"
            )
        num_classes = train_src.num_classes or int(train_y.max()) + 1
        _check_labels(train_y, num_classes, "training")
        _check_labels(test_y, num_classes, test_split)
        inputs = EvalInputs(
            models=models,
            train_x=train_x,
            test_x=test_x,
            train_y=train_y,
            test_y=test_y,
            subsets={
                f: class_balanced_subset(train_y, f, seed=seed, num_classes=num_classes)
                for f in fractions
            },
            train_source=train_src,
            test_source=test_src,
            num_classes=num_classes,
            seed=seed,
            batch_size=batch_size,
            step=encoder.step,
            checkpoint_id=checkpoint_id(run.checkpoints_dir, encoder.step),
            test_split=test_split,
        )
        rows = []
        for p, reps, fs in plan:
            at = ", ".join(fraction_name(f) for f in fs)
            with stage(p.title or p.name, f"{', '.join(reps)} at {at} labels"):
                rows += p.run(inputs, reps, fs)

        rows = sorted(rows, key=report.row_order(every))
        # eval.json also keeps the rows of earlier runs of this checkpoint not redone here.
        shown = report.with_earlier_rows(run, rows, every) if write else rows
        table = format_table(shown)
        elapsed = time.perf_counter() - t_start
        logs.console(f"\nTop-1 / top-5 test accuracy (%), evaluated in {elapsed:.0f} s:\n{table}")
        if write:
            notes = report.header(encoder, inputs) + "".join(p.notes(shown) for p in every)
            report.write(run, shown, table, description=notes, test_split=test_split)
            if plots:
                _write_plots(run, shown, inputs, stage)
        return rows


class Stages:
    """The stage lines of an evaluation: ``[i/n] name: what ...`` before a stage, ``[i/n] name
    done in T`` after it, and in between a "still running" line whenever the console was quiet
    for ``quiet_s`` seconds (:class:`ssl_jax.logs.StillRunning`): evaluations run for minutes,
    and no stage is silent.

        stage = Stages(3)
        with stage("features", "ssl of 60,000 images"):
            ...
    """

    def __init__(self, total: int, quiet_s: float = 30.0):
        self.total, self.started, self.quiet_s = total, 0, quiet_s

    @contextlib.contextmanager
    def __call__(self, name: str, what: str = "") -> Iterator[None]:
        self.started += 1
        tag = f"[{self.started}/{max(self.total, self.started)}] {name}"
        logs.console(f"{tag}: {what} ..." if what else f"{tag} ...")
        t = time.perf_counter()
        with logs.StillRunning(tag, every=self.quiet_s):
            yield
        logs.console(f"{tag} done in {seconds(time.perf_counter() - t)}")


def seconds(dt: float) -> str:
    """A duration for a stage line: '4.2 s', '95 s (01:35)' from a minute."""
    return f"{dt:.1f} s" if dt < 60 else f"{dt:.0f} s ({logs.format_duration(dt)})"


def _check_selection(
    representations: Sequence[str], protocols: Sequence[str], label_fractions: Sequence[float]
) -> list[float]:
    """A ValueError for an unknown representation or protocol or a bad label fraction; the
    label fractions, sorted."""
    for what, chosen, known in (
        ("representations", representations, REPRESENTATIONS),
        ("protocols", protocols, protocol_names()),  # the registry now: plug-ins included
    ):
        unknown = sorted(set(chosen) - set(known))
        if unknown or not chosen:
            raise ValueError(f"{what} must be among {known}, got {unknown}")
    fractions = sorted({float(f) for f in label_fractions})
    if not fractions or not all(0.0 < f <= 1.0 for f in fractions):
        raise ValueError(f"label fractions must be in (0, 1], got {list(label_fractions)}")
    return fractions


def _plan(
    every: Sequence[Protocol],
    protocols: Sequence[str],
    representations: Sequence[str],
    fractions: Sequence[float],
) -> list[tuple[Protocol, list[str], list[float]]]:
    """(protocol, its representations, its label fractions) for each selected protocol that
    has both; a ValueError when none has."""
    plan, scopes = [], []
    for p in every:
        at = p.fractions(fractions)  # checks the protocol's choice of fractions, run or not
        if p.name not in protocols:
            continue
        scopes.append(p.scope(at))
        reps = [name for name in dict.fromkeys(representations) if name in p.representations]
        if reps and at:
            plan.append((p, reps, at))
    if not plan:
        raise ValueError(
            f"no representation in {list(representations)} is evaluated with the protocols "
            f"{[p.name for p in every if p.name in protocols]} ({'; '.join(scopes)})"
        )
    return plan


def _not_evaluable(config: Any, test_split: str) -> str | None:
    """The line saying why a run on an image folder cannot be evaluated (no labels, no test
    split) and how to make it so; None when it can (and for every other dataset)."""
    if not config.dataset.startswith("folder:"):
        return None
    train_src = data.source_from_config(config)  # the folder the run has just trained on
    if why := no_labels_message(config, train_src):
        return why
    folder = os.path.expanduser(config.dataset[len("folder:") :])
    if os.path.isdir(os.path.join(folder, test_split)):
        return None
    return (
        f"no {test_split} split in {config.dataset} (no {test_split}/ folder): the linear/kNN "
        f"evaluation is skipped; put held-out images in {os.path.join(folder, test_split)}"
        f"/<class>/ (and the others in {os.path.join(folder, config.train_split)}/<class>/) to "
        "get it"
    )


def _sources(config: Any, test_split: str) -> tuple[Any, Any]:
    """The run's training and test sources, without their unlabelled images (files outside a
    class folder); a ValueError if they have no labels or their channels are not the run's."""
    train_src = data.source_from_config(config, unreadable="raise")  # score the images named
    if why := no_labels_message(config, train_src, what="cannot run"):
        raise ValueError(why)
    test_src = data.source_from_config(config, split=test_split)
    train_src, test_src = _labelled(train_src), _labelled(test_src)
    for src in (train_src, test_src):
        if src.image_shape[-1] != config.image_channels:
            raise ValueError(
                f"{src.name} has {src.image_shape[-1]}-channel images but the run was trained "
                f"on {config.image_channels} channels."
            )
    return train_src, test_src


def raw_pixel_size(config: Any) -> int:
    """The side of the raw-pixel baseline's images: the run's image_size, or less so that they
    have at most :data:`RAW_PIXEL_FEATURES` values."""
    channels = int(config.image_channels)
    return min(int(config.image_size), math.isqrt(RAW_PIXEL_FEATURES // channels))


def _labelled(source: Any) -> Any:
    """An image folder without its unlabelled files (with a console line), else ``source``."""
    labels = getattr(source, "labels", None)
    if labels is None or not hasattr(source, "without") or (labels >= 0).all():
        return source
    unlabelled = [f for f, label in zip(source.files, labels, strict=True) if label < 0]
    if len(unlabelled) == len(source):
        return source  # nothing left: _check_labels names the problem
    logs.console(
        f"{source.name}: {len(unlabelled):,} images outside a class folder (no label) are left "
        "out of the evaluation"
    )
    return source.without(unlabelled)


def _models(encoder: Encoder, names: Sequence[str]) -> dict[str, Any]:
    """Each representation's model: ssl the run's encoder; random_init and supervised (a
    fine-tuning start) the same architecture at initialisation; raw_pixels the pixels."""
    random_init = None
    if {"random_init", "supervised"} & set(names):
        random_init = random_init_encoder(encoder.config)
    models = {
        "ssl": encoder,
        "random_init": random_init,
        "raw_pixels": functools.partial(raw_pixels, size=raw_pixel_size(encoder.config)),
        "supervised": random_init,
    }
    return {name: models[name] for name in names}


def _check_labels(labels: np.ndarray, num_classes: int, split: str) -> None:
    if labels.size == 0 or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"The {split} split needs labels in [0, {num_classes}) for evaluation; got "
            f"{'none' if labels.size == 0 else f'[{labels.min()}, {labels.max()}]'}."
        )


def _write_plots(run: Run, rows: Sequence[dict], inputs: EvalInputs, stage: Stages) -> None:
    """The PNG pictures, as two stages: the test-set embedding maps of the ssl features
    (:func:`ssl_jax.evaluation.plots.plot_embeddings`: PCA and t-SNE, the slow one), then the
    training curves and label efficiency (:func:`ssl_jax.evaluation.plots.write_plots`)."""
    from ssl_jax.evaluation.plots import (  # matplotlib only when plotting
        balanced_subsample,
        plot_embeddings,
        write_plots,
    )

    t = time.perf_counter()
    written = []
    if "ssl" in inputs.test_x:
        n = len(balanced_subsample(inputs.test_y, MAP_POINTS, seed=inputs.seed))
        with stage(
            "maps", f"PCA and t-SNE of the ssl features of {n:,} {inputs.test_split} images"
        ):
            written += plot_embeddings(
                inputs.test_x["ssl"],
                inputs.test_y,
                run.workdir,
                class_names=getattr(inputs.test_source, "class_names", None),
                max_points=MAP_POINTS,
                seed=inputs.seed,
            )
    else:
        stage.total -= 1
    with stage("plots", "training curves and label efficiency"):
        written += write_plots(run.workdir, rows=rows, seed=inputs.seed)
    logs.console(
        f"pictures ({time.perf_counter() - t:.1f} s): "
        + ", ".join(os.path.basename(w) for w in written)
    )
    report.write_figures_to_tensorboard(run, written, step=inputs.step)
