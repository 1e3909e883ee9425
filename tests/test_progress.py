"""Progress that never goes quiet (issue 17): the time-based progress line, the terminal bar, the
run's log file (train.log / eval.log) and the --verbose lines. No compilation here: a fake loop
and a fake clock; the evaluation's stage lines are checked in test_evaluate.py."""

import os
import time
import types

import numpy as np
import pytest

from ssl_jax import cli, console, hooks, logs, outputs


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class FakeWriter:
    def __init__(self):
        self.records = []

    def write(self, step, metrics):
        self.records.append((step, dict(metrics)))


def fake_loop(clock, *, log_every, total_steps=1000, start_step=0):
    config = types.SimpleNamespace(
        log_every=log_every, total_steps=total_steps, batch_size=8, eval_every=0
    )
    return types.SimpleNamespace(
        config=config,
        step=start_step,
        start_step=start_step,
        last=False,
        metrics={"loss": np.float32(2.5)},
        record={},
        writer=FakeWriter(),
        guard=types.SimpleNamespace(check=lambda loop: None),
        iterator=types.SimpleNamespace(steps_per_epoch=100),
        t_mark=clock(),
        step_mark=start_step,
        untimed_s=0.0,
    )


def run_steps(hook, loop, clock, n, seconds_per_step):
    for _ in range(n):
        clock.t += seconds_per_step
        loop.step += 1
        loop.last = loop.step == loop.config.total_steps
        if loop.step == loop.start_step + 1:  # as train.py does after the first step
            loop.t_mark, loop.step_mark = clock(), loop.step
        hook.after_step(loop)


@pytest.fixture(autouse=True)
def _no_log_left_open():
    logs.clear_pending()
    yield
    assert console._log is None and console._bar is None  # every test closes what it opened
    logs.set_verbose(False)


def test_a_progress_line_every_30_s_whatever_log_every(capsys):
    clock = FakeClock()
    loop = fake_loop(clock, log_every=10**9)
    hook = hooks.ProgressHook(bar=False, clock=clock)
    hook.start(loop)
    assert "compiling the train step (then steps 1-1000)" in capsys.readouterr().out
    run_steps(hook, loop, clock, 1, 50.0)  # the first step: the loop prints its compile time
    run_steps(hook, loop, clock, 5, 5.0)  # 25 s: still quiet
    assert capsys.readouterr().out == ""
    run_steps(hook, loop, clock, 1, 5.0)  # 30 s since the first step
    (line,) = capsys.readouterr().out.splitlines()
    # speed over the 6 steps since the first (48 images in 30 s), ETA from it
    assert "step 7/1000" in line and "loss 2.5000" in line and "2 img/s" in line
    assert line.endswith(logs.format_duration(993 * 8 / 1.6))
    assert loop.writer.records == []  # the time-based line is console only: metrics unchanged
    assert (loop.t_mark, loop.step_mark) == (1050.0, 1)  # ... and so is their speed's mark
    run_steps(hook, loop, clock, 5, 5.0)
    assert capsys.readouterr().out == ""  # 25 s since that line
    run_steps(hook, loop, clock, 1, 5.0)
    assert "step 13/1000" in capsys.readouterr().out
    hook.close(loop)


def test_log_every_lines_write_the_metrics_and_restart_the_quiet_clock(capsys):
    clock = FakeClock()
    loop = fake_loop(clock, log_every=4)
    hook = hooks.ProgressHook(bar=False, clock=clock)
    hook.start(loop)
    run_steps(hook, loop, clock, 8, 9.0)  # a line at steps 4 and 8, none in between
    lines = capsys.readouterr().out.splitlines()[1:]
    assert [line.split("step ")[1].split("/")[0] for line in lines] == ["4", "8"]
    assert [step for step, _ in loop.writer.records] == [4, 8]
    assert loop.writer.records[1][1]["images_per_s"] == pytest.approx(4 * 8 / 36.0)
    run_steps(hook, loop, clock, 3, 11.0)  # 33 s after the line of step 8
    assert "step 11/1000" in capsys.readouterr().out


