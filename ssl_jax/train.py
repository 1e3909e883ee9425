"""The pretraining loop: init or restore, then jitted steps with periodic hooks. Nothing else.

    train(config, workdir)                         # the default hooks (ssl_jax.hooks)
    train(config, workdir, extra_hooks=[MyHook()])  # and yours, after them

Resuming is exact: the state (including the step), the data iterator's position and the PRNG
(every step's key is ``fold_in(key(seed), step)``) all come back from the checkpoint, so a killed
run started again with the same command logs the same losses as one that was never interrupted.

What happens around a step -- the progress line and metrics, the NaN stop, the kNN monitor,
checkpoints, Ctrl-C -- is a hook (:mod:`ssl_jax.hooks`), each a small object.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Sequence
from typing import Any

import jax

from ssl_jax import config as config_lib
from ssl_jax import data, logs, parallel
from ssl_jax import hooks as hooks_lib
from ssl_jax.hooks import NonFiniteLossError, TrainingInterrupted
from ssl_jax.methods import batch_keys, get_method
from ssl_jax.run import Run, abstract_state, jit_train_step
from ssl_jax.workdir_lock import WorkdirLock

__all__ = ["NonFiniteLossError", "TrainResult", "TrainingInterrupted", "train"]


@dataclasses.dataclass
class TrainResult:
    """What ``train`` returns: the final state (on the mesh) and the workdir."""

    state: Any
    workdir: str


@dataclasses.dataclass
class Loop:
    """What the hooks see: the run's pieces and the state after the current step."""

    config: Any
    run: Run
    mesh: Any
    source: Any
    iterator: Any
    ckpt: Any
    state: Any
    start_step: int
    is_main: bool
    step: int = 0
    metrics: dict = dataclasses.field(default_factory=dict)
    saved_step: int = 0  # the newest step with a checkpoint (saved or in flight)
    record: dict = dataclasses.field(default_factory=dict)  # extra values for this step's log
    writer: Any = None  # logs.MetricWriter on process 0
    guard: Any = None  # hooks.FiniteLossGuard
    t_mark: float = 0.0  # time and step of the last log line (or of the first step's end) ...
    step_mark: int = 0
    untimed_s: float = 0.0  # ... and time spent in hooks since then (not training)

    @property
    def last(self) -> bool:
        return self.step == self.config.total_steps


def _open_source(config: Any) -> Any:
    source = data.source_from_config(config)
    data.check_source(source, config)
    if len(source) < config.batch_size:
        raise ValueError(
            f"The dataset has {len(source)} images, fewer than one global batch "
            f"(config.batch_size={config.batch_size}): lower the batch size."
        )
    _check_labels(source, config)
    return source


def _check_labels(source: Any, config: Any) -> None:
    """A method that trains on labels (``'label'`` in its BATCH_KEYS) needs every image labelled."""
    if "label" not in batch_keys(get_method(config.method)):
        return
    fix = "use a labelled dataset, or a self-supervised method (e.g. --config.method=simclr)"
    if not source.num_classes:
        raise ValueError(
            f"config.method={config.method!r} trains on labels, but the dataset "
            f"{config.dataset!r} has none: {fix}."
        )
    labels = getattr(source, "labels", None)  # sources that hold their labels (image folders)
    if labels is not None and (missing := int((labels < 0).sum())):
        raise ValueError(
            f"config.method={config.method!r} trains on labels, but {missing:,} of the "
            f"{len(labels):,} images of {config.dataset!r} have none (not in a class subfolder): "
            f"move them into one, or {fix}."
        )


def _restore(ckpt: Any, step: int, abstract: Any, run: Run, changes: list[str]) -> tuple:
    """The checkpoint of ``step`` into ``abstract``; a ValueError naming the config changes
    when the saved arrays do not fit this config's model and optimizer."""
    try:
        mismatches = ckpt.mismatches(step, abstract)
    except Exception:  # noqa: BLE001 - no readable metadata: let the restore itself decide
        mismatches = []
    if mismatches:
        ckpt.close()
        shown = "; ".join(mismatches[:3]) + (
            f"; and {len(mismatches) - 3} more" if len(mismatches) > 3 else ""
        )
        raise ValueError(
            f"The checkpoint {ckpt.directory}/{step} does not fit the model and optimizer "
            f"of this config ({shown}). Config changes since the run began: "
            f"{'; '.join(changes) or 'none found'}. Resume with the config saved in "
            f"{run.config_path}, or give a new --workdir."
        )
    return ckpt.restore(step, abstract)


def _header(loop: Loop, latest: int | None, changes: list[str], dropped: int) -> None:
    c, n_dev = loop.config, loop.mesh.devices.size
    logs.console(
        f"ssl_jax {c.method}: {c.dataset} ({len(loop.source):,} images, "
        f"{loop.iterator.steps_per_epoch} steps/epoch), global batch {c.batch_size} on {n_dev} "
        f"{jax.devices()[0].platform} device(s), {jax.process_count()} process(es)"
    )
    if latest is not None:
        logs.console(f"resumed from {loop.ckpt.directory}/{latest} at step {loop.start_step}")
    if changes:
        logs.console(
            "the config differs from the one this run was started with (config.json now "
            "records the new values): " + "; ".join(changes)
        )
    if dropped:
        logs.console(
            f"metrics.jsonl: dropped {dropped} record(s) logged after step "
            f"{loop.start_step} (they are logged again)"
        )
    if loop.start_step >= c.total_steps:
        logs.console(
            f"nothing to train: the checkpoint is at step {loop.start_step} and "
            f"config.total_steps={c.total_steps} (raise it to train longer)"
        )


