"""Grain pipelines: a shuffled, sharded, checkpointable training iterator and in-order eval batches.

Training order, for N examples, global batch G, P processes (B = G // P per process):

  epoch e = a permutation of range(N) drawn from (seed, e); its first (N // G) * G indices form
  N // G global batches (the remainder, different each epoch, is dropped); global batch k of the
  epoch is the concatenation of B-sized pieces p = 0..P-1, and process p yields piece p.

So the global batch of step k is the same for any process count, and for any number of grain
worker processes. In grain terms (indices are batched before reading, so a source reads each
batch with one `read_batch` call):

  MapDataset.range(N).shuffle(s)[:steps * G].batch(B)[p::P].repeat(num_epochs).map(read_batch)

grain's shuffle derives the permutation of epoch e from seed s + e (ShuffleMapDataset), and
batch/slice/repeat propagate the epoch through their indices, so each epoch gets a new order
without any state beyond the step.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np

from ssl_jax.data.sources import Example, stack_examples


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    """Full global batches per epoch (the remainder is dropped)."""
    return num_examples // global_batch_size


def _shuffle_seed(seed: int) -> int:
    # grain wants a uint32 seed and uses seed + epoch per epoch: hashing the user's seed first
    # keeps (seed=0, epoch=1) and (seed=1, epoch=0) from giving the same permutation.
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return int(np.random.SeedSequence(seed).generate_state(1)[0])


class _ReadBatch:
    """Picklable map function: a batch of indices -> a batch of examples."""

    def __init__(self, source: Any):
        self.source = source

    def __call__(self, indices: np.ndarray) -> Example:
        if hasattr(self.source, "read_batch"):
            batch = self.source.read_batch(indices)
        else:
            batch = stack_examples([self.source[int(i)] for i in indices], self.source.image_shape)
        return {
            "image": np.asarray(batch["image"], np.uint8),
            "label": np.asarray(batch["label"], np.int32),
        }


def _ensure_absl_flags_parsed() -> None:
    # grain's mp_prefetch reads absl flags; with JAX imported they are defined but unparsed
    # unless the program runs under absl.app, which raises UnparsedFlagAccessError.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _to_iter(ds: grain.MapDataset, prefetch: int, read_threads: int | None, worker_count: int):
    if prefetch < 0 or worker_count < 0:
        raise ValueError(f"prefetch and worker_count must be >= 0, got {prefetch}, {worker_count}")
    threads = prefetch if read_threads is None else read_threads
    it_ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch)
    )
    if worker_count > 0:
        _ensure_absl_flags_parsed()
        it_ds = it_ds.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=worker_count, per_worker_buffer_size=max(1, prefetch)
            )
        )
    return it_ds


# Fields a saved state must share with the iterator it is restored into; the others (how the
# same global batches are split over processes and workers) may change between runs.
_ORDER_FIELDS = ("num_examples", "global_batch_size", "steps_per_epoch", "seed", "num_epochs")
_LAYOUT_FIELDS = ("process_index", "process_count", "worker_count")


class TrainIterator(grain.DatasetIterator):
    """Iterator of per-process training batches {'image': uint8 [B, H, W, C], 'label': int32 [B]}.

    A grain DatasetIterator: `get_state()` is a JSON-serialisable dict (save it with
    `grain.checkpoint.CheckpointSave(it)` in orbax, or json), `set_state(state)` resumes at
    exactly the batch where the state was taken. The state may come from a run with another
    process count or worker count (the global batches do not depend on them): the pipeline is
    then restarted at the saved step. Attributes: `step` (batches yielded so far), `epoch`
    (step // steps_per_epoch), `steps_per_epoch`, `num_examples` (source size),
    `examples_per_epoch` (used per epoch, remainder dropped), `global_batch_size`,
    `local_batch_size`, `num_epochs` (None: forever).
    """

    def __init__(self, ds: grain.MapDataset, config: dict[str, Any], to_iter: Any):
        super().__init__()
        self._ds = ds  # per-process batches, indexed by step
        self._to_iter = to_iter  # MapDataset -> IterDataset (threads or worker processes)
        self._config = dict(config)
        self.num_examples: int = config["num_examples"]
        self.global_batch_size: int = config["global_batch_size"]
        self.local_batch_size: int = config["local_batch_size"]
        self.steps_per_epoch: int = config["steps_per_epoch"]
        self.examples_per_epoch: int = self.steps_per_epoch * self.global_batch_size
        self.num_epochs: int | None = config["num_epochs"]
        self.step = 0
        self._start = 0  # the step the grain iterator started at
        self._it = iter(self._to_iter(ds))

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    def __next__(self) -> Example:
        batch = next(self._it)
        self.step += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "start": self._start,
            "config": dict(self._config),
            "grain": self._it.get_state(),
        }

    def _restart_at(self, start: int) -> None:
        self._it.close()
        self._it = iter(self._to_iter(self._ds[start:] if start else self._ds))
        self._start = start

    def set_state(self, state: dict[str, Any]) -> None:
        saved = state.get("config", {})
        diff = {k: (saved.get(k), self._config[k]) for k in _ORDER_FIELDS}
        diff = {k: v for k, v in diff.items() if v[0] != v[1]}
        if diff:
            raise ValueError(
                "Cannot restore a training iterator saved with a different data order: "
                + ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
            )
        step = int(state["step"])
        if all(saved.get(k) == self._config[k] for k in _LAYOUT_FIELDS):
            start = int(state.get("start", 0))
            if start != self._start:
                self._restart_at(start)
            self._it.set_state(state["grain"])
        else:  # another process/worker layout: its grain state does not apply here
            self._restart_at(step)
        self.step = step

    def start_prefetch(self) -> None:
        self._it.start_prefetch()

    def close(self) -> None:
        if "_it" in self.__dict__:
            self._it.close()

    def __str__(self) -> str:
        return f"TrainIterator({self._config})"


def train_iterator(
    source: Any,
    *,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    num_epochs: int | None = None,
    worker_count: int = 0,
    prefetch: int = 4,
    read_threads: int | None = None,
) -> TrainIterator:
    """Shuffled, process-sharded, checkpointable batches of `source` (see the module docstring).

    Args:
      source: a random-access source (see sources.py); `read_batch` is used when present.
      global_batch_size: examples per step over all processes; must divide by process_count.
      seed: shuffle seed (>= 0); every epoch gets a different permutation derived from it.
      process_index, process_count: this JAX process and their number (jax.process_index(),
        jax.process_count()); process p yields rows [p*B, (p+1)*B) of each global batch.
      num_epochs: stop after this many epochs; None repeats forever.
      worker_count: grain worker processes decoding batches (0: threads in this process).
      prefetch: batches read ahead (per worker with worker_count > 0); 0 reads on demand.
      read_threads: threads reading batches in parallel (default: prefetch).

    Returns:
      A TrainIterator of {'image': uint8 [B, H, W, C], 'label': int32 [B]}, B = G // P.
    """
    n = len(source)
    if global_batch_size <= 0 or process_count <= 0:
        raise ValueError(
            f"global_batch_size ({global_batch_size}) and process_count ({process_count}) "
            "must be positive"
        )
    if global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size {global_batch_size} is not divisible by process_count "
            f"{process_count}"
        )
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    steps = steps_per_epoch(n, global_batch_size)
    if steps == 0:
        raise ValueError(
            f"global_batch_size {global_batch_size} is larger than the source ({n} examples)"
        )
    if num_epochs is not None and num_epochs <= 0:
        raise ValueError(f"num_epochs must be positive or None, got {num_epochs}")
    local = global_batch_size // process_count
    ds = grain.MapDataset.range(n).shuffle(seed=_shuffle_seed(seed))
    ds = ds[: steps * global_batch_size].batch(local, drop_remainder=True)
    ds = ds[process_index::process_count].repeat(num_epochs).map(_ReadBatch(source))
    config = {
        "num_examples": n,
        "global_batch_size": global_batch_size,
        "local_batch_size": local,
        "steps_per_epoch": steps,
        "seed": seed,
        "process_index": process_index,
        "process_count": process_count,
        "num_epochs": num_epochs,
        "worker_count": worker_count,
    }
    to_iter = functools.partial(
        _to_iter, prefetch=prefetch, read_threads=read_threads, worker_count=worker_count
    )
    return TrainIterator(ds, config, to_iter)


class _ReadEvalBatch:
    """Picklable map function: a global step -> this process's padded slice of it, with a mask."""

    def __init__(self, source: Any, global_batch_size: int, local_batch_size: int, offset: int):
        self.source = source
        self.global_batch_size = global_batch_size
        self.local_batch_size = local_batch_size
        self.offset = offset

    def __call__(self, step: int) -> Example:
        start = step * self.global_batch_size + self.offset
        idx = np.arange(start, start + self.local_batch_size)
        mask = idx < len(self.source)
        batch = _ReadBatch(self.source)(idx[mask])
        pad = self.local_batch_size - int(mask.sum())
        if pad:
            image = batch["image"]
            batch = {
                "image": np.concatenate([image, np.zeros((pad, *image.shape[1:]), np.uint8)]),
                "label": np.concatenate([batch["label"], np.full((pad,), -1, np.int32)]),
            }
        batch["mask"] = mask
        return batch


class EvalBatches:
    """In-order batches of a whole source, each {'image', 'label', 'mask'}; `len()` = steps.

    Every batch has the same shape (one compilation, divisible over devices): the last one is
    padded with zero images, label -1 and mask False. Keep `features[mask]`.
    """

    def __init__(self, ds: grain.MapDataset, num_examples: int, prefetch: int):
        self._ds = ds
        self._prefetch = prefetch
        self.num_examples = num_examples

    def __len__(self) -> int:
        return len(self._ds)

    def __iter__(self) -> Iterator[Example]:
        return iter(_to_iter(self._ds, self._prefetch, None, 0))


def eval_batches(
    source: Any,
    *,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    prefetch: int = 2,
) -> EvalBatches:
    """Iterates `source` once, in order, in padded batches with a validity mask.

    Args:
      source: a random-access source.
      batch_size: GLOBAL batch size; each process gets batch_size // process_count rows.
      process_index, process_count: as in train_iterator; the concatenation over processes of
        step k is rows [k*batch_size, (k+1)*batch_size) of the source, so every process has the
        same number of steps, ceil(len(source) / batch_size).
      prefetch: batches read ahead by threads.

    Returns:
      An iterable (len() = number of steps) of {'image': uint8 [b, H, W, C], 'label': int32 [b],
      'mask': bool [b]} with b = batch_size // process_count; padded rows have mask False.
    """
    if batch_size <= 0 or batch_size % process_count:
        raise ValueError(
            f"batch_size {batch_size} must be positive and divisible by process_count "
            f"{process_count}"
        )
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    n = len(source)
    local = batch_size // process_count
    num_steps = -(-n // batch_size)
    ds = grain.MapDataset.range(num_steps).map(
        _ReadEvalBatch(source, batch_size, local, process_index * local)
    )
    return EvalBatches(ds, n, prefetch)


def collect(batches: Sequence[Example] | Iterator[Example]) -> Example:
    """Concatenates batches (dropping rows whose 'mask' is False) into one dict of arrays."""
    out: dict[str, list[np.ndarray]] = {}
    for b in batches:
        keep = b.get("mask")
        for k, v in b.items():
            if k != "mask":
                out.setdefault(k, []).append(v if keep is None else v[keep])
    return {k: np.concatenate(v) for k, v in out.items()}
