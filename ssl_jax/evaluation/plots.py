"""Pictures of a run: embedding maps (PCA, t-SNE), training curves and label efficiency.

    paths = write_plots('runs/simclr', rows=rows, test_features=x, test_labels=y,
                        class_names=source.class_names)

writes PNG files into the run directory and returns their paths; a picture whose inputs are
absent is skipped. Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas,
so nothing here touches pyplot's global state or needs a display. The maps come from
:mod:`ssl_jax.evaluation.maps` (PCA and exact t-SNE, van der Maaten & Hinton 2008) on a
class-balanced subsample, since t-SNE is O(N^2).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ssl_jax import outputs
from ssl_jax.evaluation.maps import pca, tsne
from ssl_jax.run import Run


def balanced_subsample(labels: np.ndarray, max_points: int, *, seed: int = 0) -> np.ndarray:
    """Indices of at most ``max_points`` points, as class-balanced as the class sizes allow.

    Every class contributes its first r points (in a seeded random order) before any class
    contributes r + 1, so small classes are kept whole and the rest is shared evenly.

    Returns:
      int [min(N, max_points)] indices in a random (seeded) order, a fair drawing order.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or max_points < 1:
        raise ValueError(f"need labels [N] and max_points >= 1, got {labels.shape}, {max_points}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(labels))
    rank = np.empty(len(labels), np.int64)  # each point's position within its class in perm
    for c in np.unique(labels):
        members = perm[labels[perm] == c]
        rank[members] = np.arange(len(members))
    position = np.empty(len(labels), np.int64)
    position[perm] = np.arange(len(labels))
    chosen = np.lexsort((position, rank))[:max_points]
    return chosen[rng.permutation(len(chosen))]


# --- figures ------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas renders PNG without pyplot or a display
    return fig


def _save(fig: Figure, path: str) -> str:
    # Rendered into a new file renamed over ``path``: a link planted there (a work directory
    # from someone else) is replaced, never written through; a killed run leaves no half PNG.
    with outputs.replacing(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100, facecolor="white")
    return path


def _palette(k: int) -> list:
    import matplotlib  # the colormap registry; no backend is touched

    if k <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(k)]
    if k <= 20:
        return [matplotlib.colormaps["tab20"](i) for i in range(k)]
    return [matplotlib.colormaps["turbo"](i / (k - 1)) for i in range(k)]


def plot_embedding(
    points: np.ndarray,
    labels: np.ndarray,
    path: str,
    *,
    class_names: Sequence[str] | None = None,
    title: str = "Test-set embeddings",
    xlabel: str = "dimension 1",
    ylabel: str = "dimension 2",
) -> str:
    """A scatter plot of 2-D points [N, 2] coloured by int class labels [N], with a legend of
    class names (or indices), written to ``path`` as PNG. Returns ``path``."""
    points, labels = np.asarray(points), np.asarray(labels)
    if points.ndim != 2 or points.shape[1] != 2 or labels.shape != (len(points),):
        raise ValueError(f"need points [N, 2] and labels [N], got {points.shape}, {labels.shape}")
    if len(labels) and labels.min() < 0:
        raise ValueError("class labels must be >= 0")
    k = int(labels.max()) + 1 if len(labels) else 0
    if class_names is not None and len(class_names) < k:
        raise ValueError(f"{len(class_names)} class names for labels up to {k - 1}")
    colors = np.asarray(_palette(max(k, 1)))
    fig = _figure(9.0, 6.5)
    ax = fig.add_subplot()
    ax.scatter(points[:, 0], points[:, 1], c=colors[labels], s=7, alpha=0.75, linewidths=0)
    ax.set_aspect("equal", adjustable="datalim")  # distances are what a map shows
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.2)
    present = np.unique(labels)
    handles = [
        ax.scatter([], [], color=colors[c], s=40, label=class_names[c] if class_names else str(c))
        for c in present
    ]
    fig.legend(handles=handles, loc="outside right center", title="class", frameon=False)
    return _save(fig, path)


