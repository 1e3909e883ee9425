"""A kNN monitor for pretraining: how well the current encoder's features classify, every
``config.eval_every`` steps, logged with the other metrics as ``knn_top1``.

It is a cheap proxy, not the evaluation (``ssl-jax evaluate`` is): a memory bank of
``bank_size`` labelled training images drawn at random (seeded by ``config.seed``) and the first
``query_size`` images of the test split, both read into memory once; cosine kNN with k=20 and
votes ``exp(sim / 0.1)`` (as in solo-learn's monitor and Wu et al. 2018, with a smaller k for a
small bank). The bank and queries never change during a run, so the curve compares like with like,
and they are a pure function of the config (a resumed run logs the same values).

The encoder runs on one local device from a local copy of its (replicated) weights, so the
monitor works the same with one or many processes; only process 0 calls it.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np

from ssl_jax import logs
from ssl_jax.data import ArraySource, Source
from ssl_jax.data.from_config import no_labels_message
from ssl_jax.evaluation.features import encoder_from_state, extract_features
from ssl_jax.evaluation.knn import knn_scores
from ssl_jax.evaluation.metrics import topk_accuracy


def _local_copy(tree: Any) -> Any:
    """A copy of (replicated) global arrays on this process's first local device."""
    device = jax.local_devices()[0]

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            x = x.addressable_data(0)
        return jax.device_put(x, device)

    return jax.tree.map(one, tree)


class KnnMonitor:
    """Call with a method's train state; returns ``{'knn_top1': float}``.

    Args:
      config: the run's config (its encoder, views and seed).
      train_source, test_source: labelled sources (``ssl_jax.data``).
      bank_size: labelled training images in the memory bank.
      query_size: test images classified.
      k, temperature: the weighted vote.
    """

    def __init__(
        self,
        config: Any,
        train_source: Any,
        test_source: Any,
        *,
        bank_size: int = 5_000,
        query_size: int = 2_000,
        k: int = 20,
        temperature: float = 0.1,
    ):
        t = time.perf_counter()
        self.config = config
        self.k, self.temperature = k, temperature
        rng = np.random.default_rng(config.seed)
        bank_idx = np.sort(rng.permutation(len(train_source))[:bank_size])
        # Images without a label (-1: e.g. files at the top of an image folder) are left out.
        self.bank = _in_memory(train_source, bank_idx)
        self.query = _in_memory(test_source, np.arange(min(query_size, len(test_source))))
        self.unlabelled = len(bank_idx) - len(self.bank)
        labels = self.bank.read_batch(np.arange(len(self.bank)))["label"]
        self.num_classes = train_source.num_classes or int(labels.max(initial=-1)) + 1
        self.setup_s = time.perf_counter() - t

    def __call__(self, state: Any) -> dict[str, float]:
        encoder = encoder_from_state(self.config, state)
        encoder = dataclasses.replace(encoder, state=_local_copy(encoder.state))
        bank, bank_y = extract_features(self.bank, {"f": encoder})
        query, query_y = extract_features(self.query, {"f": encoder})
        scores = knn_scores(
            query["f"],
            bank["f"],
            bank_y,
            num_classes=self.num_classes,
            k=self.k,
            temperature=self.temperature,
        )
        return {"knn_top1": float(topk_accuracy(scores, query_y, 1))}


def _in_memory(source: Source, indices: np.ndarray) -> ArraySource:
    """The labelled images among ``source[indices]``, in memory."""
    batch = source.read_batch(indices)
    labelled = np.asarray(batch["label"]) >= 0
    return ArraySource(
        batch["image"][labelled], batch["label"][labelled], num_classes=source.num_classes
    )


def make_monitor(config: Any, train_source: Any, test_source_fn) -> KnnMonitor | None:
    """The run's kNN monitor, or None (with a console line saying why) when it cannot run:
    ``config.eval_every`` is 0, or the data has no labels or no test split."""
    if not config.eval_every:
        return None
    if why := no_labels_message(config, train_source):
        logs.console(why)  # e.g. an image folder without class sub-folders
        return None
    try:
        test_source = test_source_fn()
    except (ValueError, FileNotFoundError, KeyError) as e:
        logs.console(f"kNN monitor off: no test split to score ({e})")
        return None
    monitor = KnnMonitor(config, train_source, test_source)
    if not len(monitor.bank) or not len(monitor.query):
        logs.console("kNN monitor off: no labelled images in the training or the test split")
        return None
    if monitor.unlabelled:
        logs.console(f"kNN monitor: {monitor.unlabelled:,} unlabelled images left out of the bank")
    logs.console(
        f"kNN monitor every {config.eval_every} steps: {len(monitor.bank):,} labelled train "
        f"images as the bank, {len(monitor.query):,} test images "
        f"(read in {monitor.setup_s:.1f} s)"
    )
    return monitor