def test_on_a_terminal_a_bar_moves_and_the_time_lines_go_to_the_log_only(tmp_path, capsys):
    clock = FakeClock()
    loop = fake_loop(clock, log_every=10**9, total_steps=20)
    hook = hooks.ProgressHook(bar=True, clock=clock)
    with logs.RunLog(str(tmp_path / "train.log")):
        hook.start(loop)
        run_steps(hook, loop, clock, 3, 31.0)
        logs.console("a message above the bar")
        hook.close(loop)
    out = capsys.readouterr().out
    assert "3/20" in out and "a message above the bar" in out  # tqdm's bar, and the line
    assert "step 3/20" not in out  # no plain progress line on the terminal...
    assert "step 3/20" in (tmp_path / "train.log").read_text()  # ...but in the log


def test_the_run_log_gets_the_console_lines_and_how_the_command_ended(tmp_path, capsys):
    path = tmp_path / "train.log"
    logs.console("printed before the log opened")
    logs.detail("malloc: a detail")  # not on the console unless verbose, always in the log
    with logs.RunLog(str(path)):
        logs.console("step 1")
    logs.console("after it closed")
    with pytest.raises(KeyboardInterrupt), logs.RunLog(str(path)):
        logs.console("step 2")
        raise hooks.TrainingInterrupted(2)
    with pytest.raises(ValueError), logs.RunLog(str(path)):
        raise ValueError("The dataset is gone: give another one.")
    text = path.read_text()
    lines = [line.split(" ", 1)[1] for line in text.splitlines() if not line.startswith("===")]
    assert lines == [
        "printed before the log opened",
        "malloc: a detail",
        "step 1",
        "after it closed",  # kept for the next log of this process
        "step 2",
        "stopped: interrupted after step 2; checkpoint saved",
        "stopped: The dataset is gone: give another one.",
    ]
    assert text.count("=== ") == 3  # a header (date, command, pid) per command
    assert "malloc" not in capsys.readouterr().out


def test_a_link_named_train_log_is_replaced_never_followed(tmp_path):
    target = tmp_path / "someone_elses_file"
    target.write_text("precious\n")
    os.symlink(target, tmp_path / "train.log")
    with logs.RunLog(str(tmp_path / "train.log")):
        logs.console("hello")
    assert target.read_text() == "precious\n"
    assert not os.path.islink(tmp_path / "train.log")
    text = (tmp_path / "train.log").read_text()
    assert "hello" in text and "replaced a symbolic link" in text
    os.mkdir(tmp_path / "eval.log")
    with pytest.raises(outputs.OutputError, match="is a directory"):
        logs.RunLog(str(tmp_path / "eval.log")).__enter__()


@pytest.mark.parametrize("verbose", [False, True])
def test_the_malloc_line_only_with_verbose(tmp_path, capsys, verbose):
    argv = [
        "pretrain",
        "--config",
        os.path.join(os.path.dirname(__file__), "..", "configs", "simclr_fashion_mnist.py"),
        "--workdir",
        str(tmp_path / "w"),
        "--config.dataset=folder:" + str(tmp_path / "missing"),
        "--config.data_in_memory=False",
    ]
    with pytest.raises(SystemExit, match="missing"):
        cli.main(["--verbose", *argv] if verbose else argv)
    out = capsys.readouterr().out
    assert ("malloc:" in out) == verbose
    assert "opening folder:" in out  # announced before the data is read
    log = (tmp_path / "w" / "train.log").read_text()  # what stopped the run is in its log
    assert "malloc:" in log and log.rstrip().splitlines()[-1].split(" ", 1)[1].startswith(
        "stopped: folder "
    )


def test_an_evaluation_stage_says_what_it_does_how_long_it_took_and_that_it_still_runs(capsys):
    from ssl_jax.evaluation.suite import Stages

    stage = Stages(2, quiet_s=0.05)
    with stage("maps", "t-SNE of 8 points"):
        time.sleep(0.3)  # one long computation that cannot report itself
    with stage("plots"):
        pass
    time.sleep(0.1)  # the stages' threads have stopped: nothing more
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[1/2] maps: t-SNE of 8 points ..."
    still = out[1:-3]
    assert still and all(line.startswith("  ... [1/2] maps: still running (00:0") for line in still)
    assert out[-3].startswith("[1/2] maps done in 0.") and out[-3].endswith(" s")
    assert out[-2] == "[2/2] plots ..." and out[-1].startswith("[2/2] plots done in 0.0 s")
