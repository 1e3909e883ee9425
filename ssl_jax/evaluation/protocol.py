"""What an evaluation protocol is, and the registry :func:`~ssl_jax.evaluation.evaluate` reads.

A protocol (weighted and majority kNN, the linear probe, fine-tuning) is a frozen dataclass whose
fields are the ``evaluate(...)`` arguments it reads, named as there (``knn_k``, ``l2_grid``,
``finetune_lr``, ...). It says which representations it evaluates, what rows it writes, how it
runs, which of its settings an earlier ``eval.json`` row must share to be kept, and what
``eval.md`` says about it. The orchestrator (``suite.py``) draws the labelled subsets and
extracts the frozen features once, hands every selected protocol the same :class:`EvalInputs`,
and writes the rows they return.

Adding a protocol (an attentive probe, a segmentation probe): a file here with a
:class:`Protocol` subclass, and one ``PROTOCOLS.add`` line below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from ssl_jax.registry import Registry

# What a protocol can evaluate:
#   ssl          the run's encoder (a checkpoint)
#   random_init  the same architecture as initialised by ``init_state`` with the run's seed
#   raw_pixels   flattened pixels in [0, 1] (a frozen-feature baseline)
#   supervised   random_init fine-tuned on the labelled subset: the supervised-from-scratch
#                baseline (fine-tuning only)
REPRESENTATIONS = ("ssl", "random_init", "raw_pixels", "supervised")


def pct(x: float | None) -> str:
    """An accuracy in [0, 1] as a percentage with one decimal ('-' for None)."""
    return "-" if x is None else f"{100 * x:.1f}"


def fraction_name(f: float) -> str:
    """A label fraction as a percentage: 0.1 -> '10%'."""
    return f"{100 * f:g}%"


@dataclasses.dataclass(frozen=True)
class EvalInputs:
    """What every protocol of one evaluation reads, made once by the orchestrator.

    Attributes:
      models: representation -> its model: an :class:`~ssl_jax.evaluation.features.Encoder`
        (ssl; random_init and supervised: the random initialisation), or for raw_pixels a
        function of uint8 images [B, H, W, C] to float32 [B, F].
      train_x, test_x: representation -> float32 features [N, F] / [T, F] of the training and
        test split, for the representations that a frozen-feature protocol evaluates.
      train_y, test_y: int32 labels [N] and [T].
      subsets: label fraction -> indices into the training split of its class-balanced
        labelled subset, shared by every representation and protocol.
      train_source, test_source: the splits' random-access sources (read, e.g., to fine-tune).
      num_classes: C.
      seed: the labelled subsets' and validation splits' seed, also fine-tuning's.
      batch_size: images per feature-extraction (and scoring) batch.
      step, checkpoint_id, test_split: which checkpoint and split the rows describe.
    """

    models: Mapping[str, Callable[[Any], Any]]
    train_x: Mapping[str, np.ndarray]
    test_x: Mapping[str, np.ndarray]
    train_y: np.ndarray
    test_y: np.ndarray
    subsets: Mapping[float, np.ndarray]
    train_source: Any
    test_source: Any
    num_classes: int
    seed: int
    batch_size: int
    step: int
    checkpoint_id: int | None
    test_split: str

    def row(
        self,
        representation: str,
        protocol: str,
        fraction: float,
        top1: float,
        top5: float | None,
        **fields: Any,
    ) -> dict:
        """One row of ``eval.json``: the keys every row has, in their order, then ``fields``
        (the protocol's own, in the order given)."""
        return dict(
            representation=representation,
            protocol=protocol,
            label_fraction=fraction,
            n_labels=int(len(self.subsets[fraction])),
            top1=top1,
            top5=top5,
            seed=self.seed,
            step=self.step,
            checkpoint_id=self.checkpoint_id,
            test_split=self.test_split,
            **fields,
        )


class Protocol:
    """An evaluation protocol. Subclasses are frozen dataclasses whose fields are the
    ``evaluate(...)`` arguments they read (:meth:`from_options` fills them by name), with:

    Attributes:
      name: what ``evaluate(protocols=...)`` selects (its name in :data:`PROTOCOLS`).
      title: its name in the stage lines of an evaluation ('' : ``name``).
      rank: its place among the protocols: in ``PROTOCOL_CHOICES``, in the tables, in eval.md.
      representations: those of :data:`REPRESENTATIONS` it evaluates (when selected).
      uses_features: it reads the frozen features of its representations
        (``EvalInputs.train_x`` / ``test_x``, extracted once for every protocol) rather than
        only their models.
    """

    name: ClassVar[str]
    title: ClassVar[str] = ""
    rank: ClassVar[int]
    representations: ClassVar[tuple[str, ...]]
    uses_features: ClassVar[bool] = True

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Protocol:
        """The protocol with the settings among ``options`` (evaluate's arguments by name)."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in options.items() if key in names})

    def row_names(self) -> tuple[str, ...]:
        """The ``protocol`` values of its rows, in table order."""
        return (self.name,)

    def fractions(self, label_fractions: Sequence[float]) -> list[float]:
        """The label fractions it runs at (default: all); a ValueError for a bad choice."""
        return list(label_fractions)

    def scope(self, fractions: Sequence[float]) -> str:
        """What it applies to, for the message when nothing selected does."""
        return f"{self.name}: {', '.join(self.representations)}"

    def run(
        self, data: EvalInputs, representations: Sequence[str], fractions: Sequence[float]
    ) -> list[dict]:
        """Its rows (:meth:`EvalInputs.row`) for these representations and label fractions,
        with a console line per result."""
        raise NotImplementedError

    def settings(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The fields an earlier row of this protocol must hold to have been made with this
        evaluation's settings (what eval.md describes), so that eval.json keeps it."""
        raise NotImplementedError

    def same_settings(self, row: Mapping[str, Any]) -> bool:
        """Whether an earlier row of this protocol (one of :meth:`row_names`) was made with
        this evaluation's settings."""
        return all(row.get(key) == value for key, value in self.settings(row).items())

    def notes(self, rows: Sequence[Mapping[str, Any]]) -> str:
        """Its lines of eval.md's description (``- name: ...\\n``), given every row shown."""
        return ""


PROTOCOLS: Registry[type[Protocol]] = Registry("evaluation protocol", field="protocols")
PROTOCOLS.add("knn", "ssl_jax.evaluation.knn_protocol:KnnProtocol")
PROTOCOLS.add("linear", "ssl_jax.evaluation.linear_protocol:LinearProtocol")
PROTOCOLS.add("finetune", "ssl_jax.evaluation.finetune_protocol:FinetuneProtocol")


def protocol_names() -> tuple[str, ...]:
    """The registered protocols' names, by rank."""
    return tuple(sorted(PROTOCOLS.names(), key=lambda name: PROTOCOLS.get(name).rank))


def build_protocols(options: Mapping[str, Any]) -> list[Protocol]:
    """Every registered protocol with the settings among ``options``, by rank (those not
    run still judge which earlier rows eval.json keeps)."""
    return [PROTOCOLS.get(name).from_options(options) for name in protocol_names()]
