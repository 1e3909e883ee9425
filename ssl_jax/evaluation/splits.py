"""Labelled subsets of the training split and the validation split carved from them.

Every representation is probed on exactly the same labelled images: the subsets are a pure
function of the training labels, the fraction and the seed, never of the features. For one seed
the subsets are nested (the 1% subset is inside the 10% subset, which is inside 100%), because each
class's images are drawn in one fixed random order and a subset takes the first ones.
"""

from __future__ import annotations

import numpy as np


def _class_indices(labels: np.ndarray, num_classes: int) -> list[np.ndarray]:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must be in [0, {num_classes}), got [{labels.min()}, {labels.max()}]: "
            "evaluation needs a labelled dataset."
        )
    return [np.flatnonzero(labels == c) for c in range(num_classes)]


def subset_size(num_in_class: int, fraction: float) -> int:
    """Labelled images a class contributes: round(fraction * n), at least 1 (0 if n is 0)."""
    return 0 if num_in_class == 0 else max(1, int(round(fraction * num_in_class)))


def class_balanced_subset(
    labels: np.ndarray, fraction: float, *, seed: int, num_classes: int | None = None
) -> np.ndarray:
    """Indices of a class-balanced labelled subset of a training split.

    Each class c with n_c images contributes ``subset_size(n_c, fraction)`` of them, drawn in a
    random order fixed by ``seed`` (the same order for every fraction, so subsets are nested).

    Args:
      labels: int [N] labels of the whole training split.
      fraction: in (0, 1]; 1.0 takes every image.
      seed: fixes the draw.
      num_classes: number of classes (default: ``max(labels) + 1``).

    Returns:
      Sorted int64 indices into ``labels``.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    rng = np.random.default_rng([seed, 0])
    chosen = []
    for idx in _class_indices(labels, num_classes):
        order = rng.permutation(idx)  # drawn for every class whatever the fraction: nested
        chosen.append(order[: subset_size(len(idx), fraction)])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def validation_folds(
    labels: np.ndarray,
    subset: np.ndarray,
    *,
    folds: int,
    seed: int,
    num_classes: int | None = None,
) -> list[np.ndarray]:
    """Class-stratified folds of a labelled subset for cross-validation: ``folds`` disjoint
    sorted index arrays (indices into ``labels``, all from ``subset``) that hold out every image
    of each class with m >= 2 labelled images exactly once, each fold about m / folds of them
    (each class's share starting at a random fold, so small classes spread over the folds). A
    class with one labelled image is never held out, so every fold leaves at least one image of
    each class to fit on."""
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    labels = np.asarray(labels)
    subset = np.asarray(subset, np.int64)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    rng = np.random.default_rng([seed, 2])
    fold_of = np.full(len(subset), -1)  # -1: never held out
    for idx in _class_indices(labels[subset], num_classes):
        if len(idx) >= 2:
            order = rng.permutation(idx)
            fold_of[order] = (int(rng.integers(folds)) + np.arange(len(idx))) % folds
    return [np.sort(subset[fold_of == k]) for k in range(folds)]


def validation_split(
    labels: np.ndarray,
    subset: np.ndarray,
    *,
    fraction: float = 0.2,
    seed: int,
    num_classes: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Carve a class-balanced validation split out of a labelled subset (and only out of it).

    A class with m >= 2 labelled images gives max(1, round(fraction * m)) of them to validation
    (never all of them); a class with a single labelled image keeps it for fitting. The
    validation split is empty when every class has one labelled image.

    Args:
      labels: int [N] labels of the whole training split.
      subset: indices into ``labels`` (from :func:`class_balanced_subset`).
      fraction: share of each class's labelled images held out, in (0, 1).
      seed: fixes the draw.
      num_classes: number of classes (default: ``max(labels) + 1``).

    Returns:
      ``(fit, val)``: disjoint sorted index arrays whose union is ``subset``.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    labels = np.asarray(labels)
    subset = np.asarray(subset, np.int64)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    rng = np.random.default_rng([seed, 1])
    val = []
    for idx in _class_indices(labels[subset], num_classes):
        m = len(idx)
        n_val = 0 if m < 2 else min(m - 1, max(1, int(round(fraction * m))))
        val.append(subset[rng.permutation(idx)[:n_val]])
    val_idx = np.sort(np.concatenate(val)).astype(np.int64)
    fit_idx = np.setdiff1d(subset, val_idx).astype(np.int64)
    return fit_idx, val_idx
