"""The evaluation of one run: features once, every protocol, ``eval.json`` and ``eval.md``.

For each label fraction a class-balanced labelled subset of the training split is drawn once
(:mod:`ssl_jax.evaluation.splits`) and shared by every representation and protocol; the test
split is only ever scored. Representations:

  ssl          the run's encoder (latest checkpoint)
  random_init  the same architecture as initialised by ``init_state`` with the run's seed
  raw_pixels   flattened pixels in [0, 1] (linear probe only)
  supervised   random_init fine-tuned on the labelled subset (fine-tuning only): the
               supervised-from-scratch baseline

Protocols: ``knn`` (k=200, votes exp(sim / 0.1)), ``knn_k20`` (k=20, majority), both with the
labelled subset as the memory bank, ``linear`` (L2-regularised logistic regression) on frozen
features, and ``finetune`` (:mod:`ssl_jax.evaluation.finetune`: the whole encoder plus a linear
head trained on the labelled subset; ssl and supervised, by default at the fractions below 1).

Cost: fine-tuning is capped at 200 steps of 256 images a run (``default_finetune_steps``). On
Fashion-MNIST ssl and supervised at 1% and 10% (94 + 200 steps each) took 336 s with their scoring
on a 2-core CPU shared with other jobs (bare encoder forward+backward ~550 images/s there; ~2-2.5
minutes at an idle machine's ~1,000-1,500). 100% labels would add two 200-step runs, so it is
only fine-tuned on request (``finetune_fractions``); ``protocols=('knn', 'linear')`` skips it.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Sequence

import numpy as np

from ssl_jax import data, logs
from ssl_jax.checkpoint import checkpoint_id
from ssl_jax.evaluation.features import (
    extract_features,
    load_encoder,
    random_init_encoder,
    raw_pixels,
)
from ssl_jax.evaluation.finetune import (
    FinetuneHParams,
    default_finetune_steps,
    finetune_and_score,
)
from ssl_jax.evaluation.knn import knn_neighbors, knn_votes, l2_normalize
from ssl_jax.evaluation.linear import DEFAULT_L2_GRID, FeatureStats, linear_probe
from ssl_jax.evaluation.metrics import topk_accuracy
from ssl_jax.evaluation.splits import class_balanced_subset

REPRESENTATIONS = ("ssl", "random_init", "raw_pixels", "supervised")
PROTOCOLS = ("knn", "knn_k20", "linear", "finetune")  # the rows' names, default kNN settings
# What ``evaluate(protocols=...)`` selects: 'knn' is both kNN rows (one neighbour search).
PROTOCOL_CHOICES = ("knn", "linear", "finetune")
# The protocols each representation is evaluated with (when selected).
_PROTOCOLS_OF = {
    "ssl": ("knn", "linear", "finetune"),
    "random_init": ("knn", "linear"),
    "raw_pixels": ("linear",),
    "supervised": ("finetune",),
}
# How the linear probe chooses its L2 (linear_probe's select_by).
_PROBE_SELECT_BY = "cross_entropy"
# Table order: the run's encoder, the supervised baseline, then the frozen baselines.
_REPRESENTATION_RANK = {
    name: i for i, name in enumerate(("ssl", "supervised", "random_init", "raw_pixels"))
}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


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
      protocols: any of ``PROTOCOL_CHOICES`` ('knn' gives both kNN rows); leave out
        'finetune' for a quick evaluation.
      step: checkpoint to evaluate (default: the latest).
      test_split: the split that is scored (only scored: no choice looks at it).
      batch_size: images per feature-extraction (and fine-tuned scoring) batch.
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

    Returns:
      This call's rows, one dict per (representation, protocol, label fraction):
      representation, protocol, label_fraction, n_labels, top1, top5 (None when there are <= 5
      classes), seed, step, checkpoint_id (see :func:`ssl_jax.checkpoint.checkpoint_id`),
      test_split, and k and temperature (kNN), l2 (the final fit's),
      l2_selected (the grid value chosen), select_by, val_top1, val_ce and n_val (linear), or
      steps, batch_size, lr, encoder_lr and train_loss (finetune). Accuracies are in [0, 1].
    """
    t_start = time.perf_counter()
    unknown = sorted(set(representations) - set(REPRESENTATIONS))
    if unknown or not representations:
        raise ValueError(f"representations must be among {REPRESENTATIONS}, got {unknown}")
    unknown = sorted(set(protocols) - set(PROTOCOL_CHOICES))
    if unknown or not protocols:
        raise ValueError(f"protocols must be among {PROTOCOL_CHOICES}, got {unknown}")
    fractions = sorted({float(f) for f in label_fractions})
    if not fractions or not all(0.0 < f <= 1.0 for f in fractions):
        raise ValueError(f"label fractions must be in (0, 1], got {list(label_fractions)}")
    if finetune_fractions is None:
        ft_fractions = [f for f in fractions if f < 1.0]
    else:
        ft_fractions = sorted({float(f) for f in finetune_fractions})
        if not set(ft_fractions) <= set(fractions):
            raise ValueError(
                f"finetune_fractions must be among the label fractions {fractions}, got "
                f"{list(finetune_fractions)}"
            )
    if finetune_steps is not None and finetune_steps < 0:
        raise ValueError(f"finetune_steps must be >= 0 or None, got {finetune_steps}")
    if not ft_fractions:  # e.g. label_fractions=(1.0,) with the default finetune_fractions
        protocols = [p for p in protocols if p != "finetune"]
    pairs = {name: [p for p in _PROTOCOLS_OF[name] if p in protocols] for name in representations}
    pairs = {name: protos for name, protos in pairs.items() if protos}
    if not pairs:
        raise ValueError(
            f"no representation in {list(representations)} is evaluated with the protocols "
            f"{list(protocols)} at fine-tuning fractions {ft_fractions} (supervised: finetune "
            "only, by default at the label fractions below 1; raw_pixels: linear only)"
        )
    ft_hparams = FinetuneHParams(
        batch_size=finetune_batch_size, lr=finetune_lr, encoder_lr=finetune_encoder_lr
    )

    encoder = load_encoder(workdir, step=step)
    config = encoder.config
    train_src = data.source_from_config(config, unreadable="raise")  # score the images named
    test_src = data.source_from_config(config, split=test_split)
    for src in (train_src, test_src):
        if src.image_shape[-1] != config.image_channels:
            raise ValueError(
                f"{src.name} has {src.image_shape[-1]}-channel images but the run was trained "
                f"on {config.image_channels} channels."
            )
    random_init = None
    if "random_init" in pairs or "supervised" in pairs:
        random_init = random_init_encoder(config)
    extractors = {}  # the representations with a frozen-feature protocol
    for name, protos in pairs.items():
        if not set(protos) & {"knn", "linear"}:
            continue
        if name == "ssl":
            extractors[name] = encoder
        elif name == "random_init":
            extractors[name] = random_init
        else:
            extractors[name] = functools.partial(raw_pixels, size=int(config.image_size))
    logs.console(
        f"evaluating {encoder.workdir} ({config.method}, checkpoint step {encoder.step}): "
        f"{config.dataset}, {len(train_src):,} train / {len(test_src):,} {test_split} images; "
        + "; ".join(f"{name}: {', '.join(protos)}" for name, protos in pairs.items())
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

    ckpt_id = checkpoint_id(os.path.join(encoder.workdir, "checkpoints"), encoder.step)

    def common(name: str, f: float) -> dict:
        return dict(
            representation=name,
            label_fraction=f,
            n_labels=int(len(subsets[f])),
            seed=seed,
            step=encoder.step,
            checkpoint_id=ckpt_id,
            test_split=test_split,
        )

    for name in extractors:
        stats = FeatureStats.of(train_x[name])  # standardisation + preconditioner, once
        normalized = None
        if "knn" in pairs[name]:
            normalized = l2_normalize(train_x[name]), l2_normalize(test_x[name])
        for f in fractions:
            subset = subsets[f]
            if normalized is not None:
                t = time.perf_counter()
                bank, query = normalized
                new = _knn_rows(
                    query, test_y, bank[subset], train_y[subset], num_classes, knn_protocols
                )
                rows += [dict(common(name, f), **r) for r in new]
                logs.console(
                    f"  {name} kNN, {_fraction_name(f)} labels: top-1 "
                    + ", ".join(f"{_pct(r['top1'])}% ({r['protocol']})" for r in new)
                    + f" [{time.perf_counter() - t:.1f} s]"
                )
            if "linear" not in pairs[name]:
                continue
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
                select_by=_PROBE_SELECT_BY,
            )
            rows.append(dict(common(name, f), protocol="linear", **_pick(probe, _LINEAR_FIELDS)))
            logs.console(
                f"  {name} linear, {_fraction_name(f)} labels: top-1 {_pct(probe['top1'])}% "
                f"(l2={probe['l2_selected']:g} chosen: validation cross-entropy "
                f"{_num(probe['val_ce'])}, top-1 {_pct(probe['val_top1'])}%; refit with "
                f"{probe['l2']:.3g}) "
                f"[{time.perf_counter() - t:.1f} s]"
            )

    starts = {"ssl": encoder, "supervised": random_init}
    starts = {name: starts[name] for name in pairs if "finetune" in pairs[name]}
    if starts:
        t = time.perf_counter()
        for f in ft_fractions:
            labelled = train_src.read_batch(subsets[f])  # read once, shared by every start
            if not np.array_equal(np.asarray(labelled["label"]), train_y[subsets[f]]):
                raise ValueError(
                    f"{train_src.name} gave other labels on a second read of the labelled "
                    "subset: evaluation needs a deterministic source."
                )
            steps_f = finetune_steps
            if steps_f is None:
                steps_f = default_finetune_steps(len(subsets[f]), ft_hparams.batch_size)
            results = finetune_and_score(
                starts,
                labelled["image"],
                labelled["label"],
                test_src,
                num_classes=num_classes,
                steps=steps_f,
                seed=seed,
                hparams=ft_hparams,
                batch_size=batch_size,
                description=f"{_fraction_name(f)} labels",
            )
            rows += [dict(common(n, f), protocol="finetune", **r) for n, r in results.items()]
        logs.console(f"fine-tuning (with its scoring) took {time.perf_counter() - t:.1f} s")

    rank = _row_rank(knn_protocols)
    rows = [_pick(r, _ROW_ORDER) for r in sorted(rows, key=rank)]
    shown = rows
    if write:  # eval.json also keeps the rows of earlier runs of this checkpoint not redone here
        path = os.path.join(encoder.workdir, "eval.json")
        kept = _earlier_rows(path, rows, knn_protocols, ft_hparams)
        shown = sorted(kept + rows, key=rank)
        if kept:
            logs.console(
                f"kept {len(kept)} rows of the earlier evaluation of step {encoder.step} "
                f"(seed {seed}, {test_split} split) in eval.json: "
                + ", ".join(sorted({f"{r['representation']} {r['protocol']}" for r in kept}))
            )
    table = format_table(shown)
    elapsed = time.perf_counter() - t_start
    logs.console(f"\nTop-1 / top-5 test accuracy (%), evaluated in {elapsed:.0f} s:\n{table}")
    if write:
        logs.write_atomic(os.path.join(encoder.workdir, "eval.json"), json.dumps(shown, indent=1))
        notes = _notes(encoder, train_src, test_src, test_split, num_classes, seed, knn_protocols)
        notes += _finetune_notes(shown, ft_hparams)
        logs.write_atomic(
            os.path.join(encoder.workdir, "eval.md"),
            f"{notes}\nTop-1 / top-5 {test_split} accuracy (%):\n\n{table}\n",
        )
        if plots:
            from ssl_jax.evaluation.plots import write_plots  # matplotlib only when plotting

            t = time.perf_counter()
            written = write_plots(
                encoder.workdir,
                rows=shown,
                test_features=test_x.get("ssl"),
                test_labels=test_y if "ssl" in test_x else None,
                class_names=getattr(test_src, "class_names", None),
                seed=seed,
            )
            logs.console(
                f"pictures ({time.perf_counter() - t:.1f} s): "
                + ", ".join(os.path.basename(w) for w in written)
            )
    return rows


