"""The ssl-jax command: usage, errors that name the fix, and multi-process training."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from faults import SigintBeforeStep
from helpers import config_flags_for, tiny_config
from ssl_jax import cli, logs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "configs", "simclr_fashion_mnist.py")


def test_usage(capsys):
    assert cli.main([]) == 0
    assert "pretrain" in capsys.readouterr().out
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err
    for command in ("pretrain", "evaluate"):
        assert cli.main([command, "--help"]) == 0
        assert "--workdir" in capsys.readouterr().out


def test_pretrain_help_lists_every_config_field_with_its_default(capsys):
    from ssl_jax.config import base_config, field_names

    assert cli.main(["pretrain", "--help"]) == 0
    out = capsys.readouterr().out
    listed = [line.split(" = ")[0].strip() for line in out.splitlines() if " = " in line]
    assert sorted(listed) == sorted(field_names(base_config()))
    # The default and the comment beside the field (or just above it) in ssl_jax/config.py.
    assert "  batch_size = 256  # GLOBAL batch over all devices and processes" in out
    assert "  model.conv_impl = 'auto'  # auto (winograd on CPU" in out
    assert "  total_steps = 1000\n" in out


def _pretrain_error(args) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main(["pretrain", *args])
    return str(info.value)


def test_unknown_config_field_suggests_the_right_one(tmp_path):
    msg = _pretrain_error(["--config", RECIPE, "--workdir", str(tmp_path), "--config.batch_sze=8"])
    assert "batch_sze" in msg and "batch_size" in msg


@pytest.mark.parametrize(
    "override, closest",
    [
        ("--config.modle.encoder=resnet18", "--config.model.encoder?"),  # a misspelt group
        ("--config.model.encodr=resnet18", "--config.model.encoder?"),  # a misspelt leaf
        ("--config.model.encoder.x=1", "--config.model.encoder?"),  # a leaf used as a group
        ("--config.modle=3", "--config.model.FIELD?"),
    ],
)
def test_misspelt_config_path_is_a_one_line_error(tmp_path, override, closest):
    """ml_collections raises KeyError / AttributeError / TypeError for these; the CLI turns each
    into the same one-line message naming the override and the closest schema field."""
    msg = _pretrain_error(["--config", RECIPE, "--workdir", str(tmp_path / "w"), override])
    path = override[len("--config.") :].split("=")[0]
    assert msg == (
        f"ssl-jax: unknown config field '{path}' (did you mean {closest}). "
        "See ssl_jax/config.py for every field."
    )
    assert not (tmp_path / "w").exists()


def test_bad_config_value_names_the_field(tmp_path):
    msg = _pretrain_error(["--config", RECIPE, "--workdir", str(tmp_path), "--config.method=moco"])
    assert "config.method='moco'" in msg


def test_none_override_sets_a_nullable_field_and_refuses_others(tmp_path):
    from ssl_jax import pretrain_args

    dino = ["--config", "dino_fashion_mnist", "--workdir", str(tmp_path)]
    _, config = pretrain_args.parse([*dino, "--config.weight_decay_end=None"])
    assert config.weight_decay_end is None  # the recipe's 0.4 -> a constant weight decay
    _, config = pretrain_args.parse([*dino, "--config.eval_finetune_fractions=none"])
    assert config.eval_finetune_fractions is None and config.weight_decay_end == 0.4
    msg = _pretrain_error([*dino, "--config.total_steps=None"])
    assert msg.startswith("ssl-jax: config.total_steps cannot be None: give it a value")
    assert "unknown config field 'dino.nope'" in _pretrain_error([*dino, "--config.dino.nope=None"])


def test_missing_workdir():
    assert "--workdir" in _pretrain_error(["--config", RECIPE])


def test_missing_dataset_says_how_to_get_it(tmp_path):
    msg = _pretrain_error(
        [
            "--config",
            RECIPE,
            "--workdir",
            str(tmp_path / "w"),
            "--config.dataset=tfds:cifar10",
            f"--config.data_dir={tmp_path / 'tfds'}",
            "--config.image_channels=3",
            "--config.image_size=32",
        ]
    )
    assert "cifar10" in msg and "tfds build" in msg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
    """Two local CPU processes (one device each), each feeding its half of the global batch,
    log the same losses as one process driving two devices."""
    config = tiny_config("simclr", total_steps=4, checkpoint_every=2, log_every=1)
    args = [
        sys.executable,
        "-m",
        "ssl_jax",
        "pretrain",
        "--config",
        RECIPE,
        *config_flags_for(config),
    ]
    base_env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    base_env.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu")

    one = subprocess.run(
        [*args, "--workdir", str(tmp_path / "one")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**base_env, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
    )
    assert one.returncode == 0, one.stderr[-3000:]

    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                *args,
                "--workdir",
                str(tmp_path / "two"),
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**base_env, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"},
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "2 process(es)" in outs[0][0]

    ref = logs.read_metrics(str(tmp_path / "one"))
    two = logs.read_metrics(str(tmp_path / "two"))
    assert [r["step"] for r in two] == [r["step"] for r in ref] == [1, 2, 3, 4]
    np.testing.assert_allclose([r["loss"] for r in two], [r["loss"] for r in ref], rtol=1e-5)
    assert sorted(os.listdir(tmp_path / "two" / "checkpoints")) == ["2", "4"]


def test_pretrain_then_evaluate(tmp_path, capsys):
    """The README's main job in miniature: pretrain, then the evaluation table and eval.json.
    The length is given in epochs: 1 epoch of 96 images at batch 32 is 3 steps."""
    config = tiny_config("simclr", batch_size=32, checkpoint_every=3, eval_at_end=True)
    # The recipe fine-tunes at 1% only; the override (parsed from the command line) picks 10%.
    flags = [f for f in config_flags_for(config) if not f.startswith("--config.total_steps=")]
    flags += ["--config.eval_finetune_fractions=(0.1,)", "--config.total_epochs=1"]
    assert cli.main(["pretrain", "--config", RECIPE, "--workdir", str(tmp_path), *flags]) == 0
    assert [r["step"] for r in logs.read_metrics(str(tmp_path))] == [1, 2, 3]
    saved = json.load(open(tmp_path / "config.json"))
    assert (saved["total_steps"], saved["total_epochs"]) == (3, 1)
    rows = json.load(open(tmp_path / "eval.json"))
    assert {(r["representation"], r["protocol"]) for r in rows} >= {
        ("ssl", "linear"),
        ("ssl", "knn"),
        ("raw_pixels", "linear"),
        ("random_init", "linear"),
        ("ssl", "finetune"),
    }
    assert {r["label_fraction"] for r in rows if r["protocol"] == "finetune"} == {0.1}
    assert "| ssl | linear |" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_preemption_signals_save_the_last_step_like_ctrl_c(tmp_path, capsys, name):
    """SLURM and Kubernetes send SIGTERM before SIGKILL, a closed terminal SIGHUP: the run saves
    the last completed step (6, although checkpoint_every=4), restores the handlers and exits
    128 + the signal's number; the same command resumes there (exactness: the Ctrl-C test)."""
    import signal

    from ssl_jax.checkpoint import Checkpointer

    signum = getattr(signal, name)
    handler = signal.getsignal(signum)
    config = tiny_config(total_steps=8, checkpoint_every=4, log_every=1)
    args = ["pretrain", "--config", RECIPE, "--workdir", str(tmp_path)]
    args += config_flags_for(config)
    assert cli.main(args, extra_hooks=[SigintBeforeStep(7, signum)]) == 128 + signum
    captured = capsys.readouterr()
    assert f"{name}: saving a checkpoint after this step" in captured.out
    assert "interrupted after step 6, which is checkpointed" in captured.err
    assert signal.getsignal(signum) is handler
    ckpt = Checkpointer(str(tmp_path / "checkpoints"))
    assert ckpt.all_steps() == [4, 6]
    ckpt.close()


