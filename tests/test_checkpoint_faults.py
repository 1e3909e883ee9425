"""Checkpoints that can be trusted (issue 18, groups 2 and 4): damage to the newest step is
detected and restores fall back to the newest intact one; saves that cannot be written end at
once with one line instead of hanging.

The damage cases run on ONE tiny checkpoint directory (steps 1-3 of a small pytree saved with
the Checkpointer, no training), copied per case. The end-to-end check runs ``ssl-jax embed`` on a
copy of an old fixture run. The unwritable / full-disk saves run in a subprocess with a timeout:
the sandbox runs as root, where ``chmod 555`` does not stop writes, so the subprocess makes its
own mount namespace (``unshare -m``) for a read-only bind mount and a 300 KB tmpfs; as a
non-root user it uses ``chmod 555`` instead and leaves the full disk out.
"""

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ssl_jax import checkpoint_integrity as integrity
from ssl_jax.checkpoint import (
    CheckpointDamagedError,
    Checkpointer,
    CheckpointWriteError,
    NoIntactCheckpointError,
    checkpoint_id,
)

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def _tree(step: int) -> dict:
    rng = np.random.default_rng(step)
    return {
        "w": rng.normal(size=(64, 64)).astype(np.float32),
        "b": {"c": rng.normal(size=(300,)).astype(np.float32), "s": np.asarray(step, np.int32)},
    }


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """checkpoints/ with steps 1, 2, 3 (asynchronous saves, as training does)."""
    directory = str(tmp_path_factory.mktemp("pristine") / "checkpoints")
    ckpt = Checkpointer(directory, max_to_keep=3)
    for step in (1, 2, 3):
        ckpt.save(step, _tree(step), {"next_index": step})
    ckpt.close()
    return directory


@pytest.fixture
def ckpt_dir(pristine, tmp_path):
    directory = str(tmp_path / "checkpoints")
    shutil.copytree(pristine, directory)
    return directory


def _restore(directory, **kwargs):
    ckpt = Checkpointer(directory, max_to_keep=None, async_save=False)
    warnings = []
    try:
        step, state, data = ckpt.restore_intact(_tree(0), warn=warnings.append, **kwargs)
        return step, state, data, warnings, ckpt.all_steps()
    finally:
        ckpt.close()


def _data_files(step_dir):
    return sorted(
        glob.glob(os.path.join(step_dir, "state", "ocdbt.process_0", "d", "*")),
        key=os.path.getsize,
    )


def _write(path, data: bytes):
    with open(path, "wb") as f:
        f.write(data)


