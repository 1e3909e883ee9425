"""The fine-tuning protocol: the whole encoder plus a linear head trained on the labelled subset
(:mod:`ssl_jax.evaluation.finetune`), from the run's encoder (ssl) and from a random
initialisation (supervised: the supervised-from-scratch baseline), with identical settings and
batches. By default only the label fractions below 1 are fine-tuned (the costly one is all the
labels; see the cost note in ``suite.py``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from ssl_jax.evaluation.finetune import FinetuneHParams, default_finetune_steps, finetune_and_score
from ssl_jax.evaluation.protocol import EvalInputs, Protocol, fraction_name

# What a row keeps of finetune_and_score's result (besides top1 / top5), in this order.
FIELDS = ("steps", "batch_size", "lr", "encoder_lr", "train_loss")


@dataclasses.dataclass(frozen=True)
class FinetuneProtocol(Protocol):
    """Fine-tuning at ``finetune_fractions`` (None: the label fractions below 1) for
    ``finetune_steps`` updates (None: :func:`default_finetune_steps` of the subset), with the
    batch and peak learning rates of :class:`FinetuneHParams`."""

    name: ClassVar[str] = "finetune"
    title: ClassVar[str] = "fine-tuning"
    rank: ClassVar[int] = 2
    representations: ClassVar[tuple[str, ...]] = ("ssl", "supervised")
    uses_features: ClassVar[bool] = False

    finetune_fractions: Sequence[float] | None = None
    finetune_steps: int | None = None
    finetune_batch_size: int = FinetuneHParams.batch_size
    finetune_lr: float = FinetuneHParams.lr
    finetune_encoder_lr: float = FinetuneHParams.encoder_lr

    def __post_init__(self):
        if self.finetune_steps is not None and self.finetune_steps < 0:
            raise ValueError(f"finetune_steps must be >= 0 or None, got {self.finetune_steps}")
        self.hparams  # noqa: B018  (checks the settings now, before any run is read)

    @property
    def hparams(self) -> FinetuneHParams:
        return FinetuneHParams(
            batch_size=self.finetune_batch_size,
            lr=self.finetune_lr,
            encoder_lr=self.finetune_encoder_lr,
        )

    def fractions(self, label_fractions: Sequence[float]) -> list[float]:
        if self.finetune_fractions is None:
            return [f for f in label_fractions if f < 1.0]
        chosen = sorted({float(f) for f in self.finetune_fractions})
        if not set(chosen) <= set(label_fractions):
            raise ValueError(
                f"finetune_fractions must be among the label fractions {list(label_fractions)}, "
                f"got {list(self.finetune_fractions)}"
            )
        return chosen

    def scope(self, fractions: Sequence[float]) -> str:
        return (
            f"{super().scope(fractions)}, at the fine-tuning fractions {list(fractions)} (by "
            "default the label fractions below 1)"
        )

    def run(
        self, data: EvalInputs, representations: Sequence[str], fractions: Sequence[float]
    ) -> list[dict]:
        hp = self.hparams
        starts = {name: data.models[name] for name in representations}
        rows = []
        for f in fractions:
            subset = data.subsets[f]
            labelled = data.train_source.read_batch(subset)  # read once, shared by every start
            if not np.array_equal(np.asarray(labelled["label"]), data.train_y[subset]):
                raise ValueError(
                    f"{data.train_source.name} gave other labels on a second read of the "
                    "labelled subset: evaluation needs a deterministic source."
                )
            steps = self.finetune_steps
            if steps is None:
                steps = default_finetune_steps(len(subset), hp.batch_size)
            results = finetune_and_score(
                starts,
                labelled["image"],
                labelled["label"],
                data.test_source,
                num_classes=data.num_classes,
                steps=steps,
                seed=data.seed,
                hparams=hp,
                batch_size=data.batch_size,
                description=f"{fraction_name(f)} labels",
            )
            for name, r in results.items():
                fields = {key: r[key] for key in FIELDS}
                rows.append(data.row(name, self.name, f, r["top1"], r["top5"], **fields))
        return rows  # (the evaluation's stage line says how long it took)

    def settings(self, row: Mapping[str, Any]) -> dict[str, Any]:
        hp = self.hparams
        return {"batch_size": hp.batch_size, "lr": hp.lr, "encoder_lr": hp.encoder_lr}

    def notes(self, rows: Sequence[Mapping[str, Any]]) -> str:
        ft = [r for r in rows if r["protocol"] == self.name]
        if not ft:
            return ""
        hp = self.hparams
        steps = ", ".join(
            f"{r['steps']} steps at {fraction_name(r['label_fraction'])}"
            for r in {r["label_fraction"]: r for r in ft}.values()
        )
        return (
            "- finetune: the whole encoder + a linear head (after a standardising BatchNorm) "
            f"trained on the labelled subset ({steps}; batch {hp.batch_size}; AdamW, peak lr "
            f"{hp.lr:g} head / {hp.encoder_lr:g} encoder, warmup-cosine, weight decay "
            f"{hp.weight_decay:g}; crop scale {hp.crop_scale} + flip; train-mode BatchNorm, eval "
            "mode for scoring). supervised: the same from random_init, with identical settings "
            "and batches.\n"
        )
