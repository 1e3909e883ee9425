"""Every method on one dataset and one protocol: pretrain each recipe, evaluate, print the table.

    python benchmarks/methods_table.py --root /tmp/methods_fmnist            # the CPU recipes
    python benchmarks/methods_table.py --root /tmp/full --variant full        # the GPU-sized ones

For each method, ``ssl-jax pretrain --config configs/<method>_<data>.py[:variant] --workdir
ROOT/<method> --config.eval_at_end=False`` (a finished run only resumes at its last step, so the
script can be stopped and started again), then ``ssl-jax evaluate --protocols=knn,linear
--noplots``: kNN (k=200, T=0.1) and the linear probe at 1% / 10% / 100% of the labels, on the same
class-balanced subsets for every row. The raw-pixel and random-init baselines are evaluated once,
in the first method's work directory (the random-init encoder is the same for every recipe that
shares the encoder and seed). The table goes to stdout as Markdown, with the linear probe's margin
over raw pixels at 1% of the labels.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("simclr", "byol", "simsiam", "barlow_twins", "vicreg", "moco_v3", "supcon")
FRACTIONS = (0.01, 0.1, 1.0)


def _run(args: list[str], log_path: str) -> None:
    print("$", " ".join(args), f"> {log_path}", flush=True)
    start = time.perf_counter()
    with open(log_path, "a") as log:
        subprocess.run(args, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    print(f"  {time.perf_counter() - start:.0f} s", flush=True)


def run_method(method: str, args: argparse.Namespace, baselines: bool) -> str:
    """Pretrain (or resume) and evaluate one method; returns its work directory."""
    workdir = os.path.join(args.root, method + args.suffix)
    config = os.path.join("configs", f"{method}_{args.data}.py")
    if args.variant:
        config += f":{args.variant}"
    cli = [sys.executable, "-m", "ssl_jax"]
    log = os.path.join(args.root, f"{method}{args.suffix}.log")
    pretrain = [*cli, "pretrain", "--config", config, "--workdir", workdir]
    _run([*pretrain, "--config.eval_at_end=False", *args.override], log)
    reps = "ssl,random_init,raw_pixels" if baselines else "ssl"
    evaluate = [*cli, "evaluate", "--workdir", workdir, "--protocols=knn,linear", "--noplots"]
    _run([*evaluate, f"--representations={reps}"], log)
    return workdir


def _top1(rows: list[dict], representation: str, protocol: str) -> dict[float, float]:
    return {
        r["label_fraction"]: 100 * r["top1"]
        for r in rows
        if r["representation"] == representation and r["protocol"] == protocol
    }


def table(workdirs: dict[str, str]) -> str:
    """The Markdown table of the methods' eval.json files, baselines from the first one."""
    results = {m: json.load(open(os.path.join(w, "eval.json"))) for m, w in workdirs.items()}
    first = results[next(iter(results))]
    raw = _top1(first, "raw_pixels", "linear")
    header = (
        "| representation | linear 1% | 10% | 100% | kNN 1% | 10% | 100% | linear 1% - raw pixels |"
    )
    lines = [header, "|" + " --- |" * 8]

    def row(name: str, linear: dict, knn: dict) -> str:
        cells = [f"{linear.get(f, float('nan')):.1f}" for f in FRACTIONS]
        cells += [f"{knn[f]:.1f}" if f in knn else "" for f in FRACTIONS]
        margin = linear.get(0.01, float("nan")) - raw.get(0.01, float("nan"))
        return f"| {name} | " + " | ".join(cells) + f" | {margin:+.1f} |"

    for method, rows in results.items():
        lines.append(row(method, _top1(rows, "ssl", "linear"), _top1(rows, "ssl", "knn")))
    lines.append(
        row(
            "random init", _top1(first, "random_init", "linear"), _top1(first, "random_init", "knn")
        )
    )
    lines.append(row("raw pixels", raw, _top1(first, "raw_pixels", "knn")))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="Folder of the work directories and logs.")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--data", default="fashion_mnist", help="Recipe suffix: configs/<m>_<data>.py"
    )
    parser.add_argument("--variant", default="", help="Recipe variant, e.g. full or quick.")
    parser.add_argument(
        "--override", action="append", default=[], help="Extra pretrain flag, e.g. --config.x=1."
    )
    parser.add_argument(
        "--suffix", default="", help="Work directories ROOT/<method><suffix> (a variant's runs)."
    )
    parser.add_argument(
        "--no-baselines", action="store_true", help="Evaluate the methods' encoders only."
    )
    parser.add_argument("--table-only", action="store_true", help="Only print the table.")
    args = parser.parse_args()
    os.makedirs(args.root, exist_ok=True)
    methods = args.methods.split(",")
    workdirs = {}
    for i, method in enumerate(methods):
        if args.table_only:
            workdirs[method + args.suffix] = os.path.join(args.root, method + args.suffix)
        else:
            baselines = i == 0 and not args.no_baselines
            workdirs[method + args.suffix] = run_method(method, args, baselines=baselines)
    print(table(workdirs))


if __name__ == "__main__":
    main()
