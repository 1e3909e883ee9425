"""Data: random-access image sources and grain pipelines.

    source = get_source('fashion_mnist', split='train')      # or 'tfds:cifar10', 'folder:/x', ...
    it = train_iterator(source, global_batch_size=256, seed=0,
                        process_index=jax.process_index(), process_count=jax.process_count())
    batch = next(it)    # {'image': uint8 [256 // P, 28, 28, 1], 'label': int32 [256 // P]}
    state = it.get_state()      # JSON-serialisable; resume with it.set_state(state)
    for b in eval_batches(get_source('fashion_mnist', split='test'), batch_size=512): ...

    source = source_from_config(config)   # what a run's config names (training, evaluation)

Sources register by kind in data/registry.py; the TFDS-based ones are imported on first use.
"""

from ssl_jax.data.folder import FolderSource, UnreadableImageError
from ssl_jax.data.from_config import check_source, source_from_config
from ssl_jax.data.pipeline import (
    EvalBatches,
    TrainIterator,
    collect,
    eval_batches,
    steps_per_epoch,
    train_iterator,
)
from ssl_jax.data.registry import SOURCES, get_source
from ssl_jax.data.sources import (
    ArraySource,
    Source,
    SyntheticSource,
    resize_center_crop,
    to_memory,
)
from ssl_jax.data.tfds_sources import TfdsSource

__all__ = [
    "ArraySource",
    "SOURCES",
    "EvalBatches",
    "FolderSource",
    "Source",
    "SyntheticSource",
    "TfdsSource",
    "TrainIterator",
    "check_source",
    "UnreadableImageError",
    "collect",
    "eval_batches",
    "get_source",
    "resize_center_crop",
    "source_from_config",
    "steps_per_epoch",
    "to_memory",
    "train_iterator",
]
