"""An evaluation's report: the rows in table order, merged with the rows of an earlier
``eval.json`` that still describe the same experiment, and ``eval.json`` / ``eval.md`` written,
with the same results in TensorBoard (``tensorboard/eval/``: accuracies, the report, the
hyper-parameters of the run, and the pictures).

What a row is and which settings it records belong to its protocol
(:mod:`ssl_jax.evaluation.protocol`); this module only orders, merges, formats and writes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from ssl_jax import logs, outputs
from ssl_jax.evaluation.protocol import EvalInputs, Protocol, fraction_name, pct
from ssl_jax.run import Run

# Table order: the run's encoder, the supervised baseline, then the frozen baselines.
REPRESENTATION_ORDER = ("ssl", "supervised", "random_init", "raw_pixels")


def format_table(rows: Sequence[dict]) -> str:
    """A markdown table of top-1 / top-5 test accuracy (%): one line per (representation,
    protocol), one column per label fraction."""
    fractions = sorted({r["label_fraction"] for r in rows})
    n_labels = {r["label_fraction"]: r["n_labels"] for r in rows}
    keys = list(dict.fromkeys((r["representation"], r["protocol"]) for r in rows))
    cell = {(r["representation"], r["protocol"], r["label_fraction"]): r for r in rows}
    head = ["representation", "protocol"] + [
        f"{fraction_name(f)} ({n_labels[f]:,} labels)" for f in fractions
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rep, proto in keys:
        cells = []
        for f in fractions:
            r = cell.get((rep, proto, f))
            cells.append("" if r is None else f"{pct(r['top1'])} / {pct(r.get('top5'))}")
        lines.append("| " + " | ".join([rep, proto, *cells]) + " |")
    return "\n".join(lines)


def row_order(protocols: Sequence[Protocol]) -> Callable[[dict], tuple]:
    """The sort key of rows: representation (``REPRESENTATION_ORDER``), then protocol (the
    rows of ``protocols``, by rank), then label fraction."""
    representation_rank = {name: i for i, name in enumerate(REPRESENTATION_ORDER)}
    names = [name for p in protocols for name in p.row_names()]
    protocol_rank = {name: i for i, name in enumerate(names)}

    def key(row: dict) -> tuple:
        return (
            representation_rank[row["representation"]],
            protocol_rank[row["protocol"]],
            row["label_fraction"],
        )

    return key


def _row_key(row: dict) -> tuple:
    return row["representation"], row["protocol"], float(row["label_fraction"])


def _same_experiment(row: Any, same: dict, owners: dict[str, Protocol]) -> bool:
    """Whether an earlier row is of this checkpoint, seed and test split (``same``), of a known
    representation, and made with the settings of this evaluation's protocol of that name."""
    owner = owners.get(row["protocol"])
    return (
        row["representation"] in REPRESENTATION_ORDER
        and all(row.get(k) == v for k, v in same.items())
        and owner is not None
        and owner.same_settings(row)
        and isinstance(row["top1"], float | int)
    )


def earlier_rows(path: str, rows: Sequence[dict], protocols: Sequence[Protocol]) -> list[dict]:
    """The rows of an existing ``eval.json`` to keep next to ``rows``: those of the same
    checkpoint (step and ``checkpoint_id``: a run deleted and trained again to the same step is
    another checkpoint), seed and test split (so the same labelled subsets and test images), made
    with the settings of this evaluation's ``protocols`` (:meth:`Protocol.same_settings`), whose
    (representation, protocol, label fraction) ``rows`` does not redo. The others describe
    another experiment and are dropped, with a message; so is a malformed row, and a file that
    is not a JSON list of rows is set aside as ``eval.json.unreadable``."""
    if not rows or not os.path.exists(path):
        return []
    try:
        earlier = json.loads(outputs.read_own(path))  # never a link's target, never a FIFO
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
    owners = {name: p for p in protocols for name in p.row_names()}
    redone = {_row_key(r) for r in rows}
    kept, dropped = [], 0
    for r in earlier:
        try:
            ok = _same_experiment(r, same, owners)
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


