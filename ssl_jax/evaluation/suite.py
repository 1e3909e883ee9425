"""The evaluation of one run: features once, every protocol, ``eval.json`` and ``eval.md``.

For each label fraction a class-balanced labelled subset of the training split is drawn once
(:mod:`ssl_jax.evaluation.splits`) and shared by every representation and protocol; the test
split is only ever scored. Representations:

  ssl          the run's encoder (latest checkpoint)
  random_init  the same architecture as initialised by ``init_state`` with the run's seed
  raw_pixels   flattened pixels in [0, 1] (linear probe only)

Protocols: ``knn`` (k=200, votes exp(sim / 0.1)), ``knn_k20`` (k=20, majority), both with the
labelled subset as the memory bank, and ``linear`` (L2-regularised logistic regression).
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Sequence

import numpy as np

from ssl_jax import logs, train
from ssl_jax.evaluation.features import (
    extract_features,
    load_encoder,
    random_init_encoder,
    raw_pixels,
)
from ssl_jax.evaluation.knn import knn_neighbors, knn_votes, l2_normalize
from ssl_jax.evaluation.linear import DEFAULT_L2_GRID, FeatureStats, linear_probe
from ssl_jax.evaluation.metrics import topk_accuracy
from ssl_jax.evaluation.splits import class_balanced_subset

REPRESENTATIONS = ("ssl", "random_init", "raw_pixels")
PROTOCOLS = ("knn", "knn_k20", "linear")  # with the default kNN settings
_LINEAR_ONLY = ("raw_pixels",)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _fraction_name(f: float) -> str:
    return f"{100 * f:g}%"


def format_table(rows: Sequence[dict]) -> str:
    """A markdown table of top-1 / top-5 test accuracy (%): one line per (representation,
    protocol), one column per label fraction."""
    fractions = sorted({r["label_fraction"] for r in rows})
    n_labels = {r["label_fraction"]: r["n_labels"] for r in rows}
    keys = list(dict.fromkeys((r["representation"], r["protocol"]) for r in rows))
    cell = {(r["representation"], r["protocol"], r["label_fraction"]): r for r in rows}
    head = ["representation", "protocol"] + [
        f"{_fraction_name(f)} ({n_labels[f]:,} labels)" for f in fractions
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rep, proto in keys:
        cells = []
        for f in fractions:
            r = cell.get((rep, proto, f))
            cells.append("" if r is None else f"{_pct(r['top1'])} / {_pct(r.get('top5'))}")
        lines.append("| " + " | ".join([rep, proto, *cells]) + " |")
    return "\n".join(lines)


def _check_labels(labels: np.ndarray, num_classes: int, split: str) -> None:
    if labels.size == 0 or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"The {split} split needs labels in [0, {num_classes}) for evaluation; got "
            f"{'none' if labels.size == 0 else f'[{labels.min()}, {labels.max()}]'}."
        )


def evaluate(
    workdir: str,
    *,
    label_fractions: Sequence[float] = (0.01, 0.1, 1.0),
    seed: int = 0,
    representations: Sequence[str] = REPRESENTATIONS,
    step: int | None = None,
    test_split: str = "test",
    batch_size: int = 512,
    knn_k: int = 200,
    knn_temperature: float = 0.1,
    knn_majority_k: int = 20,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    max_iter: int = 50,
    write: bool = True,
) -> list[dict]:
    """Evaluate a pretraining run with kNN and linear probes at several label fractions.

    Args:
      workdir: the run directory (config.json + checkpoints/).
      label_fractions: fractions of the training labels, each in (0, 1].
      seed: draws the labelled subsets and validation splits (the same for every
        representation).
      representations: any of ``REPRESENTATIONS``.
      step: checkpoint to evaluate (default: the latest).
      test_split: the split that is scored (only scored: no choice looks at it).
      batch_size: images per feature-extraction batch.
      knn_k, knn_temperature: the weighted kNN; knn_majority_k: the majority-vote kNN.
      l2_grid, max_iter: the linear probe's L2 candidates and L-BFGS iterations.
      write: write ``workdir/eval.json`` and ``workdir/eval.md``.

    Returns:
      One dict per (representation, protocol, label fraction): representation, protocol,
      label_fraction, n_labels, top1, top5 (None when there are <= 5 classes), seed, step,
      and k and temperature (kNN) or l2, val_top1 and n_val (linear). Accuracies are in [0, 1].
    """
    t_start = time.perf_counter()
    unknown = sorted(set(representations) - set(REPRESENTATIONS))
    if unknown or not representations:
        raise ValueError(f"representations must be among {REPRESENTATIONS}, got {unknown}")
    fractions = sorted({float(f) for f in label_fractions})
    if not fractions or not all(0.0 < f <= 1.0 for f in fractions):
        raise ValueError(f"label fractions must be in (0, 1], got {list(label_fractions)}")

    encoder = load_encoder(workdir, step=step)
    config = encoder.config
    train_src = train.make_source(config)
    test_src = train.make_source(config, split=test_split)
    for src in (train_src, test_src):
        if src.image_shape[-1] != config.image_channels:
            raise ValueError(
                f"{src.name} has {src.image_shape[-1]}-channel images but the run was trained "
                f"on {config.image_channels} channels."
            )
    extractors = {}
    for name in representations:
        if name == "ssl":
            extractors[name] = encoder
        elif name == "random_init":
            extractors[name] = random_init_encoder(config)
        else:
            extractors[name] = functools.partial(raw_pixels, size=int(config.image_size))
    logs.console(
        f"evaluating {encoder.workdir} ({config.method}, checkpoint step {encoder.step}): "
        f"{config.dataset}, {len(train_src):,} train / {len(test_src):,} {test_split} images; "
        f"representations {', '.join(extractors)}"
    )
    t = time.perf_counter()
    train_x, train_y = extract_features(
        train_src, extractors, batch_size=batch_size, description="train features"
    )
    test_x, test_y = extract_features(
        test_src, extractors, batch_size=batch_size, description=f"{test_split} features"
    )
    logs.console(f"features extracted in {time.perf_counter() - t:.1f} s")
    num_classes = train_src.num_classes or int(train_y.max()) + 1
    _check_labels(train_y, num_classes, "training")
    _check_labels(test_y, num_classes, test_split)

    subsets = {
        f: class_balanced_subset(train_y, f, seed=seed, num_classes=num_classes) for f in fractions
    }
    knn_protocols = (
        ("knn", knn_k, knn_temperature),
        (f"knn_k{knn_majority_k}", knn_majority_k, None),
    )
    rows: list[dict] = []
    for name in extractors:
        stats = FeatureStats.of(train_x[name])  # standardisation + preconditioner, once
        normalized = None
        if name not in _LINEAR_ONLY:
            normalized = l2_normalize(train_x[name]), l2_normalize(test_x[name])
        for f in fractions:
            subset = subsets[f]
            common = dict(
                representation=name,
                label_fraction=f,
                n_labels=int(len(subset)),
                seed=seed,
                step=encoder.step,
            )
            if normalized is not None:
                t = time.perf_counter()
                bank, query = normalized
                new = _knn_rows(
                    query, test_y, bank[subset], train_y[subset], num_classes, knn_protocols
                )
                rows += [dict(common, **r) for r in new]
                logs.console(
                    f"  {name} kNN, {_fraction_name(f)} labels: top-1 "
                    + ", ".join(f"{_pct(r['top1'])}% ({r['protocol']})" for r in new)
                    + f" [{time.perf_counter() - t:.1f} s]"
                )
            t = time.perf_counter()
            probe = linear_probe(
                train_x[name],
                train_y,
                test_x[name],
                test_y,
                subset,
                num_classes=num_classes,
                seed=seed,
                l2_grid=tuple(l2_grid),
                max_iter=max_iter,
                stats=stats,
            )
            rows.append(dict(common, protocol="linear", **_pick(probe, _LINEAR_FIELDS)))
            logs.console(
                f"  {name} linear, {_fraction_name(f)} labels: top-1 {_pct(probe['top1'])}% "
                f"(l2={probe['l2']:g}, validation top-1 {_pct(probe['val_top1'])}%) "
                f"[{time.perf_counter() - t:.1f} s]"
            )

    rows = [_pick(r, _ROW_ORDER) for r in rows]
    table = format_table(rows)
    elapsed = time.perf_counter() - t_start
    logs.console(f"\nTop-1 / top-5 test accuracy (%), evaluated in {elapsed:.0f} s:\n{table}")
    if write:
        with open(os.path.join(encoder.workdir, "eval.json"), "w") as fh:
            json.dump(rows, fh, indent=1)
        notes = _notes(encoder, train_src, test_src, test_split, num_classes, seed, knn_protocols)
        with open(os.path.join(encoder.workdir, "eval.md"), "w") as fh:
            fh.write(f"{notes}\nTop-1 / top-5 {test_split} accuracy (%):\n\n{table}\n")
    return rows


def _knn_rows(query, query_labels, bank, bank_labels, num_classes, protocols) -> list[dict]:
    """One row per (name, k, temperature) in ``protocols``, from one neighbour search."""
    k_max = min(max(k for _, k, _ in protocols), len(bank))
    sims, labels = knn_neighbors(query, bank, bank_labels, k=k_max)
    rows = []
    for proto, k, temperature in protocols:
        k = min(k, len(bank))
        scores = knn_votes(sims, labels, num_classes=num_classes, k=k, temperature=temperature)
        rows.append(
            dict(
                protocol=proto,
                top1=topk_accuracy(scores, query_labels, 1),
                top5=topk_accuracy(scores, query_labels, 5),
                k=k,
                temperature=temperature,
            )
        )
    return rows


def _pick(d: dict, keys: Sequence[str]) -> dict:
    return {k: d[k] for k in keys if k in d}


_LINEAR_FIELDS = ("top1", "top5", "l2", "val_top1", "n_val")
_ROW_ORDER = (
    "representation",
    "protocol",
    "label_fraction",
    "n_labels",
    "top1",
    "top5",
    "seed",
    "step",
    "k",
    "temperature",
    "l2",
    "val_top1",
    "n_val",
)


def _notes(encoder, train_src, test_src, test_split, num_classes, seed, knn_protocols) -> str:
    c = encoder.config
    knn = "; ".join(
        f"{name}: k={k}, " + (f"votes exp(sim / {t:g})" if t else "majority vote")
        for name, k, t in knn_protocols
    )
    return (
        f"# Evaluation of {encoder.workdir}\n\n"
        f"{c.method}, checkpoint step {encoder.step}; {c.dataset}: {len(train_src):,} training "
        f"images, {len(test_src):,} {test_split} images, {num_classes} classes. Labelled "
        f"subsets are class-balanced (seed {seed}) and shared by every row.\n\n"
        f"- cosine kNN with the labelled subset as the memory bank ({knn}; k is capped at the "
        "subset size).\n"
        "- linear: logistic regression (L-BFGS, full batch) on standardised features; L2 "
        "chosen on a validation split of the labelled subset, then refitted on all of it.\n"
        "- random_init: the same encoder before training; raw_pixels: pixels in [0, 1].\n"
    )