def _row_rank(knn_protocols):
    protocol_rank = {
        p: i for i, p in enumerate([*(p for p, _, _ in knn_protocols), "linear", "finetune"])
    }

    def rank(row: dict):
        return (
            _REPRESENTATION_RANK[row["representation"]],
            protocol_rank[row["protocol"]],
            row["label_fraction"],
        )

    return rank


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


def _row_key(row: dict) -> tuple:
    return row["representation"], row["protocol"], float(row["label_fraction"])


def _same_settings(row: dict, knn_protocols, hp: FinetuneHParams) -> bool:
    """Whether an earlier row was made with this call's settings for its protocol (what
    eval.md describes): kNN k and temperature, the linear probe with its L2 path (rows before
    it lack ``l2_selected``) choosing L2 as this one does (rows before ``select_by`` chose by
    validation top-1), the fine-tuning batch and learning rates."""
    knn = {name: (k, temperature) for name, k, temperature in knn_protocols}
    protocol = row["protocol"]
    if protocol in knn:
        k, temperature = knn[protocol]
        return row.get("k") == min(k, row["n_labels"]) and row.get("temperature") == temperature
    if protocol == "linear":
        return "l2_selected" in row and row.get("select_by") == _PROBE_SELECT_BY
    if protocol == "finetune":
        return (row.get("batch_size"), row.get("lr"), row.get("encoder_lr")) == (
            hp.batch_size,
            hp.lr,
            hp.encoder_lr,
        )
    return False


