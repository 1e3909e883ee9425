"""The pretraining loop: data in, jitted steps, metrics and checkpoints out. Nothing else.

Resuming is exact: the state (including the step), the data iterator's position and the PRNG
(every step's key is ``fold_in(key(seed), step)``) all come back from the checkpoint, so a killed
run started again with the same command logs the same losses as one that was never interrupted.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import threading
import time
from typing import Any

import jax
import numpy as np

from ssl_jax import config as config_lib
from ssl_jax import data, logs, parallel
from ssl_jax.checkpoint import Checkpointer
from ssl_jax.methods import get_method


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf; the run stopped without saving the bad state."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped the run between two steps, after a checkpoint of the last
    completed step was saved (``step``); the same command resumes from it."""

    def __init__(self, step: int):
        super().__init__(f"interrupted after step {step}; checkpoint saved")
        self.step = step


class _StopOnSigint:
    """While installed, the first SIGINT only sets ``requested`` (the loop then saves and stops
    between steps); a second one interrupts at once. Active only in the main thread of a
    single-process run: with several processes a save is collective, and one process's Ctrl-C
    must not make it save alone."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logs.console("\nCtrl-C: saving a checkpoint after this step (Ctrl-C again to stop now)")

    def install(self) -> None:
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


@dataclasses.dataclass
class TrainResult:
    """What ``train`` returns: the final state (on the mesh), the last metrics, the workdir."""

    state: Any
    last_metrics: dict
    workdir: str


def make_source(config, split: str | None = None, *, unreadable: str | None = None):
    """The configured data source (for training, or another split for evaluation).

    For a ``folder:`` dataset, images load with ``config.image_channels`` channels, and
    ``unreadable`` says what an undecodable file does: 'substitute' (the next readable file,
    with a warning) or 'raise' (an error naming it). By default the training split substitutes
    (a shuffled stream) and every other split raises (evaluation must score the right images).
    """
    split = split or config.train_split
    kwargs: dict[str, Any] = {}
    if config.data_in_memory:
        kwargs["in_memory"] = True
    if config.dataset.startswith("folder:"):
        kwargs["channels"] = config.image_channels
        default = "substitute" if split == config.train_split else "raise"
        kwargs["unreadable"] = unreadable or default
    if config.dataset == "synthetic":
        shape = (config.image_size, config.image_size, config.image_channels)
        kwargs = dict(
            image_shape=shape,
            num_examples=config.synthetic_examples,
            num_classes=config.synthetic_classes,
        )
    return data.get_source(
        config.dataset,
        split=split,
        data_dir=config.data_dir,
        image_size=config.data_image_size,
        seed=config.seed,
        **kwargs,
    )


def _check_source(source, config) -> None:
    h, w, c = source.image_shape
    if c != config.image_channels:
        raise ValueError(
            f"The dataset {config.dataset!r} has {c}-channel images but "
            f"config.image_channels={config.image_channels}: set --config.image_channels={c}."
        )
    if min(h, w) < config.image_size:
        raise ValueError(
            f"The dataset's images are {h}x{w} but config.image_size={config.image_size} asks "
            f"for larger views: set --config.image_size to at most {min(h, w)} (or set "
            "config.data_image_size to upsample on the host)."
        )


def _abstract_state(init_fn, key, sharding):
    shapes = jax.eval_shape(init_fn, key)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def _first_nonfinite(steps: list[int], losses: list) -> tuple[int, float] | None:
    if not losses:
        return None
    values = np.asarray(jax.device_get(losses), dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    return (steps[bad[0]], float(values[bad[0]])) if bad.size else None


def train(config, workdir: str) -> TrainResult:
    """Pretrain as configured, writing checkpoints, metrics and the config into ``workdir``."""
    config_lib.validate(config)
    method = get_method(config.method)
    mesh = parallel.make_mesh(config.num_devices)
    parallel.check_global_batch(config.batch_size, mesh)
    is_main = jax.process_index() == 0
    workdir = os.path.abspath(workdir)

    source = make_source(config)
    _check_source(source, config)
    if len(source) < config.batch_size:
        raise ValueError(
            f"The dataset has {len(source)} images, fewer than one global batch "
            f"(config.batch_size={config.batch_size}): lower the batch size."
        )
    iterator = data.train_iterator(
        source,
        global_batch_size=config.batch_size,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        worker_count=config.num_workers,
    )
    steps_per_epoch = iterator.steps_per_epoch

    repl = parallel.replicated(mesh)
    key = jax.random.key(config.seed)
    init_fn = functools.partial(method.init_state, config)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints)
    latest = ckpt.latest_step()
    changes = config_changes(workdir, config) if latest is not None else []
    if latest is None:
        state = jax.jit(init_fn, out_shardings=repl)(key)
    else:
        abstract = _abstract_state(init_fn, key, repl)
        try:
            mismatches = ckpt.mismatches(latest, abstract)
        except Exception:  # noqa: BLE001 - no readable metadata: let the restore itself decide
            mismatches = []
        if mismatches:
            ckpt.close()
            shown = "; ".join(mismatches[:3]) + (
                f"; and {len(mismatches) - 3} more" if len(mismatches) > 3 else ""
            )
            raise ValueError(
                f"The checkpoint {ckpt.directory}/{latest} does not fit the model and optimizer "
                f"of this config ({shown}). Config changes since the run began: "
                f"{'; '.join(changes) or 'none found'}. Resume with the config saved in "
                f"{os.path.join(workdir, 'config.json')}, or give a new --workdir."
            )
        state, data_state = ckpt.restore(latest, abstract)
        iterator.set_state(data_state)
    start_step = int(state.step)

    if is_main:
        os.makedirs(workdir, exist_ok=True)
        logs.write_atomic(
            os.path.join(workdir, "config.json"),
            config.to_json_best_effort(indent=2, sort_keys=True),
        )
        writer = logs.MetricWriter(workdir, keep_through_step=start_step)
        n_dev = mesh.devices.size
        logs.console(
            f"ssl_jax {config.method}: {config.dataset} ({len(source):,} images, "
            f"{steps_per_epoch} steps/epoch), global batch {config.batch_size} on {n_dev} "
            f"{jax.devices()[0].platform} device(s), {jax.process_count()} process(es)"
        )
        if latest is not None:
            logs.console(f"resumed from {ckpt.directory}/{latest} at step {start_step}")
        if changes:
            logs.console(
                "the config differs from the one this run was started with (config.json now "
                "records the new values): " + "; ".join(changes)
            )
        if writer.dropped:
            logs.console(
                f"metrics.jsonl: dropped {writer.dropped} record(s) logged after step "
                f"{start_step} (they are logged again)"
            )
        if start_step >= config.total_steps:
            logs.console(
                f"nothing to train: the checkpoint is at step {start_step} and "
                f"config.total_steps={config.total_steps} (raise it to train longer)"
            )

    monitor = None
    if is_main and config.eval_every:
        from ssl_jax.evaluation.monitor import make_monitor  # evaluation imports this module

        monitor = make_monitor(config, source, lambda: make_source(config, config.eval_split))

    step_fn = jax.jit(
        method.train_step,
        in_shardings=(repl, parallel.data_sharding(mesh), repl),
        out_shardings=(repl, repl),
        donate_argnums=(0,),
    )
    # Global arrays are made under jit (device_put cannot place onto other processes' devices).
    key = jax.jit(lambda: jax.random.key(config.seed), out_shardings=repl)()

    pending_steps: list[int] = []
    pending_losses: list = []
    metrics: dict = {}
    t_last, step_last = time.perf_counter(), start_step
    t_start = t_last

    def check_finite() -> None:
        bad = _first_nonfinite(pending_steps, pending_losses)
        pending_steps.clear()
        pending_losses.clear()
        if bad is not None:
            step, value = bad
            ckpt.wait()
            kept = ckpt.latest_step()
            raise NonFiniteLossError(
                f"The loss is {value} at step {step}; the run stopped there. The last good "
                f"checkpoint ({'step ' + str(kept) if kept is not None else 'none'}) is kept. "
                "Lower config.base_lr, raise config.warmup_steps or use float32 compute."
            )

    # Fault injection for the resume tests: die by SIGKILL before this step, once every
    # checkpoint in flight is on disk ("killed after a checkpoint"); or send this process a
    # SIGINT (Ctrl-C) before that step.
    kill_at = int(os.environ.get("SSL_JAX_SIMULATE_KILL_AT_STEP", "0"))
    sigint_at = int(os.environ.get("SSL_JAX_SIMULATE_SIGINT_AT_STEP", "0"))
    saved_step = start_step  # the newest step with a checkpoint (saved or in flight)

    stop = _StopOnSigint()
    try:
        stop.install()
        for step in range(start_step + 1, config.total_steps + 1):
            if step == kill_at:
                ckpt.wait()
                os.kill(os.getpid(), signal.SIGKILL)
            if step == sigint_at:
                os.kill(os.getpid(), signal.SIGINT)
            if stop.requested:
                check_finite()
                if saved_step != step - 1:
                    ckpt.save(step - 1, state, iterator.get_state())
                ckpt.wait()
                raise TrainingInterrupted(step - 1)
            batch = next(iterator)
            images = parallel.shard_batch({"image": batch["image"]}, mesh)
            state, metrics = step_fn(state, images, key)
            pending_steps.append(step)
            pending_losses.append(metrics["loss"])
            if step == start_step + 1 and is_main:
                jax.block_until_ready(metrics["loss"])
                logs.console(
                    f"compiled and ran the first step in {time.perf_counter() - t_start:.1f} s"
                )
                t_last, step_last = time.perf_counter(), step

            last = step == config.total_steps
            knn = {}
            if monitor is not None and (step % config.eval_every == 0 or last):
                check_finite()
                t_knn = time.perf_counter()
                knn = monitor(state)
                logs.console(
                    f"step {step}: kNN monitor top-1 {100 * knn['knn_top1']:.1f}% "
                    f"[{time.perf_counter() - t_knn:.1f} s]"
                )
                t_last += time.perf_counter() - t_knn  # keep images/s about training
                if not (step % config.log_every == 0 or last):
                    writer.write(step, knn)
            if step % config.log_every == 0 or last:
                check_finite()
                host = {k: float(v) for k, v in jax.device_get(metrics).items()}
                host.update(knn)
                now = time.perf_counter()
                ips = (step - step_last) * config.batch_size / max(now - t_last, 1e-9)
                host.update(epoch=step / steps_per_epoch, images_per_s=ips)
                if is_main:
                    writer.write(step, host)
                    # No steps timed since the last line (the first step, its compile excluded):
                    # no speed, so no ETA.
                    eta = (config.total_steps - step) * config.batch_size / ips if ips > 0 else None
                    logs.console(
                        logs.progress_line(
                            step, config.total_steps, host["epoch"], host["loss"], ips, eta
                        )
                    )
                t_last, step_last = now, step
            if (config.checkpoint_every and step % config.checkpoint_every == 0) or last:
                check_finite()
                ckpt.save(step, state, iterator.get_state())
                saved_step = step
        ckpt.wait()
        if stop.requested:  # during the last step: trained and saved, but stop here
            raise TrainingInterrupted(saved_step)
    finally:
        stop.uninstall()
        ckpt.close()
        if is_main:
            writer.close()
    last_metrics = {k: float(v) for k, v in jax.device_get(metrics).items()} if metrics else {}
    return TrainResult(state=state, last_metrics=last_metrics, workdir=workdir)


def config_changes(workdir: str, config) -> list[str]:
    """``'key: saved -> now'`` for each field of ``config`` whose value differs from the run's
    ``workdir/config.json`` (fields the saved file lacks, added to the schema since, are not
    changes). Empty when there is no readable saved config."""
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            saved = _flatten(json.load(f))
    except (OSError, json.JSONDecodeError):
        return []
    now = _flatten(json.loads(config.to_json_best_effort()))
    return [
        f"{key}: {saved[key]!r} -> {now.get(key, '(absent)')!r}"
        for key in sorted(saved)
        if key not in now or now[key] != saved[key]
    ]


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def load_config(workdir: str):
    """The resolved config a run saved in ``workdir/config.json``. Fields added to the schema
    after the run was made take their defaults, so older runs still load."""
    with open(os.path.join(workdir, "config.json")) as f:
        saved = json.load(f)
    config = config_lib.base_config()

    def merge(target, values):
        for key, value in values.items():
            if isinstance(value, dict) and key in target and hasattr(target[key], "items"):
                merge(target[key], value)
            else:
                with target.ignore_type():
                    target[key] = tuple(value) if isinstance(value, list) else value

    merge(config, saved)
    return config
