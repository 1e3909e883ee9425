"""Run output on process 0: ``metrics.jsonl`` and TensorBoard scalars. The console (progress
lines, a bar on a terminal, ``--verbose`` details, ``train.log`` / ``eval.log``) is
:mod:`ssl_jax.console`, re-exported here.

The files are written through :mod:`ssl_jax.outputs` (never through a link, never half a record)
and the TensorBoard events through :mod:`ssl_jax.tensorboard` (tensorboardX's protocol buffers).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

from ssl_jax import outputs
from ssl_jax.console import (  # noqa: F401 - re-exported: the console was part of this module
    EVAL_LOG,
    TRAIN_LOG,
    RunLog,
    StillRunning,
    TerminalBar,
    clear_pending,
    console,
    detail,
    format_duration,
    is_terminal,
    progress_line,
    quiet_for,
    set_verbose,
    to_log,
)
from ssl_jax.run import Run

# --- the run's metric writer ----------------------------------------------------------------


class MetricWriter:
    """Writes one JSON object per logged step to the run's ``metrics.jsonl`` and the same
    scalars to TensorBoard under its ``tensorboard/`` (paths: :class:`ssl_jax.run.Run`). Only
    process 0 should make one.

    ``keep_through_step``: a run (re)starting from the checkpoint of that step (0: from scratch)
    first drops the records of later steps, which the restarted run logs again, and any line a
    killed run left half-written; the file is rewritten atomically. ``dropped`` counts them. Its
    TensorBoard file purges the later steps of the earlier files (``purge_step``), so TensorBoard
    too shows each step once. None appends to the files as they are.

    ``metrics.jsonl`` or ``tensorboard/`` as a symbolic link (or other foreign file) is refused,
    and a failed write (disk full) raises, with one line naming the file
    (:class:`ssl_jax.outputs.OutputError`); the files then end at a whole record.
    """

    def __init__(self, workdir: str, keep_through_step: int | None = None):
        run = Run(workdir)
        try:
            os.makedirs(run.workdir, exist_ok=True)
        except OSError as e:
            raise outputs.error(run.workdir, e) from e
        self.jsonl_path = run.metrics_path
        self.dropped = 0
        outputs.check_own_file(self.jsonl_path)  # before reading it: a link, a FIFO
        if keep_through_step is not None and os.path.exists(self.jsonl_path):
            self.dropped = _truncate_records(self.jsonl_path, keep_through_step)
        self._jsonl = outputs.AppendFile(self.jsonl_path)
        purge = None if keep_through_step is None else int(keep_through_step) + 1
        from ssl_jax.tensorboard import EventWriter  # tensorboardX: only when writing metrics

        try:
            self._tb = EventWriter(run.tensorboard_dir, purge_step=purge)
        except BaseException:
            self._jsonl.close()
            raise

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        """Append the record of ``step`` to both files (OutputError when one fails)."""
        values = {k: v.item() if hasattr(v, "item") else v for k, v in metrics.items()}
        record = {"step": int(step), **{k: _jsonable(v) for k, v in values.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._tb.scalars(step, values)  # NaN as NaN: TensorBoard draws it

    def close(self) -> None:
        """Close both files (the TensorBoard one synced); idempotent."""
        try:
            self._jsonl.close()
        finally:
            self._tb.close()


def _truncate_records(path: str, last_step: int) -> int:
    """Keep the parseable records of ``path`` with ``step <= last_step``; return how many lines
    were dropped."""
    kept, dropped = [], 0
    with open(path, encoding="utf-8", errors="replace") as f:  # damaged bytes: lines dropped
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                keep = isinstance(record, dict) and int(record["step"]) <= last_step
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                keep = False
            if keep:
                kept.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
    if dropped:
        outputs.write_text(path, "".join(kept))
    return dropped


def _jsonable(v):
    v = v.item() if hasattr(v, "item") else v
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf; keep it readable rather than invalid
    return v


def read_metrics(workdir: str) -> list[dict]:
    """The records of the run's ``metrics.jsonl``, in order (as written: a kNN-monitor record
    may share its step with the step's loss record; ``ssl_jax.evaluation.plots.read_metrics``
    merges them). A resumed run's file holds each step once: see :class:`MetricWriter`."""
    path = Run(workdir).metrics_path
    records, bad = [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict) and "step" in record:
                records.append(record)
            else:
                bad += 1
    if bad:
        console(f"warning: {path}: {bad} line(s) that are not metric records were skipped")
    return records
