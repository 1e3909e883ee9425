"""A work directory from someone else, and the mistakes that deserve a sentence (issue 18, groups
7 and 8): a loaded config.json is checked like a command-line config, a ``folder:`` path it names
is never scanned unless laid out as an image folder (and is announced), the work-directory lock
comes before any checkpoint is read, and unwritable places are one line naming the fix.

Everything here stops before any JAX program is compiled: configs are pure Python, and the
commands fail at their first check. The read-only cases run in a subprocess of their own: as root
(the sandbox) in a mount namespace (``unshare -m``) with a read-only bind mount, since chmod does
not stop root; as another user with ``chmod 555``.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from ssl_jax import config as config_lib
from ssl_jax import recipes, saved_config
from ssl_jax.run import Run, evaluation_data

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def _saved(**changes) -> dict:
    """A complete config.json (base_config's) with top-level ``changes``."""
    saved = json.loads(config_lib.to_json(config_lib.base_config()))
    saved.update(changes)
    return saved


def _workdir(tmp_path, content) -> str:
    """A run directory whose config.json holds ``content`` (JSON unless a str)."""
    workdir = tmp_path / "run"
    workdir.mkdir(exist_ok=True)
    text = content if isinstance(content, str) else json.dumps(content)
    (workdir / "config.json").write_text(text)
    return str(workdir)


BAD_CONFIGS = {
    "a number for a string": (_saved(dataset=5), r"config\.dataset=5 must be a str"),
    "a string for an int": (_saved(batch_size="lots"), r"config\.batch_size='lots' must be an int"),
    "a float for an int": (_saved(batch_size=3.5), r"config\.batch_size=3\.5 must be an int"),
    "a bool for a number": (_saved(base_lr=True), r"config\.base_lr=True must be a float"),
    "null for a required field": (_saved(method=None), r"config\.method=None must be a str, not"),
    "a value for a group": (_saved(model="convnet"), r"config\.model='convnet' must be a group"),
    "an unknown field": (_saved(batchsize=32), r"unknown config field 'batchsize' \(did you mean"),
    "an unknown nested field": (
        _saved(model={"encoderr": "convnet"}),
        r"unknown config field 'model\.encoderr'",
    ),
    "a tuple of the wrong items": (
        _saved(model={"convnet": {"features": ["abc"]}}),
        r"config\.model\.convnet\.features=\('abc',\) is invalid: must be a tuple of int",
    ),
    "out of range": (_saved(momentum=2), r"config\.momentum=2\.0 is invalid: must be in \[0, 1\)"),
    "a folder read into memory": (
        _saved(dataset="folder:/tmp", data_in_memory=True),
        r"config\.data_in_memory=True",
    ),
    "a split that is a path": (
        _saved(train_split="../.."),
        r"config\.train_split='\.\./\.\.' is invalid: must be a split name",
    ),
    "an array": ([1, 2, 3], r"holds an array, not a run config"),
    "not JSON": ("{not json", r"is not valid JSON \(Expecting property name"),
}


@pytest.mark.parametrize("case", BAD_CONFIGS, ids=str)
def test_a_bad_config_json_is_one_line_naming_the_file_and_the_field(tmp_path, case):
    content, expected = BAD_CONFIGS[case]
    workdir = _workdir(tmp_path, content)
    with pytest.raises(ValueError, match=expected) as e:
        _ = Run(workdir).config
    message = str(e.value)
    assert message.startswith(os.path.join(workdir, "config.json") + " ") and "\n" not in message
    assert "that file" in message or "choose another run directory" in message


def test_a_config_json_that_is_a_fifo_or_endless_is_refused_without_blocking(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    os.mkfifo(workdir / "config.json")  # open() of a FIFO blocks until a writer comes
    with pytest.raises(ValueError, match=r"config\.json is not a regular file"):
        _ = Run(str(workdir)).config
    assert Run(str(workdir)).saved_config() is None
    os.remove(workdir / "config.json")
    os.symlink("/dev/zero", workdir / "config.json")  # reading it would never end
    with pytest.raises(ValueError, match=r"config\.json is not a regular file"):
        _ = Run(str(workdir)).config
    os.remove(workdir / "config.json")
    (workdir / "config.json").write_bytes(b" " * (saved_config.MAX_CONFIG_BYTES + 1))
    with pytest.raises(ValueError, match=r"is over 1 MB, too big for a config"):
        _ = Run(str(workdir)).config
    os.remove(workdir / "config.json")
    with pytest.raises(FileNotFoundError, match="is not a run directory: it has no config.json"):
        _ = Run(str(workdir)).config


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_old_runs_and_configs_missing_fields_still_load(tmp_path, method):
    """Fields the schema gained since take their defaults; renamed fields are migrated."""
    run = Run(os.path.join(FIXTURES, f"run_{method}_ccc30d5"))
    with open(run.config_path) as f:
        old = json.load(f)
    assert run.config == config_lib.from_dict(old) and run.config.method == method
    sparse = Run(_workdir(tmp_path, {"method": "byol", "temperature": 0.2, "batch_size": 64}))
    config = sparse.config
    assert (config.method, config.batch_size, config.simclr.temperature) == ("byol", 64, 0.2)
    assert config.seed == config_lib.base_config().seed


def test_every_recipe_saved_by_pretrain_loads_back_unchanged(tmp_path):
    for name in recipes.names():
        config = recipes.load(name)
        loaded = saved_config.from_saved(json.loads(config_lib.to_json(config)), name)
        assert loaded == config, name


def _folder(root, splits=("train", "test")):
    for split in splits:
        os.makedirs(os.path.join(root, split, "a"))
    return str(root)


def test_a_folder_named_by_a_run_is_read_only_when_laid_out_and_is_announced(tmp_path, capsys):
    """folder:/ (the whole file system) and a folder without the two splits are refused before
    anything is scanned; a train/test image folder (a run trained here) passes, announced."""
    workdir = _workdir(tmp_path, _saved())
    config = config_lib.base_config()
    for spec, why in [
        ("folder:/", "has no 'test/' sub-folder"),
        (f"folder:{_folder(tmp_path / 'only_train', ['train'])}", "has no 'test/' sub-folder"),
        (f"folder:{_folder(tmp_path / 'only_test', ['test'])}", "has no 'train/' sub-folder"),
        (f"folder:{tmp_path / 'missing'}", "is not a directory here"),
    ]:
        config.dataset = spec
        with pytest.raises(ValueError, match=f"names the data {spec}, which {why}: nothing was"):
            evaluation_data(config, workdir)
    config.dataset = f"folder:{_folder(tmp_path / 'imgs')}"
    assert evaluation_data(config, workdir, test_split="test") is config
    line = f"reading the run's data {config.dataset} (named in {workdir}/config.json)"
    assert line in capsys.readouterr().out
    config.dataset = "synthetic"  # not a folder: nothing to check, nothing printed
    assert evaluation_data(config, workdir) is config and capsys.readouterr().out == ""


def test_evaluate_on_a_run_naming_the_root_folder_stops_at_once(tmp_path, monkeypatch):
    """The fault report's case: `ssl-jax evaluate` on a run whose config.json says folder:/
    scanned the whole file system silently; now it is one line and nothing is scanned."""
    from ssl_jax import cli
    from ssl_jax.data import folder

    workdir = str(tmp_path / "run")
    shutil.copytree(os.path.join(FIXTURES, "run_byol_ccc30d5"), workdir)
    with open(os.path.join(workdir, "config.json")) as f:
        saved = json.load(f)
    saved.update(dataset="folder:/", data_image_size=16)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(saved, f)
    opened = []
    monkeypatch.setattr(folder.FolderSource, "__init__", lambda *a, **k: opened.append(a))
    with pytest.raises(SystemExit, match=r"names the data folder:/, which has no 'test/'"):
        cli.main(["evaluate", "--workdir", workdir, "--protocols=knn", "--noplots"])
    assert opened == []


def test_the_workdir_lock_is_taken_before_any_checkpoint_is_read(tmp_path, monkeypatch):
    """A second pretrain on a live run refuses before it reads, moves aside or writes anything
    (before: it restored, and could set damaged steps aside, and only then met the lock)."""
    from ssl_jax import train as train_lib
    from ssl_jax.workdir_lock import WorkdirLock

    workdir = str(tmp_path / "run")
    shutil.copytree(os.path.join(FIXTURES, "run_simclr_ccc30d5"), workdir)
    config = Run(workdir).config
    restores = []
    monkeypatch.setattr(train_lib, "init_or_restore", lambda *a: restores.append(a))
    with WorkdirLock(workdir):
        before = sorted(os.listdir(workdir))
        with pytest.raises(ValueError, match="is in use by a live run"):
            train_lib.train(config, workdir)
        assert restores == [] and sorted(os.listdir(workdir)) == before
    config.momentum = 2.0  # a bad config is refused before the work directory is made
    with pytest.raises(ValueError, match="config.momentum=2.0 is invalid"):
        train_lib.train(config, str(tmp_path / "new"))
    assert not (tmp_path / "new").exists() and restores == []


_UNWRITABLE_SCRIPT = textwrap.dedent(
    """
    import os, shutil, subprocess, sys
    from ssl_jax import cli
    root, fixture, mode = sys.argv[1:4]
    shutil.copytree(fixture, os.path.join(root, "run"))
    os.makedirs(os.path.join(root, "parent"))
    if mode == "readonly":
        subprocess.run(f"mount --bind {root} {root} && mount -o remount,ro,bind {root}",
                       shell=True, check=True)
    else:
        for d in (root, os.path.join(root, "run"), os.path.join(root, "parent")):
            os.chmod(d, 0o555)
    recipe = ["--config", "simclr_fashion_mnist", "--config.dataset=synthetic"]
    for name, argv in [
        ("pretrain-new", ["pretrain", *recipe, "--workdir", f"{root}/parent/new"]),
        ("pretrain-run", ["pretrain", *recipe, "--workdir", f"{root}/run"]),
        ("evaluate", ["evaluate", "--workdir", f"{root}/run", "--protocols=knn"]),
        ("export", ["export", "--workdir", f"{root}/run"]),
        ("embed", ["embed", "--workdir", f"{root}/run", "--data", "synthetic",
                   "--out", f"{root}/parent/f.npy"]),
    ]:
        try:
            print(name, "exit", cli.main(argv), flush=True)
        except SystemExit as e:
            print(name, "says", e, flush=True)
    """
)


def test_unwritable_work_directories_are_one_line_naming_the_fix(tmp_path):
    from test_checkpoint_faults import _unshare_works

    fixture = os.path.join(FIXTURES, "run_byol_ccc30d5")
    if os.geteuid() != 0:
        cmd, mode = [sys.executable, "-c", _UNWRITABLE_SCRIPT], "chmod"
    elif _unshare_works():
        cmd, mode = ["unshare", "-m", sys.executable, "-c", _UNWRITABLE_SCRIPT], "readonly"
    else:
        pytest.skip("root without unshare -m: chmod would not stop writes")
    root = str(tmp_path / "ro")
    os.makedirs(root)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(
            [*cmd, root, fixture, mode], capture_output=True, text=True, timeout=120, env=env
        )
    finally:
        for d in (root, f"{root}/run", f"{root}/parent"):
            if os.path.isdir(d):
                os.chmod(d, 0o755)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    said = dict(line.split(" says ", 1) for line in out.stdout.splitlines() if " says " in line)
    denied = "(read-only file system|no permission to write there)"
    expected = {
        "pretrain-new": f"Cannot write {root}/parent/new: {denied}. Choose a directory",
        "pretrain-run": f"Cannot write {root}/run/.lock: {denied}",
        "evaluate": f"Cannot write {root}/run/eval.log: {denied}.* Or pass --nowrite",
        "export": f"Cannot write {root}/run/exported: {denied}. Choose a directory .*--out",
        "embed": f"cannot write the --out files in '{root}/parent' .*choose another --out",
    }
    assert set(said) == set(expected), out.stdout + out.stderr[-2000:]
    for name, pattern in expected.items():
        assert re.match(f"ssl-jax {name.split('-')[0]}: {pattern}", said[name]), said[name]
        assert "\n" not in said[name]
