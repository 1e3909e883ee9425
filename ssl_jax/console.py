"""What the user sees while a command runs, and the run's log files that keep it.

    console("step 10: ...")          # a line on the console, also in the run's log
    detail("malloc: ...")            # in the log; on the console only with --verbose
    with RunLog("W/train.log"): ...  # the console also appended to a file while entered
    with StillRunning("maps"): ...   # "still running" when the console is quiet for 30 s

A progress bar (tqdm) replaces the progress lines on a terminal (:class:`TerminalBar`); a log
file or a pipe gets plain lines. This module imports nothing of ssl_jax but
:mod:`ssl_jax.outputs`, so that any module can announce a long stage. The metric files are
:mod:`ssl_jax.logs`.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time

from ssl_jax import outputs


def format_duration(seconds: float) -> str:
    """Seconds as MM:SS, or H:MM:SS from one hour."""
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def progress_line(
    step: int, total: int, epoch: float, loss: float, images_per_s: float, eta_s: float | None
) -> str:
    """The console progress line: bar, step, epoch, loss, images/s and ETA (``--:--`` while no
    speed is known yet: ``eta_s`` None or not finite)."""
    width = 20
    done = int(width * step / max(total, 1))
    bar = "#" * done + "." * (width - done)
    return (
        f"[{bar}] step {step}/{total}  epoch {epoch:.2f}  loss {loss:.4f}  "
        f"{images_per_s:,.0f} img/s  ETA "
        + (format_duration(eta_s) if eta_s is not None and math.isfinite(eta_s) else "--:--")
    )


def console(msg: str) -> None:
    """Print one line of progress, flushed at once (logs of long runs are read live; above the
    bar while a :class:`TerminalBar` is shown), and write it to the run's log (:class:`RunLog`).
    Safe from several threads (:class:`StillRunning` prints from one)."""
    global _last_line_at
    with _lock:
        if _bar is not None:
            _bar.write(msg)
        else:
            print(msg, file=sys.stdout, flush=True)
        to_log(msg)
        _last_line_at = time.monotonic()


def quiet_for() -> float:
    """Seconds since the last :func:`console` line."""
    return time.monotonic() - _last_line_at


class StillRunning:
    """While entered, ``  ... WHAT: still running (MM:SS)`` whenever the console has been quiet
    for ``every`` seconds: for a stage that cannot report itself (one long XLA computation, a
    t-SNE). A daemon thread that only reads the clock; it stops when the block is left."""

    def __init__(self, what: str, every: float = 30.0):
        self.what, self.every = what, every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StillRunning:
        start = time.monotonic()

        def run() -> None:
            while not self._stop.wait(min(1.0, self.every / 4)):
                if quiet_for() >= self.every:
                    took = format_duration(time.monotonic() - start)
                    console(f"  ... {self.what}: still running ({took})")

        self._thread = threading.Thread(target=run, name="ssl_jax-still-running", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return False


# --- the run's log file, the --verbose lines and the terminal bar ---------------------------

TRAIN_LOG, EVAL_LOG = "train.log", "eval.log"  # in the work directory
_PENDING_MAX = 200  # lines kept for the next log while none is open
_log = None  # the open log (outputs.AppendFile) while a RunLog is entered
_pending: list[str] = []
_bar: TerminalBar | None = None
_verbose = False
_lock = threading.RLock()  # one console line at a time
_last_line_at = time.monotonic()


def set_verbose(on: bool) -> None:
    """Show the :func:`detail` lines on the console too (``ssl-jax ... --verbose``)."""
    global _verbose
    _verbose = bool(on)


def detail(msg: str) -> None:
    """A line for the run's log that the console shows only when verbose (:func:`set_verbose`):
    settings of the host that matter for speed, not for the result."""
    if _verbose:
        console(msg)
    else:
        to_log(msg)


def to_log(msg: str) -> None:
    """Write ``msg`` to the run's log only, each line after the time of day. While no log is
    open, the last lines are kept and written first into the next one (what a command printed
    before its work directory was known to be its own)."""
    stamp = time.strftime("%H:%M:%S")
    text = "".join(f"{stamp} {line}\n" for line in msg.strip("\n").split("\n"))
    if _log is None:
        _pending.append(text)
        del _pending[:-_PENDING_MAX]
        return
    try:
        _log.write(text)
    except ValueError as e:  # outputs.OutputError (disk full, ...): the run goes on without it
        _close_log()
        print(f"ssl_jax: stopped writing the log: {e}", file=sys.stderr, flush=True)


def clear_pending() -> None:
    """Forget the lines kept for the next log (a new command starts)."""
    _pending.clear()


def _close_log() -> None:
    global _log
    with _lock:  # not while another thread writes a line
        log, _log = _log, None
        if log is not None:
            log.close()


def _ending(e: BaseException) -> str:
    """The log's last line for an exception that ended the command."""
    if isinstance(e, KeyboardInterrupt):
        return f"stopped: {e or 'interrupted'}"
    if isinstance(e, SystemExit):
        return f"stopped: {e.code}"
    if isinstance(e, ValueError | OSError | FloatingPointError):  # what the CLI prints in a line
        return f"stopped: {e}"
    import traceback

    return "stopped by an error:\n" + "".join(traceback.format_exception(e)).rstrip()