def _earlier_rows(path: str, rows: Sequence[dict], knn_protocols, hp: FinetuneHParams) -> list:
    """The rows of an existing ``eval.json`` to keep next to ``rows``: those of the same
    checkpoint (step and ``checkpoint_id``: a run deleted and trained again to the same step is
    another checkpoint), seed and test split (so the same labelled subsets and test images), made
    with the same settings (:func:`_same_settings`), whose (representation, protocol, label
    fraction) ``rows`` does not redo. The others describe another experiment and are dropped,
    with a message; so is a malformed row, and a file that is not a JSON list of rows is set
    aside as ``eval.json.unreadable``."""
    if not rows or not os.path.exists(path):
        return []
    try:
        with open(path) as fh:
            earlier = json.load(fh)
        if not isinstance(earlier, list):
            raise ValueError(f"a JSON list of rows was expected, got {type(earlier).__name__}")
    except (OSError, ValueError) as e:
        os.replace(path, path + ".unreadable")
        logs.console(
            f"warning: {path} is unreadable ({e}); moved to {path}.unreadable and rewritten "
            "from this run's rows"
        )
        return []
    same = {k: rows[0][k] for k in ("step", "checkpoint_id", "seed", "test_split")}
    redone = {_row_key(r) for r in rows}
    kept, dropped = [], 0
    for r in earlier:
        try:
            ok = (
                r["representation"] in _REPRESENTATION_RANK
                and all(r.get(k) == v for k, v in same.items())
                and _same_settings(r, knn_protocols, hp)
                and isinstance(r["top1"], float | int)
            )
            key = _row_key(r)
        except (KeyError, TypeError, ValueError, AttributeError):
            ok = False
        if ok and key not in redone:
            kept.append(r)
        elif not ok:
            dropped += 1
    if dropped:
        logs.console(
            f"dropped {dropped} rows of {path} made at another checkpoint, seed, split or with "
            "other settings"
        )
    return kept


