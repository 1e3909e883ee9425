"""metrics.jsonl and the TensorBoard event files, read back here as TensorBoard reads them."""

import glob
import json
import math
import os
import struct

import numpy as np
import pytest

from ssl_jax import logs
from ssl_jax import tensorboard as tb
from ssl_jax.evaluation import report
from ssl_jax.run import Run


def _events(path):
    """The Event protos of one file, checking each TFRecord's framing and CRCs; a record not
    yet whole at the end is left out, as TensorBoard does."""
    with open(path, "rb") as f:
        buf = f.read()
    i = 0
    while i + 12 <= len(buf):
        header, (n,) = buf[i : i + 8], struct.unpack("<Q", buf[i : i + 8])
        if i + 16 + n > len(buf):
            return
        assert struct.unpack("<I", buf[i + 8 : i + 12])[0] == tb.masked_crc32c(header)
        data = buf[i + 12 : i + 12 + n]
        assert struct.unpack("<I", buf[i + 12 + n : i + 16 + n])[0] == tb.masked_crc32c(data)
        yield tb.Event.FromString(data)
        i += 16 + n
    assert i == len(buf), f"{path} ends inside a record header"


def shown(logdir, *, purge=True):
    """[(step, tag, what)] as TensorBoard shows a run directory: its event files in name order,
    where a SessionLog START at step s drops what earlier events logged at steps >= s (the
    purge of TensorBoard's EventAccumulator). ``what``: a scalar's value, an image's (width,
    height), a text's string, or the hparams plugin's tag. ``purge=False``: every event."""
    points = []
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        for ev in _events(path):
            if purge and ev.session_log.status == tb.SessionLog.START:
                points = [p for p in points if p[0] < ev.step]
            for v in ev.summary.value:
                if v.HasField("image"):
                    what = (v.image.width, v.image.height)
                elif v.HasField("tensor"):
                    what = v.tensor.string_val[0].decode()
                elif v.metadata.plugin_data.plugin_name == "hparams":
                    what = "hparams"
                else:
                    what = v.simple_value
                points.append((ev.step, v.tag, what))
    return points


def _scalars(points, tag):
    return [(step, value) for step, t, value in points if t == tag]


def test_metric_writer_jsonl_and_events(tmp_path):
    w = logs.MetricWriter(str(tmp_path))
    w.write(10, {"loss": 1.5, "learning_rate": np.float32(0.25)})
    w.write(20, {"loss": float("nan"), "learning_rate": 0.5})
    w.close()

    records = logs.read_metrics(str(tmp_path))
    assert [r["step"] for r in records] == [10, 20]
    assert records[0]["loss"] == 1.5 and records[1]["loss"] == "nan"
    json.dumps(records)  # valid JSON throughout

    (events,) = glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
    assert next(_events(events)).file_version == "brain.Event:2"
    points = shown(tmp_path / "tensorboard")
    assert _scalars(points, "learning_rate") == [(10, 0.25), (20, 0.5)]
    (first, nan) = _scalars(points, "loss")
    assert first == (10, 1.5) and nan[0] == 20 and math.isnan(nan[1])  # NaN drawn, not dropped


def test_a_restart_shows_each_step_once_in_tensorboard(tmp_path):
    """Steps 1-6 logged, the run killed after the checkpoint of step 3, then restarted from it:
    TensorBoard (and metrics.jsonl) show steps 1-8 once each, 4-6 from the second attempt."""
    first = logs.MetricWriter(str(tmp_path), keep_through_step=0)
    for step in range(1, 7):
        first.write(step, {"loss": float(step)})
    # Killed here (nothing more is written by it); a restart from the checkpoint of step 3:
    again = logs.MetricWriter(str(tmp_path), keep_through_step=3)
    assert again.dropped == 3
    for step in range(4, 9):
        again.write(step, {"loss": 10.0 + step})
    again.close()
    first.close()

    expected = [(1, 1.0), (2, 2.0), (3, 3.0)] + [(s, 10.0 + s) for s in range(4, 9)]
    assert _scalars(shown(tmp_path / "tensorboard"), "loss") == expected
    # Without the purge event the steps 4-6 would show twice (what the old writer did).
    raw = [s for s, _ in _scalars(shown(tmp_path / "tensorboard", purge=False), "loss")]
    assert sorted(raw) == [1, 2, 3, 4, 4, 5, 5, 6, 6, 7, 8]
    assert [(r["step"], r["loss"]) for r in logs.read_metrics(str(tmp_path))] == expected
    try:  # TensorBoard's own reader, where it is installed (it is no dependency of ssl_jax)
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == expected