def plot_embeddings(
    features: np.ndarray,
    labels: np.ndarray,
    outdir: str,
    *,
    class_names: Sequence[str] | None = None,
    max_points: int = 2000,
    perplexity: float = 30.0,
    seed: int = 0,
) -> list[str]:
    """``embedding_pca.png`` and ``embedding_tsne.png`` in ``outdir`` for features [N, F] and
    int labels [N]. Both maps are of the same class-balanced subsample of ``max_points`` (t-SNE
    is O(N^2); fitting the PCA on it too took 4 s instead of 36 s for 10,000 x 4,096 features).
    The perplexity is capped at a third of the subsample so that tiny inputs still have a valid
    calibration."""
    features, labels = np.asarray(features), np.asarray(labels)
    if features.ndim != 2 or labels.shape != (len(features),):
        raise ValueError(
            f"need features [N, F] and labels [N], got {features.shape}, {labels.shape}"
        )
    if len(features) < 8:
        raise ValueError(f"an embedding map needs at least 8 points, got {len(features)}")
    idx = balanced_subsample(labels, max_points, seed=seed)
    n = len(idx)
    proj, ratio = pca(features[idx], 2)
    pca_path = plot_embedding(
        proj,
        labels[idx],
        Run(outdir).figure("embedding_pca"),
        class_names=class_names,
        title=f"PCA of test-set embeddings ({n:,} of {len(features):,} points)",
        xlabel=f"PC 1 ({100 * ratio[0]:.1f}% of variance; feature units)",
        ylabel=f"PC 2 ({100 * ratio[1]:.1f}% of variance; feature units)",
    )
    perp = float(min(perplexity, (n - 1) / 3))
    maps = tsne(features[idx], perplexity=perp, seed=seed)
    tsne_path = plot_embedding(
        maps,
        labels[idx],
        Run(outdir).figure("embedding_tsne"),
        class_names=class_names,
        title=f"t-SNE of test-set embeddings ({n:,} points, perplexity {perp:g})",
        xlabel="t-SNE 1 (arbitrary units)",
        ylabel="t-SNE 2 (arbitrary units)",
    )
    return [pca_path, tsne_path]


def read_metrics(path: str) -> list[dict]:
    """The records of a run's ``metrics.jsonl`` (``path`` is the file or the run directory), one
    per step, sorted by step.

    Records of the same step are merged, later values winning: a resumed run that logs a step
    again overrides the first attempt, and a record carrying only some keys (a kNN-monitor
    record) adds to its step. Lines that do not parse (a run killed mid-write) are skipped;
    the strings 'nan' / 'inf' that the writer uses for non-finite values become floats.
    """
    if os.path.isdir(path):
        path = Run(path).metrics_path
    by_step: dict[int, dict] = {}
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                continue
            for key, value in record.items():
                if isinstance(value, str) and value.lower() in ("nan", "inf", "-inf"):
                    record[key] = float(value)
            by_step.setdefault(record["step"], {}).update(record)
    return [by_step[s] for s in sorted(by_step)]


