"""The kNN protocol: weighted kNN (``knn``: k=200, votes exp(sim / 0.1)) and majority kNN
(``knn_k20``: k=20, one vote each) on frozen features, with the labelled subset as the memory
bank. Both rows come from one neighbour search (:mod:`ssl_jax.evaluation.knn`); k is capped at
the subset size."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from ssl_jax import logs
from ssl_jax.evaluation.knn import knn_neighbors, knn_votes, l2_normalize
from ssl_jax.evaluation.metrics import topk_accuracy
from ssl_jax.evaluation.protocol import EvalInputs, Protocol, fraction_name, pct


@dataclasses.dataclass(frozen=True)
class KnnProtocol(Protocol):
    """Cosine kNN: ``knn_k`` neighbours voting ``exp(sim / knn_temperature)`` (row ``knn``) and
    ``knn_majority_k`` neighbours with one vote each (row ``knn_k<knn_majority_k>``)."""

    name: ClassVar[str] = "knn"
    title: ClassVar[str] = "kNN"
    rank: ClassVar[int] = 0
    representations: ClassVar[tuple[str, ...]] = ("ssl", "random_init")

    knn_k: int = 200
    knn_temperature: float = 0.1
    knn_majority_k: int = 20

    def variants(self) -> tuple[tuple[str, int, float | None], ...]:
        """(row name, k, temperature or None for a majority vote) of each row."""
        return (
            ("knn", self.knn_k, self.knn_temperature),
            (f"knn_k{self.knn_majority_k}", self.knn_majority_k, None),
        )

    def row_names(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self.variants())

    def run(
        self, data: EvalInputs, representations: Sequence[str], fractions: Sequence[float]
    ) -> list[dict]:
        rows = []
        for name in representations:
            bank_all, query = l2_normalize(data.train_x[name]), l2_normalize(data.test_x[name])
            for f in fractions:
                t = time.perf_counter()
                subset = data.subsets[f]
                new = self._rows(query, data.test_y, bank_all[subset], data.train_y[subset], data)
                rows += [data.row(name, fraction=f, **r) for r in new]
                logs.console(
                    f"  {name} kNN, {fraction_name(f)} labels: top-1 "
                    + ", ".join(f"{pct(r['top1'])}% ({r['protocol']})" for r in new)
                    + f" [{time.perf_counter() - t:.1f} s]"
                )
        return rows

    def _rows(self, query, query_labels, bank, bank_labels, data: EvalInputs) -> list[dict]:
        """One result per variant, from one neighbour search."""
        variants = self.variants()
        k_max = min(max(k for _, k, _ in variants), len(bank))
        sims, labels = knn_neighbors(query, bank, bank_labels, k=k_max)
        out = []
        for protocol, k, temperature in variants:
            k = min(k, len(bank))
            scores = knn_votes(
                sims, labels, num_classes=data.num_classes, k=k, temperature=temperature
            )
            out.append(
                dict(
                    protocol=protocol,
                    top1=topk_accuracy(scores, query_labels, 1),
                    top5=topk_accuracy(scores, query_labels, 5),
                    k=k,
                    temperature=temperature,
                )
            )
        return out

    def settings(self, row: Mapping[str, Any]) -> dict[str, Any]:
        k, temperature = {name: (k, t) for name, k, t in self.variants()}[row["protocol"]]
        return {"k": min(k, row["n_labels"]), "temperature": temperature}

    def notes(self, rows: Sequence[Mapping[str, Any]]) -> str:
        # Always written (also without kNN rows), as eval.md has always described kNN.
        knn = "; ".join(
            f"{name}: k={k}, " + (f"votes exp(sim / {t:g})" if t else "majority vote")
            for name, k, t in self.variants()
        )
        return (
            f"- cosine kNN with the labelled subset as the memory bank ({knn}; k is capped at "
            "the subset size).\n"
        )
