"""End-to-end pretraining on tiny synthetic data: methods, data parallelism, resume, failures."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from helpers import config_flags_for, tiny_config
from ssl_jax import logs, parallel
from ssl_jax.data import source_from_config as make_source
from ssl_jax.methods import byol, get_method
from ssl_jax.train import NonFiniteLossError, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_tiny_run_writes_everything(tmp_path, method):
    config = tiny_config(method, total_steps=4, checkpoint_every=2)
    result = train(config, str(tmp_path))
    records = logs.read_metrics(str(tmp_path))
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    expected = {
        "loss",
        "learning_rate",
        "l2_grads",
        "l2_params",
        "l2_updates",
        "embed_std",
        "images_per_s",
        "epoch",
    }
    expected |= {"contrastive_acc"} if method == "simclr" else {"tau"}
    assert expected <= set(records[0])
    assert all(np.isfinite(r["loss"]) for r in records)
    assert int(result.state.step) == 4
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
    assert json.load(open(tmp_path / "config.json"))["method"] == method
    assert os.listdir(tmp_path / "tensorboard")


def test_byol_tau_schedule_and_target_ema():
    # tau rises from base_tau to 1 on a cosine.
    taus = [float(byol.target_decay(jax.numpy.asarray(k), 0.996, 100)) for k in (0, 50, 100)]
    np.testing.assert_allclose(taus, [0.996, 0.998, 1.0], rtol=0, atol=1e-7)


def _steps(config, num_devices, n_steps):
    """Run n_steps of the jitted step on a mesh of num_devices; return losses and final params."""
    method = get_method(config.method)
    mesh = parallel.make_mesh(num_devices)
    repl = parallel.replicated(mesh)
    state = jax.jit(lambda k: method.init_state(config, k), out_shardings=repl)(jax.random.key(0))
    step = jax.jit(
        method.train_step,
        in_shardings=(repl, parallel.data_sharding(mesh), repl),
        out_shardings=(repl, repl),
        donate_argnums=(0,),
    )
    source = make_source(config)
    images = np.stack([source[i]["image"] for i in range(config.batch_size)])
    key = jax.random.key(1)
    losses = []
    compiled_before = step._cache_size()  # jit caches are shared by wrappers of one function
    for _ in range(n_steps):
        state, metrics = step(state, parallel.shard_batch({"image": images}, mesh), key)
        losses.append(float(metrics["loss"]))
    assert step._cache_size() - compiled_before == 1, "the train step must compile once"
    return np.array(losses), jax.device_get(state.params)


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_one_device_equals_eight_devices(method):
    """Negatives and BatchNorm statistics span the global batch, so sharding changes nothing."""
    config = tiny_config(method)
    losses1, params1 = _steps(config, 1, 3)
    losses8, params8 = _steps(config, 8, 3)
    np.testing.assert_allclose(losses8, losses1, rtol=2e-5, atol=2e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), params8, params1
    )
    assert len(set(np.round(losses1, 6))) == 3  # the steps did change the state


def test_batch_not_divisible_by_devices(tmp_path):
    with pytest.raises(ValueError, match="not divisible by the 8 devices.*batch_size=16"):
        train(tiny_config(batch_size=20), str(tmp_path))


def test_image_too_small_for_the_model_names_the_fix(tmp_path):
    config = tiny_config(
        **{"model.encoder": "resnet18", "model.resnet.stem": "imagenet", "image_size": 16}
    )
    with pytest.raises(ValueError, match="cifar"):
        train(config, str(tmp_path))


def test_nan_stops_with_the_step_and_keeps_last_good_checkpoint(tmp_path):
    config = tiny_config(
        total_steps=12,
        checkpoint_every=3,
        log_every=4,
        base_lr=1e30,
        lr_scaling="none",
        warmup_steps=0,
        optimizer="sgd",
    )
    with pytest.raises(NonFiniteLossError, match=r"at step \d+") as info:
        train(config, str(tmp_path))
    bad_step = int(str(info.value).split("at step ")[1].split(";")[0])
    kept = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
    assert all(k < bad_step for k in kept)


def test_nan_weights_under_a_finite_loss_stop_the_run_before_any_bad_save(tmp_path):
    """The weights go NaN after step 5 while the loss is still finite: the run stops at step 5,
    names the last good checkpoint (3) and never saves 5 or 6 (checkpoint_every=3)."""
    from faults import PoisonAfterStep

    config = tiny_config(total_steps=9, checkpoint_every=3, log_every=4)
    with pytest.raises(NonFiniteLossError, match="weights are NaN or Inf") as info:
        train(config, str(tmp_path), extra_hooks=[PoisonAfterStep(5)])
    assert "at step 5" in str(info.value) and "(step 3)" in str(info.value)
    assert sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == [3]
    assert max(r["step"] for r in logs.read_metrics(str(tmp_path))) == 4

    # Resumed from 3, a BatchNorm statistic goes NaN after step 4 (the loss and weights stay
    # finite): the whole-state check before the step-6 save stops the run; 6 is never saved.
    with pytest.raises(NonFiniteLossError, match="batch_stats hold NaN or Inf at step 6"):
        train(config, str(tmp_path), extra_hooks=[PoisonAfterStep(4, "batch_stats")])
    assert sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == [3]


def _run_cli(workdir, config, kill_before_step=None):
    """``ssl-jax pretrain`` in a process of its own (with tests/faults.py's kill hook if asked)."""
    env = {**os.environ, "PYTHONPATH": REPO}
    entry = ["-m", "ssl_jax"]
    if kill_before_step is not None:
        faults = os.path.join(REPO, "tests", "faults.py")
        entry = [faults, "--kill-before-step", str(kill_before_step)]
    cmd = [
        sys.executable,
        *entry,
        "pretrain",
        "--config",
        os.path.join(REPO, "configs", "simclr_fashion_mnist.py"),
        "--workdir",
        str(workdir),
        *config_flags_for(config),
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_killed_run_resumes_exactly(tmp_path, method):
    """SIGKILL after a checkpoint, restart with the same command: every later logged loss equals
    the uninterrupted run's."""
    config = tiny_config(method, total_steps=10, checkpoint_every=4, log_every=1)
    train(config, str(tmp_path / "ref"))  # the uninterrupted reference, in this process

    killed = _run_cli(tmp_path / "run", config, kill_before_step=7)
    assert killed.returncode == -9
    resumed = _run_cli(tmp_path / "run", config)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "at step 4" in resumed.stdout
    # Steps 5 and 6 were logged before the kill; the resumed run logs them again, once.
    assert "dropped 2 record(s) logged after step 4" in resumed.stdout
    assert "config differs" not in resumed.stdout

    expected = {r["step"]: r["loss"] for r in logs.read_metrics(str(tmp_path / "ref"))}
    records = logs.read_metrics(str(tmp_path / "run"))
    assert [r["step"] for r in records] == list(range(1, 11))
    for r in records:
        assert r["loss"] == expected[r["step"]], r["step"]


def test_head_pools_grid_features_is_the_globally_pooled_objective():
    """convnet grid=2 + head_pools: the head sees the global average of the 2x2 cells, so the
    projections equal those of the grid-1 network with the same weights, while the features keep
    the four cells (whose mean is the grid-1 feature)."""
    from flax import nnx

    from ssl_jax.methods import network as common

    x = jax.random.uniform(jax.random.key(1), (4, 16, 16, 1))
    pooled = common.build_network(tiny_config(), nnx.Rngs(0))
    cells = common.build_network(
        tiny_config(**{"model.convnet.grid": 2, "model.convnet.head_pools": True}), nnx.Rngs(0)
    )
    h1, z1 = pooled(x)
    h4, z4 = cells(x)
    assert h1.shape == (4, 16) and h4.shape == (4, 64)
    np.testing.assert_allclose(h4.reshape(4, 4, 16).mean(1), h1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z4, z1, rtol=1e-4, atol=1e-5)
    assert np.abs(h4.reshape(4, 4, 16) - h1[:, None]).max() > 1e-3  # the cells differ


def test_resume_reports_config_changes_and_refuses_another_model(tmp_path, capsys):
    """Restarting a run with a changed config says what changed; one whose checkpoint does not
    fit the new model is refused with a message naming the change and the way out."""
    workdir = str(tmp_path)
    train(tiny_config(total_steps=2, checkpoint_every=2), workdir)
    capsys.readouterr()
    train(tiny_config(total_steps=3, checkpoint_every=2), workdir)  # train one step longer
    out = capsys.readouterr().out
    assert "resumed from" in out and "the config differs" in out and "total_steps: 2 -> 3" in out
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["total_steps"] == 3  # config.json records the new values
    train(tiny_config(total_steps=3), workdir)
    assert "nothing to train: the checkpoint is at step 3" in capsys.readouterr().out

    wider = tiny_config(total_steps=4, **{"model.convnet.features": (8, 8, 8, 16)})
    with pytest.raises(ValueError, match="does not fit") as e:
        train(wider, workdir)
    assert "model.convnet.features: [4, 8, 8, 16] -> [8, 8, 8, 16]" in str(e.value)
    assert "saved (3, 3, 1, 4), now (3, 3, 1, 8)" in str(e.value)
    assert "new --workdir" in str(e.value)


def test_a_second_run_on_a_live_workdir_is_refused_and_a_stale_lock_taken_over(tmp_path):
    """While a run holds the work directory, another refuses at once, naming the holder, and
    writes nothing; a lock left by a killed process (SIGKILL) is taken over."""
    import signal
    import subprocess
    import sys

    from ssl_jax.workdir_lock import WorkdirLock

    config = tiny_config(total_steps=2, checkpoint_every=2)
    with WorkdirLock(str(tmp_path)):
        with pytest.raises(ValueError, match=r"is in use by a live run \(pid \d+ on .*\)"):
            train(config, str(tmp_path))
    assert not (tmp_path / "config.json").exists() and not (tmp_path / "metrics.jsonl").exists()

    holder = (
        "import os, signal; from ssl_jax.workdir_lock import WorkdirLock; "
        f"WorkdirLock({str(tmp_path)!r}).__enter__(); os.kill(os.getpid(), signal.SIGKILL)"
    )
    died = subprocess.run([sys.executable, "-c", holder], check=False)
    assert died.returncode == -signal.SIGKILL
    train(config, str(tmp_path))
    assert [r["step"] for r in logs.read_metrics(str(tmp_path))] == [1, 2]


def test_an_empty_workdir_or_a_file_is_an_error_naming_the_fix(tmp_path):
    from ssl_jax.run import Run

    for empty in ("", "  "):
        with pytest.raises(ValueError, match="work directory is empty"):
            Run(empty)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is a file: choose a directory"):
        Run(str(tmp_path / "f"))


def test_evaluate_and_embed_refuse_a_checkpoint_with_nan_weights(tmp_path):
    """A checkpoint with a NaN weight (as runs that diverged before the guard covered the
    weights saved) is refused by load_encoder (evaluate and embed) with a sentence naming it."""
    import jax.numpy as jnp

    from ssl_jax.evaluation import load_encoder
    from ssl_jax.run import Run

    train(tiny_config(total_steps=2, checkpoint_every=2), str(tmp_path))
    run = Run(str(tmp_path))
    state = run.restore_state()
    leaves, treedef = jax.tree.flatten(state.params)
    leaves[-1] = leaves[-1] * jnp.nan
    bad = state.replace(params=jax.tree.unflatten(treedef, leaves), step=jnp.asarray(3))
    ckpt = run.checkpointer(async_save=False)
    ckpt.save(3, bad, {})
    ckpt.close()
    with pytest.raises(ValueError, match="checkpoint of step 3 in .* has NaN or Inf weights"):
        load_encoder(str(tmp_path))
    assert load_encoder(str(tmp_path), step=2).step == 2  # the earlier one still loads