class RunLog:
    """While entered, the console (:func:`console`) is also appended to ``path`` (the work
    directory's ``train.log`` while training, ``eval.log`` while evaluating): a header naming
    the command, the lines printed before it opened, every line with its time of day, and the
    error, Ctrl-C or signal that ended it; closed on leaving, whatever happened. Each line is
    written at once (``tail -f`` follows it; a killed run loses nothing printed). A symbolic
    link or any other non-regular file of that name is replaced by a new file, never followed.
    Entered while another log is open, it leaves that one in place and writes nothing itself."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self._owner = False

    def __enter__(self) -> RunLog:
        global _log
        if _log is not None:
            return self
        import shlex

        replaced = _remove_if_not_own(self.path)
        log = outputs.AppendFile(self.path)
        when = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"=== {when} {shlex.join(sys.argv)} (pid {os.getpid()}) ===\n")
        log.write("".join(_pending))
        _pending.clear()
        _log, self._owner = log, True
        if replaced:
            to_log(f"(replaced {replaced} of that name by this new log)")
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._owner:
            self._owner = False
            try:
                if exc is not None:
                    to_log(_ending(exc))
            finally:
                _close_log()
        return False


def _remove_if_not_own(path: str) -> str:
    """Remove ``path`` if it is a link, FIFO, device or hard-linked file (a log is replaced, not
    refused: nothing of the run is lost); what it was, or '' when it was fine or missing."""
    try:
        outputs.check_own_file(path)
        return ""
    except outputs.OutputError:
        pass
    what = "a symbolic link" if os.path.islink(path) else "a file that was not the run's own"
    if os.path.isdir(path) and not os.path.islink(path):
        raise outputs.OutputError(
            f"{path} is a directory; remove it if this run is yours, or choose another --workdir."
        )
    try:
        os.remove(path)
    except OSError as e:
        raise outputs.error(path, e) from e
    return what


def is_terminal() -> bool:
    """Whether the console is a terminal (a progress bar) rather than a file or pipe (lines)."""
    try:  # a terminal of no width (a pseudo-terminal nobody sized) would show an empty bar
        return sys.stdout.isatty() and os.get_terminal_size(sys.stdout.fileno()).columns > 0
    except (AttributeError, ValueError, OSError):  # no isatty or fileno, closed, not a tty
        return False


class TerminalBar:
    """A tqdm bar of the training steps, redrawn in place on a terminal (:func:`is_terminal`);
    :func:`console` prints above it while it is shown. Moving it is free (no device sync)."""

    def __init__(self, total: int, initial: int = 0):
        global _bar
        from tqdm import tqdm

        self._tqdm = tqdm(
            total=total, initial=initial, unit="step", file=sys.stdout, dynamic_ncols=True
        )
        _bar = self

    def update(self, step: int) -> None:
        """Move the bar to ``step``."""
        if step > self._tqdm.n:
            self._tqdm.update(step - self._tqdm.n)

    def show(self, loss: float, images_per_s: float) -> None:
        """The latest loss and speed, beside the bar."""
        self._tqdm.set_postfix_str(f"loss {loss:.4f}, {images_per_s:,.0f} img/s")

    def write(self, msg: str) -> None:
        """Print ``msg`` above the bar."""
        self._tqdm.write(msg, file=sys.stdout)
        sys.stdout.flush()

    def close(self) -> None:
        """Leave the bar as it is on the screen and print below it from now on."""
        global _bar
        self._tqdm.close()
        if _bar is self:
            _bar = None