def test_ctrl_c_saves_the_last_step_and_the_run_resumes_exactly(tmp_path, monkeypatch, capsys):
    """A first Ctrl-C (SIGINT, sent by the run itself before step 7) lets step 6 finish, saves
    its checkpoint although checkpoint_every=4, and exits 130 with a message; the same command
    then resumes at step 6 and logs the uninterrupted run's losses."""
    import signal

    from ssl_jax.checkpoint import Checkpointer
    from ssl_jax.train import train

    config = tiny_config(total_steps=8, checkpoint_every=4, log_every=1)
    train(config, str(tmp_path / "ref"))
    handler = signal.getsignal(signal.SIGINT)
    args = ["pretrain", "--config", RECIPE, "--workdir", str(tmp_path / "run")]
    args += config_flags_for(config)
    assert cli.main(args, extra_hooks=[SigintBeforeStep(7)]) == 130
    captured = capsys.readouterr()
    assert "Ctrl-C: saving a checkpoint after this step" in captured.out
    assert "interrupted after step 6, which is checkpointed" in captured.err
    assert signal.getsignal(signal.SIGINT) is handler  # the run's handler is gone
    ckpt = Checkpointer(str(tmp_path / "run" / "checkpoints"))
    assert ckpt.all_steps() == [4, 6]
    ckpt.close()
    assert cli.main(args) == 0
    assert "at step 6" in capsys.readouterr().out
    expected = {r["step"]: r["loss"] for r in logs.read_metrics(str(tmp_path / "ref"))}
    records = logs.read_metrics(str(tmp_path / "run"))
    assert [r["step"] for r in records] == list(range(1, 9))
    assert all(r["loss"] == expected[r["step"]] for r in records)


