"""Checkpoints: a thin layer over Orbax's CheckpointManager.

``WORKDIR/checkpoints/<step>/`` holds two items: ``state`` (the method's train state as
``TrainState.checkpoint_tree`` lays it out: step, parameters, BatchNorm statistics, optimizer
state, and for BYOL the target network) and ``data``
(each process's input-iterator position, one JSON file per process, via grain's Orbax handler).
Saves are asynchronous and atomic: Orbax writes into a temporary directory and renames it when
complete, so a run killed mid-save leaves the previous checkpoint as the latest one.
"""

from __future__ import annotations

import json
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


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

    def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
            },
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                enable_async_checkpointing=async_save,
                create=True,
            ),
        )

    def all_steps(self) -> list[int]:
        """The steps of the complete checkpoints, ascending."""
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict) -> None:
        """Start saving; returns once device arrays are copied, then writes in the background."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_saved_tree(state)),
                data=grain.checkpoint.CheckpointSave(_IteratorSnapshot(data_state)),
            ),
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

    def wait(self) -> None:
        """Block until every save in flight is on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def _saved_tree(state: Any) -> Any:
    """What is saved of ``state``: a train state's ``checkpoint_tree()``, else the pytree."""
    return state.checkpoint_tree() if hasattr(state, "checkpoint_tree") else state


def checkpoint_id(directory: str, step: int) -> int | None:
    """An identity of the checkpoint ``directory/<step>``: the time (ns) Orbax began writing it,
    from its ``_CHECKPOINT_METADATA``. A run deleted and trained again to the same step gets
    another id; None if the file is missing or unreadable."""
    try:
        with open(os.path.join(directory, str(step), "_CHECKPOINT_METADATA")) as f:
            value = json.load(f).get("init_timestamp_nsecs")
    except (OSError, ValueError, AttributeError):
        return None
    return int(value) if isinstance(value, int) else None


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
