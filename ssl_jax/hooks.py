"""The hooks of the training loop: what happens around the steps, one small object each.

A hook has five moments, all optional (:class:`Hook`): ``start(loop)`` before the first step,
``before_step(loop, step)``, ``after_step(loop)`` (``loop.step``, ``loop.state`` and
``loop.metrics`` are the step's), ``end(loop)`` after the last step and ``close(loop)`` always,
in reverse order. ``loop`` is :class:`ssl_jax.train.Loop`. The default hooks, in order:

  FiniteLossGuard   collects the losses and parameter norms; :func:`check_finite` (called before
                    anything is logged, monitored or saved) stops the run at the first NaN/Inf
                    loss or weight, saving nothing of it
  KnnMonitorHook    the kNN monitor every ``config.eval_every`` steps (process 0)
  ProgressHook      console line, metrics.jsonl and TensorBoard every ``config.log_every`` steps
  CheckpointHook    a checkpoint every ``config.checkpoint_every`` steps and at the end
  StopOnSignal      a first Ctrl-C, SIGTERM or SIGHUP saves the last completed step and stops
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import jax
import numpy as np

from ssl_jax import data, logs


class NonFiniteLossError(FloatingPointError):
    """The loss or the weights became NaN or Inf; the run stopped without saving the bad state."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT), SIGTERM or SIGHUP (``signum``) stopped the run between two steps, after a
    checkpoint of the last completed step was saved (``step``); the same command resumes from
    it."""

    def __init__(self, step: int, signum: int = signal.SIGINT):
        super().__init__(f"interrupted after step {step}; checkpoint saved")
        self.step = step
        self.signum = int(signum)


class Hook:
    """A no-op hook; subclasses override the moments they need."""

    def start(self, loop: Any) -> None:
        pass

    def before_step(self, loop: Any, step: int) -> None:
        pass

    def after_step(self, loop: Any) -> None:
        pass

    def end(self, loop: Any) -> None:
        pass

    def close(self, loop: Any) -> None:
        pass


def due(loop: Any, every: int) -> bool:
    """True after every ``every``-th step and after the last one (``every`` 0: the last only)."""
    return bool(every and loop.step % every == 0) or loop.last


class FiniteLossGuard(Hook):
    """Keeps the losses and parameter norms of the steps since the last check (device arrays: no
    sync per step). The parameter norm (``l2_params``, which every step computes) is NaN or Inf
    as soon as one weight is: weights can diverge while the loss still looks finite (a SimCLR
    loss at ln(2N - 1) with NaN features)."""

    def __init__(self):
        self.steps: list[int] = []
        self.values: list = []

    def after_step(self, loop: Any) -> None:
        self.steps.append(loop.step)
        self.values.append((loop.metrics["loss"], loop.metrics.get("l2_params", 0.0)))

    def check(self, loop: Any) -> None:
        """Raise NonFiniteLossError at the first NaN/Inf loss or parameter since the last
        check; the last checkpoint saved before it is named (none after it is ever written)."""
        values = np.asarray(jax.device_get(self.values), dtype=np.float64).reshape(-1, 2)
        steps = self.steps
        self.steps, self.values = [], []
        bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
        if not bad.size:
            return
        loss, norm = values[bad[0]]
        what = f"The loss is {loss}" if not np.isfinite(loss) else "The weights are NaN or Inf"
        if np.isfinite(loss):
            what += f" (l2 norm {norm}; the loss still reads {loss:.4f})"
        loop.ckpt.wait()
        kept = loop.ckpt.latest_step()
        raise NonFiniteLossError(
            f"{what} at step {steps[bad[0]]}; the run stopped there. "
            f"The last good checkpoint ({'step ' + str(kept) if kept is not None else 'none'}) "
            "is kept. Lower config.base_lr, raise config.warmup_steps or use float32 compute."
        )


def check_finite(loop: Any) -> None:
    """Stop at a NaN/Inf loss before the state is logged, monitored or saved."""
    loop.guard.check(loop)


class KnnMonitorHook(Hook):
    """``knn_top1`` every ``config.eval_every`` steps and at the end (process 0 only)."""

    def __init__(self, monitor: Any):
        self.monitor = monitor

    def after_step(self, loop: Any) -> None:
        if not due(loop, loop.config.eval_every):
            return
        check_finite(loop)
        t = time.perf_counter()
        knn = self.monitor(loop.state)
        dt = time.perf_counter() - t
        logs.console(
            f"step {loop.step}: kNN monitor top-1 {100 * knn['knn_top1']:.1f}% [{dt:.1f} s]"
        )
        loop.untimed_s += dt  # keep images/s about training
        if due(loop, loop.config.log_every):
            loop.record.update(knn)
        else:
            loop.writer.write(loop.step, knn)


class ProgressHook(Hook):
    """Every ``config.log_every`` steps and at the end: the metrics (with images/s and epoch) to
    metrics.jsonl and TensorBoard, and the progress line."""

    def after_step(self, loop: Any) -> None:
        c = loop.config
        if not due(loop, c.log_every):
            return
        check_finite(loop)
        host = {k: float(v) for k, v in jax.device_get(loop.metrics).items()}
        host.update(loop.record)
        loop.record = {}
        now = time.perf_counter()
        elapsed = now - loop.t_mark - loop.untimed_s
        ips = (loop.step - loop.step_mark) * c.batch_size / max(elapsed, 1e-9)
        host.update(epoch=loop.step / loop.iterator.steps_per_epoch, images_per_s=ips)
        if loop.writer is not None:
            loop.writer.write(loop.step, host)
            # No steps timed since the last line (the first step, its compile excluded): no
            # speed, so no ETA.
            eta = (c.total_steps - loop.step) * c.batch_size / ips if ips > 0 else None
            logs.console(
                logs.progress_line(loop.step, c.total_steps, host["epoch"], host["loss"], ips, eta)
            )
        loop.t_mark, loop.step_mark, loop.untimed_s = now, loop.step, 0.0


class CheckpointHook(Hook):
    """A checkpoint (state + data position) every ``config.checkpoint_every`` steps and at the
    end; at the end, waits until every save is on disk."""

    def after_step(self, loop: Any) -> None:
        if not due(loop, loop.config.checkpoint_every):
            return
        check_finite(loop)
        loop.ckpt.save(loop.step, loop.state, loop.iterator.get_state())
        loop.saved_step = loop.step

    def end(self, loop: Any) -> None:
        loop.ckpt.wait()


# Signals that stop a run after a checkpoint: Ctrl-C, and the preemption signals of SLURM (SIGTERM
# at the time limit, then SIGKILL after KillWait, 30 s by default), Kubernetes (SIGTERM, then
# SIGKILL after terminationGracePeriodSeconds, 30 s by default), spot VMs and a closed terminal
# (SIGHUP).
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


class StopOnSignal(Hook):
    """While the loop runs, the first SIGINT, SIGTERM or SIGHUP only sets ``requested``; the next
    step boundary then saves a checkpoint of the last completed step and raises
    TrainingInterrupted (naming the signal). A second one interrupts at once. Active only in the
    main thread of a single-process run: with several processes a save is collective, and one
    process's signal must not make it save alone."""

    def __init__(self):
        self.requested: int | None = None  # the signal received
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        again = "Ctrl-C" if signum == signal.SIGINT else "the signal"
        logs.console(f"\n{name}: saving a checkpoint after this step ({again} again to stop now)")

    def start(self, loop: Any) -> None:
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)

    def before_step(self, loop: Any, step: int) -> None:
        if self.requested is None:
            return
        check_finite(loop)
        if loop.saved_step != step - 1:
            loop.ckpt.save(step - 1, loop.state, loop.iterator.get_state())
        loop.ckpt.wait()
        raise TrainingInterrupted(step - 1, self.requested)

    def end(self, loop: Any) -> None:
        if self.requested is not None:  # during the last step: trained and saved, but stop here
            raise TrainingInterrupted(loop.saved_step, self.requested)

    def close(self, loop: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}


def knn_monitor_hook(loop: Any) -> Hook | None:
    """The kNN monitor as a hook on process 0 when ``config.eval_every`` is set and the data
    allows it (None otherwise; the monitor says why on the console)."""
    if not (loop.is_main and loop.config.eval_every):
        return None
    from ssl_jax.evaluation.monitor import make_monitor

    config = loop.config
    monitor = make_monitor(
        config, loop.source, lambda: data.source_from_config(config, config.eval_split)
    )
    return None if monitor is None else KnnMonitorHook(monitor)


def default_hooks(loop: Any) -> list[Hook]:
    """The hooks every run has, in order (see the module docstring)."""
    loop.guard = FiniteLossGuard()
    monitor = knn_monitor_hook(loop)
    return [
        loop.guard,
        *([monitor] if monitor else []),
        ProgressHook(),
        CheckpointHook(),
        StopOnSignal(),
    ]