def test_version(capsys):
    import ssl_jax

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"ssl-jax {ssl_jax.__version__}\n"
    assert ssl_jax.__version__ not in ("", "0+unknown")  # the installed package's metadata


def test_recipes_lists_every_recipe_with_its_variants_and_shows_one(capsys):
    assert cli.main(["recipes"]) == 0
    out = capsys.readouterr().out
    for path in os.listdir(os.path.join(REPO, "configs")):
        assert f"\n{path[:-3]}\n    " in out
    assert "    :quick    a 20-step smoke test" in out
    assert cli.main(["recipes", "simclr_fashion_mnist:quick"]) == 0
    assert "  total_steps = 20\n" in capsys.readouterr().out


def test_pretrain_help_with_a_recipe_shows_its_values(capsys):
    args = ["pretrain", "--config", "simclr_fashion_mnist:quick", "--help"]
    assert cli.main([*args, "--config.batch_size=64"]) == 0
    out = capsys.readouterr().out
    assert "  total_steps = 20\n" in out  # the recipe's, not the default 1000
    assert "  base_lr = 0.075  # peak lr" in out  # with the schema's comment
    assert "  batch_size = 64  # GLOBAL batch" in out  # and the command line's


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--config", "configs/nope.py"], "no recipe file configs/nope.py"),
        (["--config=simclr_fashion_mnist:quik"], "use one of simclr_fashion_mnist:quick, "),
        (["--config", "simclr_fashon_mnist"], "(did you mean simclr_fashion_mnist"),
        (["--config", "NOGET"], "defines no get_config()"),
        (["--config", "RAISES"], "): RuntimeError: boom. Fix the recipe"),
        (
            ["--config", "simclr_fashion_mnist", "--config.model.convnet_features=abc"],
            "is now 'model.convnet.features': use --config.model.convnet.features",
        ),
        (
            ["--config", "simclr_fashion_mnist", "--config.model.convnet.features=abc"],
            "config.model.convnet.features=('abc',) is invalid: must be a tuple of int",
        ),
        (
            [
                "--config",
                "simclr_fashion_mnist",
                "--config.total_epochs=2",
                "--config.total_steps=5",
            ],
            "both given: set one of them",
        ),
    ],
)
def test_recipe_and_field_errors_are_one_line(tmp_path, args, expected):
    noget, raises = tmp_path / "noget.py", tmp_path / "raises.py"
    noget.write_text("x = 1\n")
    raises.write_text("def get_config(arg=None):\n    raise RuntimeError('boom')\n")
    args = [{"NOGET": str(noget), "RAISES": str(raises)}.get(a, a) for a in args]
    msg = _pretrain_error([*args, "--workdir", str(tmp_path / "w")])
    assert expected in msg and "\n" not in msg
    assert not (tmp_path / "w").exists()


def test_a_missing_recipe_file_is_one_line_as_a_user_types_it(tmp_path):
    """The whole process, as typed: no traceback (it was ~40 lines through ml_collections)."""
    out = subprocess.run(
        [sys.executable, "-m", "ssl_jax", "pretrain", "--config", "configs/nope.py"]
        + ["--workdir", str(tmp_path / "w")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"},
    )
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1, out.stderr[-3000:]
    assert lines[0].startswith("ssl-jax: no recipe file configs/nope.py: give an existing .py")
    assert lines[0].endswith("`ssl-jax recipes` lists them.")