def _truncate_largest(s):
    path = _data_files(s)[-1]
    os.truncate(path, os.path.getsize(path) // 2)


def _zero_state(s):
    for path in glob.glob(os.path.join(s, "state", "**", "*"), recursive=True):
        if os.path.isfile(path):
            os.truncate(path, 0)


DAMAGE = {
    "truncated data file": _truncate_largest,
    "deleted data file": lambda s: os.remove(_data_files(s)[-1]),
    "garbage data file": lambda s: _write(_data_files(s)[-1], os.urandom(900)),
    "64 bytes overwritten": lambda s: _overwrite(_data_files(s)[-1], 100, b"\x7f" * 64),
    "deleted _METADATA": lambda s: os.remove(os.path.join(s, "state", "_METADATA")),
    "garbage _METADATA": lambda s: _write(os.path.join(s, "state", "_METADATA"), b"{garbage"),
    "deleted manifest.ocdbt": lambda s: os.remove(os.path.join(s, "state", "manifest.ocdbt")),
    "zero-length state files": _zero_state,
    "deleted iterator json": lambda s: os.remove(os.path.join(s, "data", "process_0-of-1.json")),
    "garbage iterator json": lambda s: _write(os.path.join(s, "data", "process_0-of-1.json"), b"x"),
    "empty iterator json": lambda s: _write(os.path.join(s, "data", "process_0-of-1.json"), b""),
    "deleted state/": lambda s: shutil.rmtree(os.path.join(s, "state")),
    "garbage integrity manifest": lambda s: _write(os.path.join(s, integrity.MANIFEST), b"[1"),
}


def _overwrite(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damage_to_the_newest_step_falls_back_to_the_previous_one(ckpt_dir, kind):
    DAMAGE[kind](os.path.join(ckpt_dir, "3"))
    step, state, data, warnings, _ = _restore(ckpt_dir)
    assert step == 2 and data == {"next_index": 2}
    np.testing.assert_array_equal(np.asarray(state["w"]), _tree(2)["w"])
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "checkpoint 3 (" in warnings[0] and "using step 2" in warnings[0]


def test_an_empty_integer_named_directory_is_skipped(ckpt_dir):
    os.mkdir(os.path.join(ckpt_dir, "1000"))  # e.g. a half-copied run
    step, _, _, warnings, _ = _restore(ckpt_dir)
    assert step == 3
    assert "checkpoint 1000 (no state/ directory" in warnings[0] and "using step 3" in warnings[0]


def test_every_single_flipped_byte_is_detected(ckpt_dir):
    step_dir = os.path.join(ckpt_dir, "3")
    rng = np.random.default_rng(0)
    files = [f for f in _data_files(step_dir) if os.path.getsize(f) > 0]
    files += [os.path.join(step_dir, "state", "_METADATA")]
    for path in files:
        offset = int(rng.integers(os.path.getsize(path)))
        with open(path, "rb") as f:
            original = f.read()
        flipped = bytearray(original)
        flipped[offset] ^= 0x40
        _write(path, bytes(flipped))
        problem = integrity.check(step_dir)
        assert problem and os.path.relpath(path, step_dir) in problem, (path, problem)
        _write(path, original)
    assert integrity.check(step_dir) is None


def test_a_checkpoint_from_before_manifests_restores_unverified_and_damage_still_falls_back(
    ckpt_dir,
):
    for step in (2, 3):  # as written before this change
        os.remove(os.path.join(ckpt_dir, str(step), integrity.MANIFEST))
    step, state, _, warnings, _ = _restore(ckpt_dir)
    assert step == 3 and warnings == []
    np.testing.assert_array_equal(np.asarray(state["b"]["c"]), _tree(3)["b"]["c"])
    _truncate_largest(os.path.join(ckpt_dir, "3"))  # found by the restore itself now
    step, state, _, warnings, _ = _restore(ckpt_dir)
    assert step == 2 and "checkpoint 3 (" in warnings[0]
    np.testing.assert_array_equal(np.asarray(state["w"]), _tree(2)["w"])


def test_pretrain_moves_damaged_steps_aside_and_saves_them_again(ckpt_dir):
    shutil.rmtree(os.path.join(ckpt_dir, "3", "state"))
    os.mkdir(os.path.join(ckpt_dir, "7"))
    step, _, _, warnings, steps = _restore(ckpt_dir, set_aside=True)
    assert step == 2 and steps == [1, 2]
    assert "checkpoints 7 (" in warnings[0] and "3 (" in warnings[0]
    assert "moved aside as 7.damaged, 3.damaged" in warnings[0]
    assert {"3.damaged", "7.damaged"} <= set(os.listdir(ckpt_dir))
    ckpt = Checkpointer(ckpt_dir, max_to_keep=3)
    ckpt.save(3, _tree(3), {"next_index": 3})  # no collision with the damaged one
    ckpt.close()
    assert _restore(ckpt_dir)[0] == 3


def test_no_intact_step_and_a_damaged_explicit_step_are_one_line_errors(ckpt_dir):
    _write(os.path.join(ckpt_dir, "2", "data", "process_0-of-1.json"), b"")
    with pytest.raises(CheckpointDamagedError, match=r"checkpoints/2 is damaged \(data/process"):
        _restore(ckpt_dir, step=2)
    for step in (1, 3):
        shutil.rmtree(os.path.join(ckpt_dir, str(step), "state"))
    with pytest.raises(NoIntactCheckpointError) as e:
        _restore(ckpt_dir)
    assert f"{ckpt_dir} holds no intact checkpoint" in str(e.value)
    assert "Delete that directory" in str(e.value) and "new --workdir" in str(e.value)
    # The same while a live run holds the work directory (it deletes and finalises steps as it
    # goes): no advice to delete its checkpoints, but to wait for the next one.
    from ssl_jax.workdir_lock import WorkdirLock

    with WorkdirLock(os.path.dirname(ckpt_dir)):
        with pytest.raises(NoIntactCheckpointError, match="a live run .pid .* try again after"):
            _restore(ckpt_dir)


def test_a_manifest_that_cannot_be_written_fails_the_save_and_publishes_no_step(
    ckpt_dir, monkeypatch
):
    """The manifest is written before Orbax renames the step into place: when it fails, the
    step never appears, and the failure ends the run as a CheckpointWriteError."""

    def fail(step_dir):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(integrity, "write_manifest", fail)
    ckpt = Checkpointer(ckpt_dir, max_to_keep=5)
    ckpt.save(4, _tree(4), {"next_index": 4})
    with pytest.raises(CheckpointWriteError, match="checkpoint 4 to .* failed .No space left"):
        ckpt.wait()
    ckpt.close()
    assert not os.path.exists(os.path.join(ckpt_dir, "4"))
    assert _restore(ckpt_dir)[0] == 3


def test_checkpoint_id_comes_from_orbax_step_metadata(ckpt_dir):
    ckpt = Checkpointer(ckpt_dir, max_to_keep=None, async_save=False)
    expected = ckpt.manager.metadata(3).init_timestamp_nsecs
    ckpt.close()
    assert isinstance(expected, int) and checkpoint_id(ckpt_dir, 3) == expected
    assert checkpoint_id(ckpt_dir, 3) != checkpoint_id(ckpt_dir, 2)
    assert checkpoint_id(ckpt_dir, 99) is None


def test_an_unwritable_directory_is_one_line_before_any_save(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    ckpt = Checkpointer(str(tmp_path / "checkpoints"))
    ckpt.directory = str(blocker / "checkpoints")  # its parent is a file: mkdir fails as root
    with pytest.raises(CheckpointWriteError, match="Cannot write checkpoints to .*file/checkpoint"):
        ckpt.save(1, _tree(1), {})
    ckpt.close()


_SAVE_SCRIPT = textwrap.dedent(
    """
    import os, subprocess, sys
    import numpy as np
    from ssl_jax.checkpoint import Checkpointer, CheckpointWriteError
    tree = {"w": np.random.default_rng(0).normal(size=(200, 200)).astype(np.float32)}

    def attempt(ckpt, step):
        try:
            ckpt.save(step, tree, {"i": step})
            ckpt.wait()
            print(f"{mode} saved {step}", flush=True)
        except CheckpointWriteError as e:
            print(f"{mode} error: {e}", flush=True)

    for mode in sys.argv[2:]:
        directory = os.path.join(sys.argv[1], mode)
        os.makedirs(directory)
        if mode == "full":  # a 300 KB disk: the first save fits, the next ones do not
            cmd = ["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", directory]
            subprocess.run(cmd, check=True)
        ckpt = Checkpointer(directory)
        attempt(ckpt, 1)
        if mode == "readonly":
            cmd = f"mount --bind {directory} {directory} && mount -o remount,ro,bind {directory}"
            subprocess.run(cmd, shell=True, check=True)
        elif mode == "chmod":
            os.chmod(directory, 0o555)
        attempt(ckpt, 2)
        ckpt.check_writable = lambda: None  # Orbax's own mkdir must fail at once too (no probe)
        attempt(ckpt, 3)
        ckpt.close()
        print(f"{mode} closed", flush=True)
    """
)


def _unshare_works() -> bool:
    try:
        probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def test_a_save_that_cannot_be_written_ends_at_once_instead_of_hanging(tmp_path):
    """Before: the save into a read-only checkpoints/ slept forever at 0% CPU inside Orbax.
    Now each failed save (read-only; full disk, the 2nd and 3rd saves) is one line naming the
    directory and the cause, Orbax's thread tracebacks are not printed, and close() returns."""
    if os.geteuid() != 0:  # chmod stops a non-root user; a full disk needs a tmpfs (root)
        cmd, modes = [sys.executable, "-c", _SAVE_SCRIPT], ["chmod"]
    elif _unshare_works():  # root: chmod stops nothing, so mounts in a namespace of its own
        cmd, modes = ["unshare", "-m", sys.executable, "-c", _SAVE_SCRIPT], ["readonly", "full"]
    else:
        pytest.skip("root without unshare -m: chmod would not stop writes")
    try:
        out = subprocess.run(
            [*cmd, str(tmp_path), *modes], capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        pytest.fail("a save that cannot be written hung (killed after 120 s)")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    for mode in modes:
        directory = str(tmp_path / mode)
        mine = [line[len(mode) + 1 :] for line in lines if line.startswith(mode + " ")]
        assert mine[0] == "saved 1" and mine[-1] == "closed" and len(mine) == 4, out.stdout
        cause = "No space left on device" if mode == "full" else "(Read-only|Permission denied)"
        for line in mine[1:3]:
            assert re.fullmatch(f"error: .* {re.escape(directory)} .*{cause}.*", line), line
        if mode != "full":  # the probe names it before Orbax is asked to write
            assert mine[1].startswith(f"error: Cannot write checkpoints to {directory} (")


def test_embed_falls_back_from_a_damaged_newest_checkpoint(tmp_path, capsys):
    """End to end: `ssl-jax embed` on a run whose newest step (4) has a truncated data file
    embeds with step 2 and says so in one line; `--step 4` is a one-line error."""
    from ssl_jax import cli

    workdir = str(tmp_path / "run")
    shutil.copytree(os.path.join(FIXTURES, "run_byol_ccc30d5"), workdir)
    for step in ("2", "4"):  # as a run of this version writes them
        integrity.write_manifest(os.path.join(workdir, "checkpoints", step))
    _truncate_largest(os.path.join(workdir, "checkpoints", "4"))
    out = str(tmp_path / "f.npy")
    args = ["embed", "--workdir", workdir, "--data", "synthetic", "--out", out]
    assert cli.main([*args, "--split", "test"]) == 0
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if line.startswith("warning: checkpoint 4")]
    assert len(warning) == 1 and "using step 2" in warning[0], err
    assert np.isfinite(np.load(out)).all()
    with pytest.raises(SystemExit, match="checkpoints/4 is damaged .state/ocdbt"):
        cli.main([*args, "--split", "test", "--step", "4"])
    with open(os.path.join(workdir, "checkpoints", "2", integrity.MANIFEST)) as f:
        assert json.load(f)["algorithm"] == "sha256"


def test_closed_loop_callbacks_of_a_failed_save_are_not_printed(ckpt_dir, monkeypatch):
    """On a full disk TensorStore's write callbacks call into Orbax's closed event loop from
    their own threads: ~60 'Event loop is closed' tracebacks reached sys.unraisablehook before
    the one-line error. Those are dropped; any other unraisable exception still goes through."""
    import asyncio
    import sys
    import types

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    Checkpointer(ckpt_dir).close()  # installs the filter in front of the hook
    loop = asyncio.new_event_loop()
    loop.close()
    try:
        loop.call_soon_threadsafe(print)
    except RuntimeError as e:
        closed = e
    other = ValueError("something else")
    for exc in (closed, other):
        sys.unraisablehook(
            types.SimpleNamespace(
                exc_type=type(exc), exc_value=exc, exc_traceback=exc.__traceback__,
                err_msg=None, object=None,
            )
        )  # fmt: skip
    assert [u.exc_value for u in seen] == [other]