def init_or_restore(config: Any, workdir: str) -> tuple[Loop, list[str], int | None]:
    """The loop's pieces at the step training starts from: a fresh state, or the latest
    checkpoint (state and data position). Also the config changes since the run began and the
    restored step (None for a fresh run)."""
    config_lib.validate(config)
    mesh = parallel.make_mesh(config.num_devices)
    parallel.check_global_batch(config.batch_size, mesh)
    run = Run(workdir)
    source = _open_source(config)
    iterator = data.train_iterator(
        source,
        global_batch_size=config.batch_size,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        worker_count=config.num_workers,
    )
    repl = parallel.replicated(mesh)
    ckpt = run.checkpointer(max_to_keep=config.keep_checkpoints)
    latest = ckpt.latest_step()
    changes = config_lib.changes(run.saved_config(), config) if latest is not None else []
    if latest is None:
        init = get_method(config.method).init_state
        state = jax.jit(lambda k: init(config, k), out_shardings=repl)(jax.random.key(config.seed))
    else:
        state, data_state = _restore(ckpt, latest, abstract_state(config, repl), run, changes)
        iterator.set_state(data_state)
    start = int(state.step)
    loop = Loop(config, run, mesh, source, iterator, ckpt, state, start, jax.process_index() == 0)
    loop.step = loop.saved_step = start
    return loop, changes, latest


def train(config: Any, workdir: str, *, extra_hooks: Sequence[hooks_lib.Hook] = ()) -> TrainResult:
    """Pretrain as configured, writing checkpoints, metrics and the config into ``workdir``.

    ``extra_hooks`` (:class:`ssl_jax.hooks.Hook`) run before the default ones at every moment
    (:func:`ssl_jax.hooks.default_hooks`: NaN stop, kNN monitor, progress and metrics,
    checkpoints, Ctrl-C). Raises NonFiniteLossError when the loss is NaN or Inf (nothing of that
    state is saved), TrainingInterrupted after a Ctrl-C, SIGTERM or SIGHUP, and ValueError when
    another live run holds ``workdir`` (:class:`ssl_jax.workdir_lock.WorkdirLock`).
    """
    loop, changes, latest = init_or_restore(config, workdir)
    with contextlib.ExitStack() as stack:
        if loop.is_main:  # one live run per work directory (ValueError naming the holder)
            try:
                stack.enter_context(WorkdirLock(loop.run.workdir))
            except ValueError:
                loop.ckpt.close()
                raise
        return _train(loop, changes, latest, extra_hooks)


def _train(
    loop: Loop, changes: list[str], latest: int | None, extra_hooks: Sequence[hooks_lib.Hook]
) -> TrainResult:
    config = loop.config
    if loop.is_main:
        os.makedirs(loop.run.workdir, exist_ok=True)
        logs.write_atomic(loop.run.config_path, config_lib.to_json(config))
        loop.writer = logs.MetricWriter(loop.run.workdir, keep_through_step=loop.start_step)
        _header(loop, latest, changes, loop.writer.dropped)
    hooks = [*extra_hooks, *hooks_lib.default_hooks(loop)]
    step_fn = jit_train_step(get_method(config.method), loop.mesh)
    keys = batch_keys(get_method(config.method))
    # Global arrays are made under jit (device_put cannot place onto other processes' devices).
    key = jax.jit(
        lambda: jax.random.key(config.seed), out_shardings=parallel.replicated(loop.mesh)
    )()
    t_start = loop.t_mark = time.perf_counter()
    loop.step_mark = loop.start_step
    try:
        for hook in hooks:
            hook.start(loop)
        for step in range(loop.start_step + 1, config.total_steps + 1):
            for hook in hooks:
                hook.before_step(loop, step)
            batch = next(loop.iterator)
            inputs = parallel.shard_batch({k: batch[k] for k in keys}, loop.mesh)
            loop.state, loop.metrics = step_fn(loop.state, inputs, key)
            loop.step = step
            if step == loop.start_step + 1 and loop.is_main:
                jax.block_until_ready(loop.metrics["loss"])
                loop.t_mark, loop.step_mark = time.perf_counter(), step
                logs.console(f"compiled and ran the first step in {loop.t_mark - t_start:.1f} s")
            for hook in hooks:
                hook.after_step(loop)
        for hook in hooks:
            hook.end(loop)
    finally:
        for hook in reversed(hooks):
            hook.close(loop)
        loop.ckpt.close()
        if loop.writer is not None:
            loop.writer.close()
    return TrainResult(state=loop.state, workdir=loop.run.workdir)
