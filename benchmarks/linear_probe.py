"""How far the linear probe's fits get: fits from zero against the warm-started L2 path.

    python benchmarks/linear_probe.py --workdir runs/simclr_fmnist              # 1% labels
    python benchmarks/linear_probe.py --workdir runs/simclr_fmnist --fraction 0.1

Extracts the run's frozen features (as ``ssl-jax evaluate`` does), takes the class-balanced
labelled subset and validation split that the evaluation uses (same seed; above 10,000 labels the
evaluation chooses its L2 on a sample, this script on all of them), and for every L2 of the
probe's grid prints the objective (mean cross-entropy + l2/2 ||W||^2, float64, on the fitted rows),
validation and test top-1 of:

* a fit from zero with ``--iters`` L-BFGS iterations each (the probe before the L2 path), and
* the path: the grid from strongest to weakest, each fit started from the one before, with the
  first of ``--iters`` (what ``linear_probe`` does now).

A lower objective at the same L2 is a fit nearer its minimum; a probe whose validation accuracy
depends on the iteration budget chooses its L2 by the optimiser, not by the data.

    python benchmarks/linear_probe.py --workdir runs/simclr_fmnist --selection-seeds 5

instead compares how the L2 is chosen, over the labelled subsets of seeds 0..N-1: ``linear_probe``
with one 20% validation split by the lowest validation cross-entropy (its default), the same split
by the best validation top-1 (``select_by='top1'``), and 5-fold cross-validation by cross-entropy
(``cv_folds=5``), printing per seed the L2 each chose and its test top-1, then the mean and
spread (population std) of each.
"""

from __future__ import annotations

import argparse
import time

import common
import numpy as np

common.setup_imports()

import jax.numpy as jnp  # noqa: E402

from ssl_jax import data  # noqa: E402
from ssl_jax.evaluation import features, linear, load_encoder  # noqa: E402
from ssl_jax.evaluation.metrics import topk_accuracy  # noqa: E402
from ssl_jax.evaluation.splits import class_balanced_subset, validation_split  # noqa: E402


def objective(x, y, weights, l2, w, b) -> float:
    z = np.asarray(x, np.float64) @ np.float64(w) + np.float64(b)
    z -= z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    ce = -log_p[np.arange(len(y)), y]
    return float(np.sum(weights * ce) / np.sum(weights) + 0.5 * l2 * np.sum(np.float64(w) ** 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a pretraining run directory")
    parser.add_argument("--fraction", type=float, default=0.01, help="labelled fraction")
    parser.add_argument("--iters", default="50,1000", help="iteration budgets of the cold fits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--selection-seeds",
        type=int,
        default=0,
        help="compare the L2 choices (split by cross-entropy or top-1, 5-fold CV) over N seeds",
    )
    args = parser.parse_args()
    common.header("linear probe: fits from zero against the warm-started L2 path")
    encoder = load_encoder(args.workdir)
    config = encoder.config
    t = time.perf_counter()
    train_x, train_y = features.extract_features(data.source_from_config(config), {"ssl": encoder})
    test_x, test_y = features.extract_features(
        data.source_from_config(config, split="test"), {"ssl": encoder}
    )
    train_x, test_x = train_x["ssl"], test_x["ssl"]
    print(f"features {train_x.shape} / {test_x.shape} in {time.perf_counter() - t:.0f} s")
    num_classes = int(train_y.max()) + 1
    stats = linear.FeatureStats.of(train_x)
    if args.selection_seeds:
        compare_selection(train_x, train_y, test_x, test_y, stats, args, num_classes)
        return
    subset = class_balanced_subset(train_y, args.fraction, seed=args.seed, num_classes=num_classes)
    _, val_idx = validation_split(
        train_y, subset, fraction=0.2, seed=args.seed, num_classes=num_classes
    )
    is_val = np.isin(subset, val_idx)
    x, y = stats.standardize(train_x[subset]), train_y[subset].astype(np.int32)
    xt = stats.standardize(test_x)
    weights = (~is_val).astype(np.float32)
    basis = jnp.asarray(stats.basis)
    xd = jnp.asarray(x)
    fit_kw = dict(
        num_classes=num_classes,
        weights=weights,
        preconditioner_of=(basis, stats.eigvals),
        rotated=linear._rotate(xd, basis),
    )
    print(
        f"run {args.workdir} (step {encoder.step}); {len(subset)} labels "
        f"({args.fraction:g}), {int(is_val.sum())} held out for validation"
    )
    print("l2        fit                objective   val top-1  test top-1  seconds")

    def report(l2, name, w, b, seconds):
        val = topk_accuracy(x[is_val] @ w + b, y[is_val], 1)
        test = topk_accuracy(xt @ w + b, test_y, 1)
        obj = objective(x, y, weights, l2, w, b)
        print(f"{l2:<9g} {name:18s} {obj:10.5f}  {val:9.3f}  {test:10.4f}  {seconds:7.1f}")

    budgets = [int(i) for i in args.iters.split(",")]
    init = None
    for l2 in sorted(linear.DEFAULT_L2_GRID, reverse=True):
        for iters in budgets:
            t = time.perf_counter()
            w, b = linear.fit_logistic_regression(xd, y, l2=l2, max_iter=iters, **fit_kw)
            report(l2, f"from zero, {iters}", w, b, time.perf_counter() - t)
        t = time.perf_counter()
        w, b = linear.fit_logistic_regression(
            xd, y, l2=l2, max_iter=budgets[0], init=init, **fit_kw
        )
        init = (w, b)
        report(l2, f"path, {budgets[0]}", w, b, time.perf_counter() - t)


SELECTIONS = (  # (name, linear_probe arguments)
    ("split, CE", dict(cv_folds=1, select_by="cross_entropy")),  # the default
    ("split, top-1", dict(cv_folds=1, select_by="top1")),
    ("5-fold, CE", dict(cv_folds=5, select_by="cross_entropy")),
)


def compare_selection(train_x, train_y, test_x, test_y, stats, args, num_classes) -> None:
    print(f"L2 choice at {args.fraction:g} of the labels: chosen l2, validation top-1, test top-1")
    print("seed " + " | ".join(f"{name:>12s}:  l2   val   test" for name, _ in SELECTIONS))
    tops = {name: [] for name, _ in SELECTIONS}
    for seed in range(args.selection_seeds):
        subset = class_balanced_subset(train_y, args.fraction, seed=seed, num_classes=num_classes)
        cells = []
        for name, kwargs in SELECTIONS:
            p = linear.linear_probe(
                train_x, train_y, test_x, test_y, subset, num_classes=num_classes, seed=seed,
                stats=stats, **kwargs,
            )  # fmt: skip
            tops[name].append(p["top1"])
            cells.append(f"{p['l2_selected']:17g} {p['val_top1']:.3f} {p['top1']:.4f}")
        print(f"{seed:<4d} " + " | ".join(cells), flush=True)
    for name, _ in SELECTIONS:
        t = 100 * np.asarray(tops[name])
        print(
            f"{name:13s} test top-1 mean {t.mean():.2f}, std {t.std():.2f}, "
            f"range {t.min():.1f}-{t.max():.1f}"
        )


if __name__ == "__main__":
    main()