def _series(records: Sequence[Mapping], key: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = [
        (r["step"], float(r[key]))
        for r in records
        if isinstance(r.get(key), int | float) and not isinstance(r.get(key), bool)
    ]
    pairs = [(s, v) for s, v in pairs if math.isfinite(v)]
    return np.asarray([s for s, _ in pairs]), np.asarray([v for _, v in pairs])


def plot_training_curves(records: Sequence[Mapping], path: str) -> str:
    """Training loss against step and, when logged, kNN-monitor top-1 (%) against step, from
    :func:`read_metrics` records; each metric uses the records that have it. Returns ``path``."""
    loss_steps, loss = _series(records, "loss")
    knn_steps, knn = _series(records, "knn_top1")
    panels = [(s, v) for s, v in ((loss_steps, loss), (knn_steps, knn)) if len(s)]
    if not panels:
        raise ValueError("the metrics have no finite 'loss' or 'knn_top1' values to plot")
    fig = _figure(6.0 * len(panels), 4.5)
    axes = fig.subplots(1, len(panels), squeeze=False, sharex=True)[0]
    ax = axes[0]
    if len(loss):
        ax.plot(loss_steps, loss, color="tab:blue", lw=1.5, marker="." if len(loss) < 50 else "")
        ax.set(title="Training loss", xlabel="training step", ylabel="loss (as logged)")
        ax.grid(alpha=0.3)
        ax = axes[-1]
    if len(knn):
        ax.plot(knn_steps, 100 * knn, color="tab:green", lw=1.5, marker="o", ms=4)
        ax.annotate(
            f"{100 * knn[-1]:.1f}%",
            (knn_steps[-1], 100 * knn[-1]),
            textcoords="offset points",
            xytext=(-4, 8),
            ha="right",
        )
        ax.margins(y=0.15)  # room for the final value's label
        ax.set(title="kNN monitor", xlabel="training step", ylabel="kNN top-1 accuracy (%)")
        ax.grid(alpha=0.3)
    return _save(fig, path)


BASELINES = ("raw_pixels", "random_init", "supervised")  # drawn muted and dashed
_BASELINE_STYLE = {"random_init": ("--", "s"), "raw_pixels": (":", "^"), "supervised": ("-.", "D")}


def plot_label_efficiency(rows: Sequence[Mapping], path: str) -> str:
    """Test top-1 accuracy (%) against the number of labels (log axis), one line per
    (representation, protocol) of the evaluation rows (``suite.evaluate``). Colour follows the
    protocol; representations in ``BASELINES`` are dashed and muted. Returns ``path``."""
    points: dict[tuple[str, str], list[tuple[int, float]]] = {}
    fractions: dict[int, float] = {}
    for r in rows:
        if r.get("top1") is None:
            continue
        key = (str(r["representation"]), str(r["protocol"]))
        points.setdefault(key, []).append((int(r["n_labels"]), 100 * float(r["top1"])))
        fractions.setdefault(int(r["n_labels"]), r.get("label_fraction"))
    if not points:
        raise ValueError("no evaluation rows with a top1 accuracy to plot")
    protocols = list(dict.fromkeys(p for _, p in points))
    colors = dict(zip(protocols, _palette(len(protocols)), strict=True))
    fig = _figure(10.0, 6.0)
    ax = fig.add_subplot()
    # The method's own lines first in the legend, then the baselines.
    for rep, proto in sorted(points, key=lambda k: k[0] in BASELINES):
        xs, ys = zip(*sorted(points[(rep, proto)]), strict=True)
        color = np.asarray(colors[proto])
        if rep in BASELINES:
            style, marker = _BASELINE_STYLE.get(rep, ("--", "v"))
            muted = 0.45 * color + 0.55 * np.array([0.6, 0.6, 0.6, 1.0])
            ax.plot(
                xs, ys, style, color=muted, lw=1.4, marker=marker, ms=5, label=f"{rep} · {proto}"
            )
        else:
            ax.plot(xs, ys, "-", color=color, lw=2.6, marker="o", ms=7, label=f"{rep} · {proto}")
    ns = sorted(fractions)
    ax.set_xscale("log")
    ax.set_xticks(
        ns,
        [f"{n:,}" + (f"\n({100 * fractions[n]:g}%)" if fractions[n] else "") for n in ns],
    )
    ax.xaxis.set_minor_formatter("")  # log-axis minor labels would clutter the real ticks
    ax.set_xlim(ns[0] / 1.6, ns[-1] * 1.6)
    ax.set(
        title="Label efficiency: test accuracy against the number of labels",
        xlabel="labelled training examples (log scale)",
        ylabel="test top-1 accuracy (%)",
    )
    ax.grid(alpha=0.3, which="major")
    fig.legend(loc="outside right center", title="representation · protocol", frameon=False)
    return _save(fig, path)


def write_plots(
    workdir: str,
    *,
    rows: Sequence[Mapping] | None = None,
    test_features: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    seed: int = 0,
    max_points: int = 2000,
) -> list[str]:
    """Every picture whose inputs are present, as PNG files in ``workdir``.

    Args:
      workdir: the run directory; ``metrics.jsonl`` there gives ``training_curves.png``.
      rows: evaluation rows for ``label_efficiency.png``; None reads ``workdir/eval.json`` if it
        exists.
      test_features, test_labels: [N, F] and int [N] for ``embedding_pca.png`` and
        ``embedding_tsne.png`` (both or neither).
      class_names: legend names per class index (default: the indices).
      seed, max_points: the embedding maps' subsample.

    Returns:
      The paths written.
    """
    if (test_features is None) != (test_labels is None):
        raise ValueError("give both test_features and test_labels, or neither")
    run = Run(workdir)
    os.makedirs(run.workdir, exist_ok=True)
    written = []
    if test_features is not None:
        written += plot_embeddings(
            test_features,
            test_labels,
            run.workdir,
            class_names=class_names,
            max_points=max_points,
            seed=seed,
        )
    if os.path.isfile(run.metrics_path):
        records = read_metrics(run.metrics_path)
        if any(_series(records, k)[0].size for k in ("loss", "knn_top1")):
            written.append(plot_training_curves(records, run.figure("training_curves")))
    if rows is None and os.path.isfile(run.eval_json):
        with open(run.eval_json) as f:
            rows = json.load(f)
    if rows and any(r.get("top1") is not None for r in rows):
        written.append(plot_label_efficiency(rows, run.figure("label_efficiency")))
    return written
