"""Checkpoints: a thin layer over Orbax's CheckpointManager.

``WORKDIR/checkpoints/<step>/`` holds two items: ``state`` (the method's train state as
``TrainState.checkpoint_tree`` lays it out: step, parameters, BatchNorm statistics, optimizer
state, and for BYOL the target network) and ``data``
(each process's input-iterator position, one JSON file per process, via grain's Orbax handler).
Saves are asynchronous and atomic: Orbax writes into a temporary directory and renames it when
complete, so a run killed mid-save leaves the previous checkpoint as the latest one.

Trust, on top of Orbax:

- Integrity: once a step's files are complete, and before Orbax renames its directory into
  place, ``ssl_jax_manifest.json`` records each file's size and SHA-256
  (:mod:`ssl_jax.checkpoint_integrity`). :meth:`Checkpointer.restore_intact` checks it and falls
  back from a damaged or incomplete newest step to the newest intact one, with a one-line
  warning naming both. Steps written before manifests existed restore unverified.
- Saves never hang: the directory is probed for writing before each save, and Orbax creates
  the step's directories inside ``save()`` (its asynchronous creation waits forever when
  ``mkdir`` fails). A save that fails -- unwritable directory, disk full -- raises
  :class:`CheckpointWriteError` naming the directory, at that save or at the next save or wait.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import traceback
import warnings
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from ssl_jax import checkpoint_integrity
from ssl_jax.workdir_lock import live_holder

# Orbax's temporary step directory, renamed to ``<step>`` once complete
# (orbax.checkpoint's atomicity_types.TMP_DIR_SUFFIX); the manifest is written inside it.
_TMP_SUFFIX = ".orbax-checkpoint-tmp"


class CheckpointWriteError(OSError, ValueError):
    """A checkpoint could not be written (unwritable directory, disk full): the run stops."""


class CheckpointDamagedError(ValueError):
    """The checkpoint asked for by its step is damaged (see :mod:`ssl_jax.checkpoint_integrity`)."""


class NoIntactCheckpointError(FileNotFoundError):
    """Every checkpoint step of the directory is damaged or incomplete."""


class CheckpointMismatchError(ValueError):
    """The arrays saved at ``step`` do not fit the structure restored into (another config)."""

    def __init__(self, directory: str, step: int, mismatches: list[str]):
        self.directory, self.step, self.mismatches = directory, step, mismatches
        shown = "; ".join(mismatches[:3]) + (
            f"; and {len(mismatches) - 3} more" if len(mismatches) > 3 else ""
        )
        self.shown = shown
        super().__init__(
            f"The checkpoint {directory}/{step} does not fit the model and optimizer of this "
            f"config ({shown})."
        )


def _is_orbax_save_traceback(record: logging.LogRecord) -> bool:
    """An ERROR with a traceback logged by Orbax's save threads (4 tracebacks per failed save);
    the failure itself is raised to the caller as one CheckpointWriteError line."""
    return (
        record.levelno >= logging.ERROR
        and record.exc_info is not None
        and f"{os.sep}orbax{os.sep}checkpoint{os.sep}" in record.pathname
    )


class _QuietOrbaxSaveErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _is_orbax_save_traceback(record)


class _QuietFailedSaveTasks(logging.Filter):
    """asyncio's "Task exception was never retrieved" for Orbax's write tasks of a save that
    failed (disk full): the failure is raised as one CheckpointWriteError line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return f"{os.sep}orbax{os.sep}checkpoint{os.sep}" not in record.getMessage()


def _closed_loop_callback(unraisable: Any) -> bool:
    """TensorStore's write callbacks of a failed save (disk full) run after Orbax closed their
    event loop; the RuntimeError('Event loop is closed') they raise reaches sys.unraisablehook
    from TensorStore's threads."""
    frames = traceback.extract_tb(unraisable.exc_traceback)
    return (
        unraisable.exc_type is RuntimeError
        and str(unraisable.exc_value) == "Event loop is closed"
        and any(f.name == "call_soon_threadsafe" for f in frames)
    )


def _quiet_closed_loop_callbacks() -> None:
    previous = sys.unraisablehook
    if getattr(previous, "ssl_jax_quiet", False):
        return

    def hook(unraisable: Any) -> None:
        if not _closed_loop_callback(unraisable):
            previous(unraisable)

    hook.ssl_jax_quiet = True
    sys.unraisablehook = hook


