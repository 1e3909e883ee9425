"""Files written into a work directory: planted links are replaced or refused, never followed;
a full disk is one line naming the file, and nothing is left half-written."""

import errno
import os
import threading

import pytest

from ssl_jax import cli, logs, outputs
from ssl_jax.workdir_lock import WorkdirLock


@pytest.fixture
def victim(tmp_path):
    """Someone else's file, outside the work directory ``tmp_path / 'run'``."""
    (tmp_path / "run").mkdir()
    path = tmp_path / "notes.txt"
    path.write_text('{"step": 1, "loss": 0.5}\n')  # valid JSONL: the old writer appended to it
    return path


def _assert_one_line(e, *words):
    message = str(e.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_whole_files_replace_a_planted_link(tmp_path, victim):
    link = tmp_path / "run" / "eval.md"
    link.symlink_to(victim)
    outputs.write_text(str(link), "# report\n")
    assert victim.read_text() == '{"step": 1, "loss": 0.5}\n'
    assert not link.is_symlink() and link.read_text() == "# report\n"
    assert os.listdir(tmp_path / "run") == ["eval.md"]  # no temporary file left


def test_a_figure_replaces_a_planted_link(tmp_path, victim):
    """The planted training_curves.png of the fault report: evaluate overwrote its target."""
    from ssl_jax.evaluation.plots import plot_training_curves

    link = tmp_path / "run" / "training_curves.png"
    link.symlink_to(victim)
    plot_training_curves([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}], str(link))
    assert victim.read_text() == '{"step": 1, "loss": 0.5}\n'
    assert not link.is_symlink() and link.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), outputs.replacing(str(path)) as f:
        f.write("half of the new")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["config.json"]


@pytest.mark.parametrize("keep_through_step", [None, 0])
def test_metrics_through_a_planted_link_are_refused(tmp_path, victim, keep_through_step):
    """Appending through the link (or rewriting it) would change someone else's file, and
    replacing it would copy theirs into the run: refused, with the file and the fix."""
    run = tmp_path / "run"
    (run / "metrics.jsonl").symlink_to(victim)
    with pytest.raises(outputs.OutputError) as e:
        logs.MetricWriter(str(run), keep_through_step=keep_through_step)
    _assert_one_line(e, str(run / "metrics.jsonl"), "symbolic link", "rm ")
    assert victim.read_text() == '{"step": 1, "loss": 0.5}\n'


def test_foreign_metrics_files_and_tensorboard_dirs_are_refused(tmp_path, victim):
    run = tmp_path / "run"
    os.link(victim, run / "metrics.jsonl")  # a hard link: the same file under two names
    with pytest.raises(outputs.OutputError) as e:
        logs.MetricWriter(str(run))
    _assert_one_line(e, "hard link")
    os.remove(run / "metrics.jsonl")
    os.mkfifo(run / "metrics.jsonl")  # opening a FIFO to read or write blocks forever
    errors = []
    t = threading.Thread(target=lambda: errors.append(_raises(logs.MetricWriter, str(run), 3)))
    t.start()
    t.join(timeout=10)
    assert not t.is_alive() and "not a regular file" in str(errors[0])
    os.remove(run / "metrics.jsonl")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run / "tensorboard").symlink_to(elsewhere)
    with pytest.raises(outputs.OutputError) as e:
        logs.MetricWriter(str(run))
    _assert_one_line(e, str(run / "tensorboard"), "symbolic link")
    assert os.listdir(elsewhere) == []


def _raises(fn, *args):
    try:
        fn(*args)
    except outputs.OutputError as e:
        return e
    return None


def test_a_planted_lock_link_is_refused_not_truncated(tmp_path, victim):
    (tmp_path / "run" / ".lock").symlink_to(victim)
    with pytest.raises(outputs.OutputError), WorkdirLock(str(tmp_path / "run")):
        pass
    assert victim.read_text() == '{"step": 1, "loss": 0.5}\n'


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_on_the_metrics_rewrite(tmp_path, monkeypatch):
    """A restart rewrites metrics.jsonl without the steps it logs again; the disk is full."""
    lines = "".join(f'{{"step": {s}, "loss": {1 / s}}}\n' for s in range(1, 7))
    (tmp_path / "metrics.jsonl").write_text(lines)
    monkeypatch.setattr(outputs.os, "fsync", _enospc)
    with pytest.raises(outputs.OutputError) as e:
        logs.MetricWriter(str(tmp_path), keep_through_step=3)
    _assert_one_line(e, str(tmp_path / "metrics.jsonl"), "no space left", "Free some space")
    assert (tmp_path / "metrics.jsonl").read_text() == lines
    assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl"]  # no temporary file left


def test_disk_full_mid_record_leaves_whole_records(tmp_path, monkeypatch):
    """The disk fills in the middle of a record (one short write, then ENOSPC): the record is
    cut off again, in metrics.jsonl and in the TensorBoard file, and the error names the file."""
    from test_logs import shown

    w = logs.MetricWriter(str(tmp_path))
    w.write(1, {"loss": 1.0})
    real_write = os.write

    def full_after(whole_writes):
        calls = []

        def write(fd, data):
            calls.append(fd)
            if len(calls) <= whole_writes:
                return real_write(fd, data)
            if len(calls) == whole_writes + 1:
                return real_write(fd, bytes(data)[: len(data) // 2])
            _enospc()

        return write

    monkeypatch.setattr(os, "write", full_after(0))  # in the metrics.jsonl line of step 2
    with pytest.raises(outputs.OutputError) as e:
        w.write(2, {"loss": 0.5})
    _assert_one_line(e, str(tmp_path / "metrics.jsonl"), "no space left")
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "loss": 1.0}\n'
    monkeypatch.setattr(os, "write", full_after(1))  # in the event of step 3, after its line
    with pytest.raises(outputs.OutputError) as e:
        w.write(3, {"loss": 0.25})
    _assert_one_line(e, str(tmp_path / "tensorboard" / "events.out.tfevents."), "no space left")
    monkeypatch.setattr(os, "write", real_write)
    w.close()
    assert [r["step"] for r in logs.read_metrics(str(tmp_path))] == [1, 3]
    assert [p[:2] for p in shown(tmp_path / "tensorboard")] == [(1, "loss")]  # whole records


def test_the_cli_prints_an_output_error_in_one_line(monkeypatch):
    monkeypatch.setenv("SSL_JAX_MALLOC", "default")  # leave this process's malloc alone

    def full(argv):
        raise outputs.error("/runs/x/eval.json", OSError(errno.ENOSPC, "No space left"))

    monkeypatch.setitem(cli.COMMANDS, "evaluate", full)
    with pytest.raises(SystemExit) as e:
        cli.main(["evaluate", "--workdir", "/runs/x"])
    assert str(e.value.code).startswith("ssl-jax evaluate: Cannot write /runs/x/eval.json: no ")
    assert "\n" not in str(e.value.code)
