"""metrics.jsonl and the TensorFlow-free TensorBoard writer, decoded independently here."""

import glob
import json
import struct
import zlib

import pytest

from ssl_jax import logs


def test_crc32c_known_vectors():
    # RFC 3720 (iSCSI) test vectors for CRC-32C.
    assert logs.crc32c(b"123456789") == 0xE3069283
    assert logs.crc32c(bytes(32)) == 0x8A9136AA
    assert logs.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert logs.crc32c(b"123456789") != zlib.crc32(b"123456789")


def _read_records(path):
    with open(path, "rb") as f:
        buf = f.read()
    out, i = [], 0
    while i < len(buf):
        (n,) = struct.unpack("<Q", buf[i : i + 8])
        (len_crc,) = struct.unpack("<I", buf[i + 8 : i + 12])
        assert len_crc == logs._masked_crc(buf[i : i + 8])
        payload = buf[i + 12 : i + 12 + n]
        (crc,) = struct.unpack("<I", buf[i + 12 + n : i + 16 + n])
        assert crc == logs._masked_crc(payload)
        out.append(payload)
        i += 16 + n
    return out


def _parse(buf):
    """A minimal protobuf decoder: {field: [values]} (varint, 64-bit, bytes, 32-bit)."""
    fields, i = {}, 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            val, i = _varint(buf, i)
        elif wire == 1:
            val, i = buf[i : i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            val, i = buf[i : i + n], i + n
        elif wire == 5:
            val, i = buf[i : i + 4], i + 4
        else:
            raise AssertionError(f"bad wire type {wire}")
        fields.setdefault(field, []).append(val)
    return fields


def _varint(buf, i):
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, i


def test_metric_writer_jsonl_and_events(tmp_path):
    w = logs.MetricWriter(str(tmp_path))
    w.write(10, {"loss": 1.5, "learning_rate": 0.25})
    w.write(20, {"loss": float("nan"), "learning_rate": 0.5})
    w.close()

    records = logs.read_metrics(str(tmp_path))
    assert [r["step"] for r in records] == [10, 20]
    assert records[0]["loss"] == 1.5 and records[1]["loss"] == "nan"
    json.dumps(records)  # valid JSON throughout

    (events,) = glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
    payloads = _read_records(events)
    header = _parse(payloads[0])
    assert header[3] == [b"brain.Event:2"]
    scalars = {}
    for p in payloads[1:]:
        ev = _parse(p)
        step = ev[2][0]
        for value in _parse(ev[5][0])[1]:
            v = _parse(value)
            scalars[(step, v[1][0].decode())] = struct.unpack("<f", v[2][0])[0]
    assert scalars[(10, "loss")] == 1.5
    assert scalars[(20, "learning_rate")] == 0.5


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
