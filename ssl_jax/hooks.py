"""The hooks of the training loop: what happens around the steps, one small object each.

A hook has five moments, all optional (:class:`Hook`): ``start(loop)`` before the first step,
``before_step(loop, step)``, ``after_step(loop)`` (``loop.step``, ``loop.state`` and
``loop.metrics`` are the step's), ``end(loop)`` after the last step and ``close(loop)`` always,
in reverse order. ``loop`` is :class:`ssl_jax.train.Loop`. The default hooks, in order:

  FiniteLossGuard   collects the losses and parameter norms; :func:`check_finite` (called before
                    anything is logged, monitored or saved) stops the run at the first NaN/Inf
                    loss or weight, saving nothing of it
  KnnMonitorHook    the kNN monitor every ``config.eval_every`` steps (process 0)
  ProgressHook      console line, metrics.jsonl and TensorBoard every ``config.log_every`` steps,
                    and a console line at least every 30 s (a bar on a terminal)
  CheckpointHook    a checkpoint every ``config.checkpoint_every`` steps and at the end
  StopOnSignal      a first Ctrl-C, SIGTERM or SIGHUP saves the last completed step and stops
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
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

    def check_state(self, loop: Any) -> None:
        """Before a save: raise NonFiniteLossError if any array of the state (BatchNorm
        statistics, optimizer moments, EMA target, extras; the parameters too) holds a NaN or
        Inf, so that no checkpoint ever does. A statistic can go non-finite while the loss and
        the weights still read finite (BYOL's predictor BatchNorm at a diverging lr)."""
        bad = [name for name, ok in jax.device_get(_finite_parts(loop.state)).items() if not ok]
        if not bad:
            return
        loop.ckpt.wait()
        kept = loop.ckpt.latest_step()
        raise NonFiniteLossError(
            f"The train state's {', '.join(bad)} hold NaN or Inf at step {loop.step} (the loss "
            "and the weights still read finite); the run stopped there. The last good checkpoint "
            f"({'step ' + str(kept) if kept is not None else 'none'}) is kept. Lower "
            "config.base_lr, raise config.warmup_steps or use float32 compute."
        )


@jax.jit
def _finite_parts(state: Any) -> dict[str, jax.Array]:
    """``{part: all finite}`` over the floating-point arrays of each part of the saved tree."""

    def finite(tree: Any) -> jax.Array:
        leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
        return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves] or [jnp.bool_(True)]))

    return {name: finite(tree) for name, tree in state.checkpoint_tree().items()}


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


# The longest the console stays quiet between progress lines while steps run, whatever
# config.log_every (a CPU run of a big recipe may take an hour per log_every steps).
QUIET_S = 30.0


class ProgressHook(Hook):
    """Every ``config.log_every`` steps and at the end: the metrics (with images/s and epoch) to
    metrics.jsonl and TensorBoard, and the progress line. Between those, a progress line
    whenever ``quiet_s`` seconds passed since the last one (the console only, not the metrics:
    the loss is fetched then, one device sync per ``quiet_s``; reading the clock is free). Before
    the first step it says that the step compiles. On a terminal (``bar``: None asks
    :func:`ssl_jax.logs.is_terminal`) a tqdm bar moves with every step and the time-based lines
    go to the run's log only; ``clock`` is for tests."""

    def __init__(self, quiet_s: float = QUIET_S, *, bar: bool | None = None, clock=None):
        self.quiet_s = quiet_s
        self.clock = clock or time.perf_counter
        self.want_bar = bar
        self.bar: logs.TerminalBar | None = None
        self.last_line = 0.0  # when the last progress line was printed (self.clock)
        self.compiling: logs.StillRunning | None = None  # until the first step has run

    def start(self, loop: Any) -> None:
        self.last_line = self.clock()
        if loop.writer is None:  # not process 0
            return
        c = loop.config
        if loop.start_step < c.total_steps:
            logs.console(
                f"compiling the train step (then steps {loop.start_step + 1}-{c.total_steps}) ..."
            )
            self.compiling = logs.StillRunning("compiling the train step", every=self.quiet_s)
            self.compiling.__enter__()
        if logs.is_terminal() if self.want_bar is None else self.want_bar:
            self.bar = logs.TerminalBar(c.total_steps, initial=loop.start_step)

    def after_step(self, loop: Any) -> None:
        now = self.clock()
        if loop.step == loop.start_step + 1:
            self._compiled()
            self.last_line = now  # the loop just said how long the first step's compile took
        if due(loop, loop.config.log_every):
            self._log(loop)
        elif loop.writer is not None and now - self.last_line >= self.quiet_s:
            self._time_line(loop)
        if self.bar is not None:
            self.bar.update(loop.step)

    def close(self, loop: Any) -> None:
        self._compiled()
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _compiled(self) -> None:
        if self.compiling is not None:
            self.compiling.__exit__(None, None, None)
            self.compiling = None

    def _speed(self, loop: Any, now: float) -> tuple[float, float | None]:
        """Images/s since the last logged step (hook time excluded) and the ETA: None while no
        step is timed (the first step, its compile excluded)."""
        c = loop.config
        elapsed = now - loop.t_mark - loop.untimed_s
        ips = (loop.step - loop.step_mark) * c.batch_size / max(elapsed, 1e-9)
        eta = (c.total_steps - loop.step) * c.batch_size / ips if ips > 0 else None
        return ips, eta

    def _line(self, loop: Any, loss: float, ips: float, eta: float | None) -> str:
        epoch = loop.step / loop.iterator.steps_per_epoch
        return logs.progress_line(loop.step, loop.config.total_steps, epoch, loss, ips, eta)

    def _log(self, loop: Any) -> None:
        check_finite(loop)
        host = {k: float(v) for k, v in jax.device_get(loop.metrics).items()}
        host.update(loop.record)
        loop.record = {}
        now = self.clock()
        ips, eta = self._speed(loop, now)
        host.update(epoch=loop.step / loop.iterator.steps_per_epoch, images_per_s=ips)
        if loop.writer is not None:
            loop.writer.write(loop.step, host)
            logs.console(self._line(loop, host["loss"], ips, eta))
            if self.bar is not None:
                self.bar.show(host["loss"], ips)
        loop.t_mark, loop.step_mark, loop.untimed_s = now, loop.step, 0.0
        self.last_line = now

    def _time_line(self, loop: Any) -> None:
        loss = float(jax.device_get(loop.metrics["loss"]))  # waits for the steps dispatched
        now = self.clock()
        ips, eta = self._speed(loop, now)  # the marks stay: metrics.jsonl's speed is unchanged
        line = self._line(loop, loss, ips, eta)
        if self.bar is not None:
            self.bar.show(loss, ips)
            logs.to_log(line)
        else:
            logs.console(line)
        self.last_line = now


class CheckpointHook(Hook):
    """A checkpoint (state + data position) every ``config.checkpoint_every`` steps and at the
    end; at the end, waits until every save is on disk."""

    def after_step(self, loop: Any) -> None:
        if not due(loop, loop.config.checkpoint_every):
            return
        check_finite(loop)
        loop.guard.check_state(loop)
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