def _quiet_orbax_save_errors() -> None:
    """A failed save is one line: Orbax's, its background tasks' and TensorStore's callbacks'
    tracebacks are dropped (the failure is raised as one CheckpointWriteError)."""
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _QuietOrbaxSaveErrors) for f in absl_logger.filters):
        absl_logger.addFilter(_QuietOrbaxSaveErrors())
    asyncio_logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _QuietFailedSaveTasks) for f in asyncio_logger.filters):
        asyncio_logger.addFilter(_QuietFailedSaveTasks())
    warnings.filterwarnings(
        "ignore", message="coroutine 'async_serialize_from_host", category=RuntimeWarning
    )
    _quiet_closed_loop_callbacks()


class _Damaged(Exception):
    """Internal: why one step cannot be restored (falls back to an older step)."""


class _IteratorSnapshot:
    """The iterator position frozen at save time, in the form grain's handler reads and writes.

    Orbax may finish an asynchronous save after training has moved on; saving a snapshot (not
    the live iterator) makes the checkpoint hold the position that belongs with its state.
    """

    def __init__(self, state: dict | None = None):
        self.state = state

    def get_state(self) -> bytes:
        return json.dumps(self.state).encode()

    def set_state(self, state: bytes) -> None:
        self.state = json.loads(state.decode() if isinstance(state, bytes) else state)

    def start_prefetch(self) -> None:  # called by grain's handler after restore
        pass


