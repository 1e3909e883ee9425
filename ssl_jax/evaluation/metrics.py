"""Top-k accuracy from per-class scores, with a fixed tie rule.

A class ranks above another when its score is higher, or equal and its index is lower (the order
a stable descending sort gives). Majority-vote kNN produces many ties, so the rule is part of the
definition of its accuracy, and the NumPy reference in the tests follows it.
"""

from __future__ import annotations

import numpy as np


def label_rank(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Rank (0 = first) of each true label among the classes.

    Args:
      scores: [Q, C] class scores (logits, vote totals, ...).
      labels: int [Q] true classes.

    Returns:
      int [Q]: #{c: s_c > s_y} + #{c < y: s_c == s_y}.
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.ndim != 2 or labels.shape != (scores.shape[0],):
        raise ValueError(
            f"scores must be [Q, C] and labels [Q], got {scores.shape}, {labels.shape}"
        )
    s_true = np.take_along_axis(scores, labels[:, None], axis=1)
    lower = np.arange(scores.shape[1])[None, :] < labels[:, None]
    return np.sum((scores > s_true) | ((scores == s_true) & lower), axis=1)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float | None:
    """Fraction of rows whose true label is among the top ``k`` classes; None when k >= C
    (trivially 1, so not worth reporting)."""
    if k >= np.shape(scores)[1]:
        return None
    return float(np.mean(label_rank(scores, labels) < k))
