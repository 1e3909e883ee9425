"""Run output on process 0: ``metrics.jsonl``, TensorBoard scalars and the console progress line.

TensorBoard event files are written here without TensorFlow: an event file is a sequence of
TFRecords (length, masked CRC-32C, payload, masked CRC-32C) whose payloads are ``Event`` protocol
buffers; scalars need only four of their fields, which are encoded by hand below.
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import sys
import time
from collections.abc import Mapping

from ssl_jax.run import Run

# --- TFRecord framing -----------------------------------------------------------------------

_CRC32C_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC32C_TABLE.append(_c)


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum TFRecord uses."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(payload: bytes) -> bytes:
    """One TFRecord: uint64 length, masked crc of the length, payload, masked crc of payload."""
    length = struct.pack("<Q", len(payload))
    return (
        length
        + struct.pack("<I", _masked_crc(length))
        + payload
        + struct.pack("<I", _masked_crc(payload))
    )


# --- the few protobuf fields an Event needs -------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _len_field(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def event_proto(
    wall_time: float,
    step: int = 0,
    scalars: Mapping[str, float] | None = None,
    file_version: str | None = None,
) -> bytes:
    """``tensorflow.Event``: wall_time (1, double), step (2, int64), file_version (3), summary (5)
    holding ``Summary.Value`` entries of tag (1) and simple_value (2, float)."""
    out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time)
    out += _varint(2 << 3 | 0) + _varint(step)
    if file_version is not None:
        out += _len_field(3, file_version.encode())
    if scalars:
        summary = b"".join(
            _len_field(
                1,
                _len_field(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value),
            )
            for tag, value in scalars.items()
        )
        out += _len_field(5, summary)
    return out


class TensorBoardWriter:
    """Appends scalar summaries to ``events.out.tfevents.*`` in ``logdir``."""

    def __init__(self, logdir: str):
        os.makedirs(logdir, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = os.path.join(logdir, name)
        self._file = open(self.path, "ab")  # noqa: SIM115 - closed in close()
        self._file.write(tfrecord(event_proto(time.time(), file_version="brain.Event:2")))
        self._file.flush()

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        finite = {k: float(v) for k, v in values.items() if isinstance(v, int | float)}
        self._file.write(tfrecord(event_proto(time.time(), step, finite)))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


# --- the run's metric writer ----------------------------------------------------------------


class MetricWriter:
    """Writes one JSON object per logged step to the run's ``metrics.jsonl`` and the same
    scalars to TensorBoard under its ``tensorboard/`` (paths: :class:`ssl_jax.run.Run`). Only
    process 0 should make one.

    ``keep_through_step``: a run (re)starting from the checkpoint of that step (0: from scratch)
    first drops the records of later steps, which the restarted run logs again, and any line a
    killed run left half-written; the file is rewritten atomically. ``dropped`` counts them.
    None appends to the file as it is.
    """

    def __init__(self, workdir: str, keep_through_step: int | None = None):
        run = Run(workdir)
        os.makedirs(run.workdir, exist_ok=True)
        self.jsonl_path = run.metrics_path
        self.dropped = 0
        if keep_through_step is not None and os.path.exists(self.jsonl_path):
            self.dropped = _truncate_records(self.jsonl_path, keep_through_step)
        self._jsonl = open(self.jsonl_path, "a")  # noqa: SIM115 - closed in close()
        self._tb = TensorBoardWriter(run.tensorboard_dir)

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        record = {"step": int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        self._tb.scalars(step, {k: v for k, v in record.items() if k != "step"})

    def close(self) -> None:
        self._jsonl.close()
        self._tb.close()


def _truncate_records(path: str, last_step: int) -> int:
    """Keep the parseable records of ``path`` with ``step <= last_step``; return how many lines
    were dropped."""
    kept, dropped = [], 0
    with open(path) as f:
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
        write_atomic(path, "".join(kept))
    return dropped


def write_atomic(path: str, text: str) -> None:
    """Write to a temporary file beside ``path``, then rename it over ``path``: a killed run
    leaves the old file or the new one, never half of one."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _jsonable(v):
    v = v.item() if hasattr(v, "item") else v
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf; keep it readable rather than invalid
    return v


def read_metrics(workdir: str) -> list[dict]:
    """The records of the run's ``metrics.jsonl``, in order (as written: a kNN-monitor record
    may share its step with the step's loss record; ``ssl_jax.evaluation.plots.read_metrics``
    merges them). A resumed run's file holds each step once: see :class:`MetricWriter`."""
    with open(Run(workdir).metrics_path) as f:
        return [json.loads(line) for line in f if line.strip()]


def format_duration(seconds: float) -> str:
    """Seconds as MM:SS, or H:MM:SS from one hour."""
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def progress_line(
    step: int, total: int, epoch: float, loss: float, images_per_s: float, eta_s: float | None
) -> str:
    """The console progress line: bar, step, epoch, loss, images/s and ETA (``--:--`` while no
    speed is known yet: ``eta_s`` None or not finite)."""
    width = 20
    done = int(width * step / max(total, 1))
    bar = "#" * done + "." * (width - done)
    return (
        f"[{bar}] step {step}/{total}  epoch {epoch:.2f}  loss {loss:.4f}  "
        f"{images_per_s:,.0f} img/s  ETA "
        + (format_duration(eta_s) if eta_s is not None and math.isfinite(eta_s) else "--:--")
    )


def console(msg: str) -> None:
    """Print one line of progress, flushed at once (logs of long runs are read live)."""
    print(msg, file=sys.stdout, flush=True)
