"""k-nearest-neighbour classification on frozen features (cosine similarity).

Weighted kNN as in Wu et al. 2018 ("Unsupervised Feature Learning via Non-Parametric Instance
Discrimination", arXiv:1805.01978, eq. 8) and solo-learn's ``WeightedKNNClassifier``: the k most
similar memory-bank features vote for their class with weight ``exp(sim / T)``; with no
temperature each neighbour has one vote (plain majority). Features are L2-normalised here, so
similarities are cosines.

Memory stays bounded: queries go through in chunks and, within a chunk, the bank is scanned in
chunks while a running top-k (similarities, labels) is kept, so at most
``query_chunk * (bank_chunk + k)`` similarities exist at once, whatever the bank size.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def l2_normalize(x: np.ndarray | jax.Array, eps: float = 1e-12) -> np.ndarray:
    """Rows divided by their L2 norm (zero rows stay zero): [N, F] -> float32 [N, F]."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


@functools.partial(jax.jit, static_argnames=("k",))
def _merge_topk(queries, bank, bank_labels, best_sims, best_labels, *, k):
    """Fold one bank chunk into the running top-k: [q, F], [b, F], [b], [q, k], [q, k]."""
    sims = queries @ bank.T  # [q, b]
    sims = jnp.where(bank_labels[None, :] >= 0, sims, -jnp.inf)  # padded bank rows never win
    all_sims = jnp.concatenate([best_sims, sims], axis=1)
    all_labels = jnp.concatenate(
        [best_labels, jnp.broadcast_to(bank_labels[None, :], sims.shape)], axis=1
    )
    # Earlier entries win ties (lax.top_k is stable): the bank order decides, as in a stable sort.
    top_sims, idx = jax.lax.top_k(all_sims, k)
    return top_sims, jnp.take_along_axis(all_labels, idx, axis=1)


def knn_neighbors(
    queries: np.ndarray,
    bank: np.ndarray,
    bank_labels: np.ndarray,
    *,
    k: int,
    query_chunk: int = 256,
    bank_chunk: int = 16384,
) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar bank rows of every query, most similar first.

    Args:
      queries: [Q, F] features (L2-normalised by the caller for cosine similarity).
      bank: [N, F] memory-bank features, same normalisation.
      bank_labels: int [N] classes of the bank rows (>= 0).
      k: neighbours kept; must be <= N.
      query_chunk, bank_chunk: chunk sizes bounding memory (see the module docstring).

    Returns:
      ``(sims, labels)``: float32 [Q, k] similarities in descending order and int32 [Q, k]
      classes of those neighbours.
    """
    queries = np.asarray(queries, np.float32)
    bank = np.asarray(bank, np.float32)
    bank_labels = np.asarray(bank_labels, np.int32)
    n, f = bank.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] (the memory-bank size), got {k}")
    if queries.ndim != 2 or queries.shape[1] != f or bank_labels.shape != (n,):
        raise ValueError(
            f"queries [Q, {f}], bank [N, {f}] and bank_labels [N] expected, got "
            f"{queries.shape}, {bank.shape}, {bank_labels.shape}"
        )
    if bank_labels.size and bank_labels.min() < 0:
        raise ValueError("bank_labels must be >= 0")
    bank_chunk = min(bank_chunk, n)
    n_pad = -n % bank_chunk
    bank = np.concatenate([bank, np.zeros((n_pad, f), np.float32)])
    bank_labels = np.concatenate([bank_labels, np.full((n_pad,), -1, np.int32)])
    bank_chunks = [
        (jnp.asarray(bank[i : i + bank_chunk]), jnp.asarray(bank_labels[i : i + bank_chunk]))
        for i in range(0, len(bank), bank_chunk)
    ]
    q_total = len(queries)
    query_chunk = max(1, min(query_chunk, q_total))
    out_sims, out_labels = [], []
    for start in range(0, q_total, query_chunk):
        q = queries[start : start + query_chunk]
        rows = len(q)
        if rows < query_chunk:  # pad the last chunk: one compiled shape
            q = np.concatenate([q, np.zeros((query_chunk - rows, f), np.float32)])
        best_sims = jnp.full((query_chunk, k), -jnp.inf, jnp.float32)
        best_labels = jnp.full((query_chunk, k), -1, jnp.int32)
        q = jnp.asarray(q)
        for b, bl in bank_chunks:
            best_sims, best_labels = _merge_topk(q, b, bl, best_sims, best_labels, k=k)
        out_sims.append(np.asarray(best_sims)[:rows])
        out_labels.append(np.asarray(best_labels)[:rows])
    return np.concatenate(out_sims), np.concatenate(out_labels)


def knn_votes(
    sims: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    k: int | None = None,
    temperature: float | None = 0.1,
) -> np.ndarray:
    """Class scores from the neighbours of :func:`knn_neighbors`.

    Args:
      sims: [Q, K] similarities, descending; labels: int [Q, K] their classes.
      num_classes: C.
      k: use the first k neighbours (default all K).
      temperature: vote weight ``exp(sim / temperature)``; None gives every neighbour one vote.

    Returns:
      float32 [Q, C] summed votes per class.
    """
    k = sims.shape[1] if k is None else k
    if not 1 <= k <= sims.shape[1]:
        raise ValueError(f"k must be in [1, {sims.shape[1]}], got {k}")
    if temperature is not None and temperature <= 0:
        raise ValueError(f"temperature must be > 0 or None, got {temperature}")
    s = np.asarray(sims[:, :k], np.float32)
    lab = np.asarray(labels[:, :k])
    w = np.ones_like(s) if temperature is None else np.exp(s / temperature)
    flat = (np.arange(s.shape[0])[:, None] * num_classes + lab).ravel()
    votes = np.bincount(flat, weights=w.ravel(), minlength=s.shape[0] * num_classes)
    return votes.reshape(s.shape[0], num_classes).astype(np.float32)


def knn_scores(
    queries: np.ndarray,
    bank: np.ndarray,
    bank_labels: np.ndarray,
    *,
    num_classes: int,
    k: int = 200,
    temperature: float | None = 0.1,
    query_chunk: int = 256,
    bank_chunk: int = 16384,
) -> np.ndarray:
    """kNN class scores [Q, C] of raw features: L2-normalises queries and bank, finds the
    ``min(k, N)`` nearest bank rows and sums their votes (see :func:`knn_votes`)."""
    sims, labels = knn_neighbors(
        l2_normalize(queries),
        l2_normalize(bank),
        bank_labels,
        k=min(k, len(bank)),
        query_chunk=query_chunk,
        bank_chunk=bank_chunk,
    )
    return knn_votes(sims, labels, num_classes=num_classes, temperature=temperature)
