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
from ssl_jax import data, logs, outputs, parallel
from ssl_jax import hooks as hooks_lib
from ssl_jax.checkpoint import CheckpointMismatchError
from ssl_jax.hooks import NonFiniteLossError, TrainingInterrupted
from ssl_jax.methods import batch_keys, get_method
from ssl_jax.run import Run, abstract_state, jit_train_step
from ssl_jax.workdir_lock import LOCK_NAME, WorkdirLock

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


def _restore(ckpt: Any, abstract: Any, run: Run, changes: list[str]) -> tuple[int, Any, dict]:
    """``(step, state, data_state)`` of the newest intact checkpoint: damaged or incomplete
    newer steps are moved aside with a one-line warning (ssl_jax.checkpoint); a ValueError
    naming the config changes when the saved arrays do not fit this config's model and
    optimizer, and FileNotFoundError when no step is intact."""
    try:
        return ckpt.restore_intact(abstract, set_aside=True, warn=logs.console)
    except CheckpointMismatchError as e:
        raise ValueError(
            f"The checkpoint {e.directory}/{e.step} does not fit the model and optimizer "
            f"of this config ({e.shown}). Config changes since the run began: "
            f"{'; '.join(changes) or 'none found'}. Resume with the config saved in "
            f"{run.config_path}, or give a new --workdir."
        ) from None


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
    if jax.process_index() == 0:  # reading a dataset (a first build) and the init take a while
        logs.console(f"opening {config.dataset} and preparing the {config.method} state ...")
    source = _open_source(config)
    iterator = data.train_iterator(
        source,
        global_batch_size=config.batch_size,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        worker_count=config.num_workers,
    )
    config_lib.resolve_total_steps(config, iterator.steps_per_epoch)  # config.total_epochs
    repl = parallel.replicated(mesh)
    ckpt = run.checkpointer(max_to_keep=config.keep_checkpoints)
    try:
        ckpt.check_writable()  # unwritable or full: one line now, not a failed save later
        latest = ckpt.latest_step()
        changes = config_lib.changes(run.saved_config(), config) if latest is not None else []
        if latest is not None:
            latest, state, data_state = _restore(ckpt, abstract_state(config, repl), run, changes)
            iterator.set_state(data_state)
    except BaseException:
        ckpt.close()
        raise
    if latest is None:
        init = get_method(config.method).init_state
        state = jax.jit(lambda k: init(config, k), out_shardings=repl)(jax.random.key(config.seed))
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
    run = Run(workdir)  # an empty --workdir or a file: its own error, before anything else
    config_lib.validate(config)  # a mistyped field makes no work directory
    with contextlib.ExitStack() as stack:
        if jax.process_index() == 0:
            # One live run per work directory (ValueError naming the holder), taken before
            # anything reads, moves aside or writes a checkpoint; the console also goes to
            # W/train.log from here on, closed whatever ends the run.
            _enter_lock(stack, run)
            stack.enter_context(logs.RunLog(os.path.join(run.workdir, logs.TRAIN_LOG)))
        loop, changes, latest = init_or_restore(config, run.workdir)
        return _train(loop, changes, latest, extra_hooks)


def _enter_lock(stack: contextlib.ExitStack, run: Run) -> None:
    """Make the work directory and take its :class:`WorkdirLock` in ``stack``; a directory that
    cannot be made or written is an :class:`ssl_jax.outputs.OutputError` naming it."""
    path = run.workdir
    try:
        os.makedirs(path, exist_ok=True)
        path = os.path.join(run.workdir, LOCK_NAME)
        stack.enter_context(WorkdirLock(run.workdir))
    except OSError as e:
        if isinstance(e, outputs.OutputError):
            raise
        raise outputs.error(path, e) from e


def _train(
    loop: Loop, changes: list[str], latest: int | None, extra_hooks: Sequence[hooks_lib.Hook]
) -> TrainResult:
    config = loop.config
    if loop.is_main:
        os.makedirs(loop.run.workdir, exist_ok=True)
        outputs.write_text(loop.run.config_path, config_lib.to_json(config))
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