def _pick(d: dict, keys: Sequence[str]) -> dict:
    return {k: d[k] for k in keys if k in d}


_LINEAR_FIELDS = ("top1", "top5", "l2", "l2_selected", "select_by", "val_top1", "val_ce", "n_val")
_ROW_ORDER = (
    "representation",
    "protocol",
    "label_fraction",
    "n_labels",
    "top1",
    "top5",
    "seed",
    "step",
    "checkpoint_id",
    "test_split",
    "k",
    "temperature",
    "l2",
    "l2_selected",
    "select_by",
    "val_top1",
    "val_ce",
    "n_val",
    "steps",
    "batch_size",
    "lr",
    "encoder_lr",
    "train_loss",
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
        "chosen by the lowest cross-entropy on a validation split of the labelled subset (the "
        "candidates fitted strongest first, each from the one before), then refitted on all of "
        "it with the same penalty per summed loss.\n"
        "- random_init: the same encoder before training; raw_pixels: pixels in [0, 1].\n"
    )


def _finetune_notes(rows: Sequence[dict], hp: FinetuneHParams) -> str:
    ft = [r for r in rows if r["protocol"] == "finetune"]
    if not ft:
        return ""
    steps = ", ".join(
        f"{r['steps']} steps at {_fraction_name(r['label_fraction'])}"
        for r in {r["label_fraction"]: r for r in ft}.values()
    )
    return (
        "- finetune: the whole encoder + a linear head (after a standardising BatchNorm) trained "
        f"on the labelled subset ({steps}; batch {hp.batch_size}; AdamW, peak lr {hp.lr:g} "
        f"head / {hp.encoder_lr:g} encoder, warmup-cosine, weight decay {hp.weight_decay:g}; "
        f"crop scale {hp.crop_scale} + flip; train-mode BatchNorm, eval mode for scoring). "
        "supervised: the same from random_init, with identical settings and batches.\n"
    )