class Checkpointer:
    """Save / restore ``(train_state, data_iterator_state)`` pairs in ``directory``."""

    def __init__(self, directory: str, *, max_to_keep: int | None = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self._max_to_keep, self._async = max_to_keep, async_save
        self._saving: int | None = None  # the step whose save is in flight
        self.manager = self._make_manager()
        _quiet_orbax_save_errors()

    def _make_manager(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.directory,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
            },
            options=ocp.CheckpointManagerOptions(
                max_to_keep=self._max_to_keep,
                enable_async_checkpointing=self._async,
                create=True,
                async_options=ocp.AsyncOptions(
                    # In save() itself: created in the background, a failing mkdir (read-only
                    # or full disk) kills Orbax's signalling thread and save() waits forever.
                    create_directories_asynchronously=False,
                    # The manifest of a complete step, before Orbax renames it into place.
                    post_finalization_callback=self._write_manifest if self._async else None,
                ),
            ),
        )

    def all_steps(self) -> list[int]:
        """The steps of the checkpoint directories, ascending (Orbax counts any integer-named
        directory; :meth:`restore_intact` checks them)."""
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        """The step of the newest checkpoint directory, or None."""
        return self.manager.latest_step()

    def check_writable(self) -> None:
        """Raise CheckpointWriteError unless a directory can be made in ``directory`` (made
        if missing): a read-only mount, missing permission or a full disk fail here, in one
        line, instead of inside Orbax's background threads."""
        try:
            os.makedirs(self.directory, exist_ok=True)
            os.rmdir(tempfile.mkdtemp(prefix=".write-test-", dir=self.directory))
        except OSError as e:
            raise CheckpointWriteError(
                f"Cannot write checkpoints to {self.directory} ({e.strerror or e}): make it "
                "writable or free space, or give another --workdir."
            ) from None

    def save(self, step: int, state: Any, data_state: dict) -> None:
        """Start saving; returns once device arrays are copied, then writes in the background.
        CheckpointWriteError when this save cannot start or the previous one failed."""
        self.wait()  # the previous save (its failure stops the run here) and its manifest
        self.check_writable()
        self._saving = step
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(_saved_tree(state)),
                    data=grain.checkpoint.CheckpointSave(_IteratorSnapshot(data_state)),
                ),
            )
        except Exception as e:  # noqa: BLE001 - any failure to write is reported as one
            self._saving = None
            raise self._write_error(e, step) from None
        if not self._async:  # saved and renamed already: the manifest goes into the final dir
            self._saving = None
            try:
                if jax.process_index() == 0:
                    checkpoint_integrity.write_manifest(os.path.join(self.directory, str(step)))
            except OSError as e:
                raise self._write_error(e, step) from None

    def _write_manifest(self) -> None:
        """Orbax's post-finalization callback (background thread): the step's files are
        complete and still in the temporary directory (or, where Orbax does not rename, in the
        final one). An error here fails the save, so no step is ever published without it."""
        step = self._saving
        if step is None or jax.process_index() != 0:
            return
        tmp = os.path.join(self.directory, f"{step}{_TMP_SUFFIX}")
        final = os.path.join(self.directory, str(step))
        checkpoint_integrity.write_manifest(tmp if os.path.isdir(tmp) else final)

    def _write_error(self, e: BaseException, step: int | None) -> CheckpointWriteError:
        which = f"checkpoint {step}" if step is not None else "a checkpoint"
        return CheckpointWriteError(
            f"Saving {which} to {self.directory} failed ({_short_reason(e)}): make the "
            "directory writable or free space, then run the same command to resume from the "
            "last checkpoint."
        )

    def restore(self, step: int, like: Any) -> tuple[Any, dict]:
        """Restore step ``step`` into the structure, dtypes and shardings of ``like`` (a train
        state, or any pytree)."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _saved_tree(like))
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract),
                data=grain.checkpoint.CheckpointRestore(_IteratorSnapshot()),
            ),
        )
        state = restored["state"]
        if hasattr(like, "with_checkpoint_tree"):
            state = like.with_checkpoint_tree(state)
        return state, restored["data"].state

    def mismatches(self, step: int, like: Any) -> list[str]:
        """How the train state saved at ``step`` differs from ``like`` in its arrays' paths and
        shapes (read from the checkpoint's metadata; empty when it fits). Checked before a
        restore, whose own failure is an Orbax error about truncation/padding options."""
        saved = tree_shapes(self.manager.item_metadata(step)["state"])
        want = tree_shapes(_saved_tree(like))
        out = [
            f"{k}: saved {saved[k]}, now {want[k]}"
            for k in want
            if saved.get(k, want[k]) != want[k]
        ]
        out += [f"{k}: not in the checkpoint" for k in want if k not in saved]
        out += [f"{k}: in the checkpoint only" for k in saved if k not in want]
        return out

    def restore_intact(
        self, like: Any, step: int | None = None, *, set_aside: bool = False, warn: Any = None
    ) -> tuple[int, Any, dict]:
        """``(step, state, data_state)`` of the newest intact checkpoint (or of ``step``).

        A damaged or incomplete newer step is passed over for the next older one, and
        ``warn`` (a ``print``-like callable) gets one line naming both. ``set_aside=True`` (a
        run that goes on writing here) renames the steps passed over to ``<step>.damaged``, so
        that Orbax neither counts them nor collides with them. Raises CheckpointDamagedError
        when the ``step`` asked for is damaged, NoIntactCheckpointError when every step is, and
        CheckpointMismatchError (no fallback: older steps would not fit either) when the saved
        arrays do not fit ``like``."""
        steps = self.all_steps()
        if step is not None:
            try:
                return (step, *self._restore_checked(step, like))
            except _Damaged as e:
                raise CheckpointDamagedError(
                    f"The checkpoint {self.directory}/{step} is damaged ({e}): pass another "
                    f"step (this run has {steps})."
                ) from None
        skipped: list[tuple[int, str]] = []
        for candidate in reversed(steps):
            try:
                state, data_state = self._restore_checked(candidate, like)
            except _Damaged as e:
                skipped.append((candidate, str(e)))
                continue
            if skipped:
                moved = self._set_aside([s for s, _ in skipped]) if set_aside else ""
                if warn is not None:
                    warn(_fallback_line(self.directory, skipped, candidate) + moved)
            return candidate, state, data_state
        found = "; ".join(f"{s}: {why}" for s, why in skipped)
        holder = live_holder(os.path.dirname(os.path.abspath(self.directory)))
        if holder is not None:  # a live run deletes and finalises steps as it goes
            raise NoIntactCheckpointError(
                f"{self.directory} holds no intact checkpoint right now ({found}), and a live "
                f"run ({holder}) is writing it: try again after its next checkpoint."
            )
        raise NoIntactCheckpointError(
            f"{self.directory} holds no intact checkpoint ({found}). Delete that directory "
            "to start again from step 0, or give a new --workdir."
        )

    def _restore_checked(self, step: int, like: Any) -> tuple[Any, dict]:
        """Restore ``step`` after checking its manifest; _Damaged says why it cannot be."""
        problem = checkpoint_integrity.check(os.path.join(self.directory, str(step)))
        if problem:
            raise _Damaged(problem)
        verified = checkpoint_integrity.has_manifest(os.path.join(self.directory, str(step)))
        try:
            mismatches = self.mismatches(step, like)
        except Exception as e:  # noqa: BLE001 - unreadable metadata is damage
            raise _Damaged(f"its metadata is unreadable: {_short_reason(e)}") from None
        if mismatches:
            raise CheckpointMismatchError(self.directory, step, mismatches)
        try:
            return self.restore(step, like)
        except Exception as e:
            if verified:  # the files are as saved: not damage, a real error
                raise
            # A checkpoint from before manifests: its restore is its only check. Orbax may be
            # left mid-operation by the failure, so the next try gets a fresh manager.
            self.manager.close()
            self.manager = self._make_manager()
            raise _Damaged(_short_reason(e)) from None

    def _set_aside(self, steps: list[int]) -> str:
        """Rename the step directories ``steps`` to ``<step>.damaged`` (kept for inspection;
        Orbax ignores them); the words to add to the warning."""
        moved = []
        for s in steps:
            src = os.path.join(self.directory, str(s))
            dst, n = f"{src}.damaged", 1
            while os.path.exists(dst):
                dst, n = f"{src}.damaged-{n}", n + 1
            os.rename(src, dst)
            moved.append(os.path.basename(dst))
        self.manager.reload()
        return f" (moved aside as {', '.join(moved)})"

    def checkpoint_id(self, step: int) -> int | None:
        """The time (ns) Orbax began writing step ``step``, from its public step metadata; None
        when unreadable."""
        try:
            value = self.manager.metadata(step).init_timestamp_nsecs
        except Exception:  # noqa: BLE001 - an id is optional
            return None
        return int(value) if isinstance(value, int) else None

    def wait(self) -> None:
        """Block until every save in flight is on disk; CheckpointWriteError if it failed."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - any failure to write is reported as one
            step, self._saving = self._saving, None
            raise self._write_error(e, step) from None
        self._saving = None

    def close(self) -> None:
        """Wait for the save in flight (CheckpointWriteError if it failed), then close."""
        try:
            self.wait()
        finally:
            self.manager.close()


def _saved_tree(state: Any) -> Any:
    """What is saved of ``state``: a train state's ``checkpoint_tree()``, else the pytree."""
    return state.checkpoint_tree() if hasattr(state, "checkpoint_tree") else state


def checkpoint_id(directory: str, step: int) -> int | None:
    """An identity of the checkpoint ``directory/<step>``: the time (ns) Orbax began writing it,
    from its step metadata (Orbax's public ``CheckpointManager.metadata(step)``). A run deleted
    and trained again to the same step gets another id; None if missing or unreadable."""
    if not os.path.isdir(os.path.join(directory, str(step))):
        return None
    ckpt = Checkpointer(directory, max_to_keep=None, async_save=False)
    try:
        return ckpt.checkpoint_id(step)
    finally:
        ckpt.manager.close()


def _short_reason(e: BaseException) -> str:
    """The cause of an Orbax / TensorStore / OS error in a few words: a known OS condition
    when the (often very long) message names one, else its first line, shortened."""
    text = str(e)
    for known in (
        "No space left on device",
        "Disk quota exceeded",
        "Read-only file system",
        "Permission denied",
        "Too many open files",
    ):
        if known in text:
            return known
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    line = (text.strip().splitlines() or [""])[0]
    line = f"{type(e).__name__}: {line}" if line else type(e).__name__
    return line if len(line) <= 160 else line[:157] + "..."


def _fallback_line(directory: str, skipped: list[tuple[int, str]], used: int) -> str:
    """One warning line: which newer steps were passed over, why, and which step is used."""
    what = "; ".join(f"{s} ({why})" for s, why in skipped)
    noun = "checkpoint" if len(skipped) == 1 else "checkpoints"
    return (
        f"warning: {noun} {what} in {directory} cannot be restored; using step {used}, the "
        "newest intact one"
    )


def tree_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """``{'params/encoder/convs/0/kernel/value': shape, ...}`` for the arrays of a pytree (a
    train state, its abstract shapes, or Orbax's metadata of a saved one)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        parts = []
        for key in path:
            for attr in ("key", "name", "idx"):
                if hasattr(key, attr):
                    parts.append(str(getattr(key, attr)))
                    break
        out["/".join(parts)] = tuple(getattr(leaf, "shape", ()))
    return out