def with_earlier_rows(run: Run, rows: list[dict], protocols: Sequence[Protocol]) -> list[dict]:
    """``rows`` (in table order) and the rows of ``run``'s eval.json they keep, in table
    order, with a console line naming those kept."""
    kept = earlier_rows(run.eval_json, rows, protocols)
    if kept:
        logs.console(
            f"kept {len(kept)} rows of the earlier evaluation of step {rows[0]['step']} "
            f"(seed {rows[0]['seed']}, {rows[0]['test_split']} split) in eval.json: "
            + ", ".join(sorted({f"{r['representation']} {r['protocol']}" for r in kept}))
        )
    return sorted(kept + rows, key=row_order(protocols))


def header(encoder: Any, data: EvalInputs) -> str:
    """eval.md's title and the paragraph that says what was evaluated on which data."""
    c = encoder.config
    return (
        f"# Evaluation of {encoder.workdir}\n\n"
        f"{c.method}, checkpoint step {encoder.step}; {c.dataset}: "
        f"{len(data.train_source):,} training images, {len(data.test_source):,} "
        f"{data.test_split} images, {data.num_classes} classes. Labelled subsets are "
        f"class-balanced (seed {data.seed}) and shared by every row.\n\n"
    )


def write(run: Run, rows: Sequence[dict], table: str, *, description: str, test_split: str) -> None:
    """``eval.json`` (the rows) and ``eval.md`` (the description, then the table), each
    written atomically (:mod:`ssl_jax.outputs`: a link there is replaced, never followed), and
    the same to TensorBoard (:func:`write_tensorboard`)."""
    report = f"{description}\nTop-1 / top-5 {test_split} accuracy (%):\n\n{table}\n"
    outputs.write_text(run.eval_json, json.dumps(list(rows), indent=1))
    outputs.write_text(run.eval_md, report)
    if rows:
        write_tensorboard(run, rows, report)


def tensorboard_dir(run: Run) -> str:
    """Where evaluations write TensorBoard events: ``tensorboard/eval`` of the run, a TensorBoard
    run of its own beside the training scalars."""
    return os.path.join(run.tensorboard_dir, "eval")


def write_tensorboard(run: Run, rows: Sequence[dict], report: str) -> None:
    """The evaluation of the rows' checkpoint step in TensorBoard: a scalar per row
    (``top1/REPRESENTATION/PROTOCOL/labels_1pct``, and top5), ``report`` (eval.md) as text, the
    run's config as text and as an HParams session whose metrics are the top-1 scalars.

    The file purges earlier evaluations of steps >= this one, so evaluating a checkpoint again
    replaces its results rather than doubling them."""
    from ssl_jax.tensorboard import EventWriter  # tensorboardX: only when writing

    step = int(rows[0]["step"])
    values: dict[str, float] = {}
    for r in rows:
        name = f"{r['representation']}/{r['protocol']}/labels_{100 * r['label_fraction']:g}pct"
        for k in ("top1", "top5"):
            if isinstance(r.get(k), int | float):
                values[f"{k}/{name}"] = float(r[k])
    config = run.saved_config() or {}
    outputs.check_own_dir(run.tensorboard_dir)  # not a link: eval/ would be made through it
    tb = EventWriter(tensorboard_dir(run), purge_step=step)
    try:
        tb.text(step, "eval", report)
        tb.text(step, "config", "    " + json.dumps(config, indent=1).replace("\n", "\n    "))
        top1 = {k: v for k, v in values.items() if k.startswith("top1/")}
        tb.hparams(step, hparams(config), top1)
        tb.scalars(step, {k: v for k, v in values.items() if k not in top1})
    finally:
        tb.close()


def write_figures_to_tensorboard(run: Run, paths: Sequence[str], *, step: int) -> None:
    """The PNG pictures at ``paths`` (an evaluation's, just written) in TensorBoard's Images
    tab at ``step``, tagged by file name (``figures/training_curves``); after
    :func:`write_tensorboard`, whose purge they must follow."""
    if not paths:
        return
    from ssl_jax.tensorboard import EventWriter  # tensorboardX: only when writing

    tb = EventWriter(tensorboard_dir(run))
    try:
        for path in paths:
            name = os.path.splitext(os.path.basename(path))[0]
            tb.png(step, f"figures/{name}", outputs.read_own(path))
    finally:
        tb.close()


def hparams(config: dict, prefix: str = "") -> dict[str, bool | int | float | str]:
    """A saved config (nested dicts) as flat hyper-parameters for TensorBoard: ``model.encoder``
    style names, lists as JSON text, None left out."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(hparams(value, prefix=f"{name}."))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        elif value is not None:
            flat[name] = json.dumps(value)
    return flat