def test_an_evaluation_in_tensorboard(tmp_path):
    """The eval report, config, hyper-parameters, accuracies and pictures of a checkpoint; an
    evaluation of the same checkpoint again replaces them rather than adding a second set."""
    from PIL import Image

    run = Run(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"method": "simclr", "model": {"w": 2}}))
    Image.new("RGB", (6, 4)).save(tmp_path / "curves.png")
    rows = [
        dict(step=7, representation="ssl", protocol="knn", label_fraction=0.01, top1=0.5),
        dict(step=7, representation="ssl", protocol="knn", label_fraction=1.0, top1=0.75),
    ]
    for _ in range(2):  # the same evaluation twice
        report.write(run, rows, "| table |", description="# Evaluation", test_split="test")
        report.write_figures_to_tensorboard(run, [str(tmp_path / "curves.png")], step=7)
    points = shown(report.tensorboard_dir(run))
    assert sorted(points, key=str) == sorted(
        [
            (7, "top1/ssl/knn/labels_1pct", 0.5),
            (7, "top1/ssl/knn/labels_100pct", 0.75),
            (7, "figures/curves", (6, 4)),
            (7, "eval/text_summary", (tmp_path / "eval.md").read_text()),
            (
                7,
                "config/text_summary",
                '    {\n     "method": "simclr",\n     "model": {\n      "w": 2\n     }\n    }',
            ),
            (7, "_hparams_/experiment", "hparams"),
            (7, "_hparams_/session_start_info", "hparams"),
            (7, "_hparams_/session_end_info", "hparams"),
        ],
        key=str,
    )
    assert report.hparams({"method": "simclr", "model": {"w": 2, "f": [1, 2]}, "d": None}) == {
        "method": "simclr",
        "model.w": 2,
        "model.f": "[1, 2]",
    }


@pytest.mark.parametrize("seconds,text", [(5, "00:05"), (125, "02:05"), (3725, "1:02:05")])
def test_format_duration(seconds, text):
    assert logs.format_duration(seconds) == text


def test_progress_line_has_the_fields():
    line = logs.progress_line(50, 100, 1.25, 3.14159, 1234.5, 65)
    for part in ("step 50/100", "epoch 1.25", "loss 3.1416", "1,234 img/s", "ETA 01:05"):
        assert part in line
    # Before any step is timed there is no speed: no ETA rather than a huge one.
    for eta in (None, float("inf")):
        assert logs.progress_line(1, 100, 0.01, 3.0, 0.0, eta).endswith("ETA --:--")


def test_metric_writer_drops_records_after_the_restart_step(tmp_path):
    """A run restarting from the checkpoint of step 4 drops what it logged after step 4 (it logs
    those steps again) and a line a killed process left half-written; the rest is kept as is."""
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, 7)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 7, "lo')
    w = logs.MetricWriter(str(tmp_path), keep_through_step=4)
    assert w.dropped == 3
    w.write(5, {"loss": 0.5})
    w.close()
    records = logs.read_metrics(str(tmp_path))
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert records[2]["loss"] == 1.0 / 3 and records[4]["loss"] == 0.5
    # Without keep_through_step the file is appended to as it is.
    logs.MetricWriter(str(tmp_path)).close()
    assert [r["step"] for r in logs.read_metrics(str(tmp_path))] == [1, 2, 3, 4, 5]
    fresh = logs.MetricWriter(str(tmp_path), keep_through_step=0)  # a restart from scratch
    fresh.close()
    assert fresh.dropped == 5 and logs.read_metrics(str(tmp_path)) == []


def test_damaged_bytes_in_metrics_jsonl_are_dropped_not_a_traceback(tmp_path, capsys):
    """Random bytes in metrics.jsonl (a damaged disk, a stray write): a resume drops the lines
    that are not records, and reading the file skips them with a warning naming it."""
    good = json.dumps({"step": 1, "loss": 0.5}) + "\n"
    junk = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    (tmp_path / "metrics.jsonl").write_bytes(good.encode() + junk + b"\n")
    assert [r["step"] for r in logs.read_metrics(str(tmp_path))] == [1]
    assert "metrics.jsonl" in capsys.readouterr().out
    w = logs.MetricWriter(str(tmp_path), keep_through_step=1)
    w.write(2, {"loss": 0.25})
    w.close()
    assert w.dropped >= 1
    assert [r["step"] for r in logs.read_metrics(str(tmp_path))] == [1, 2]
