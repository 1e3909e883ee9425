"""The linear-probe protocol: L2-regularised logistic regression on frozen, standardised
features (:func:`ssl_jax.evaluation.linear.linear_probe`), its L2 chosen on a validation split of
the labelled subset by cross-entropy."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from ssl_jax import logs
from ssl_jax.evaluation.linear import DEFAULT_L2_GRID, FeatureStats, linear_probe
from ssl_jax.evaluation.protocol import EvalInputs, Protocol, fraction_name, pct

# What a row keeps of linear_probe's result (besides top1 / top5), in this order.
FIELDS = ("l2", "l2_selected", "select_by", "val_top1", "val_ce", "n_val")


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


@dataclasses.dataclass(frozen=True)
class LinearProtocol(Protocol):
    """The linear probe with the L2 candidates ``l2_grid`` and ``max_iter`` L-BFGS iterations."""

    name: ClassVar[str] = "linear"
    title: ClassVar[str] = "linear probe"
    rank: ClassVar[int] = 1
    representations: ClassVar[tuple[str, ...]] = ("ssl", "random_init", "raw_pixels")
    select_by: ClassVar[str] = "cross_entropy"  # how linear_probe chooses its L2

    l2_grid: Sequence[float] = DEFAULT_L2_GRID
    max_iter: int = 50

    def run(
        self, data: EvalInputs, representations: Sequence[str], fractions: Sequence[float]
    ) -> list[dict]:
        rows = []
        for name in representations:
            stats = FeatureStats.of(data.train_x[name])  # standardisation + preconditioner, once
            for f in fractions:
                t = time.perf_counter()
                probe = linear_probe(
                    data.train_x[name],
                    data.train_y,
                    data.test_x[name],
                    data.test_y,
                    data.subsets[f],
                    num_classes=data.num_classes,
                    seed=data.seed,
                    l2_grid=tuple(self.l2_grid),
                    max_iter=self.max_iter,
                    stats=stats,
                    select_by=self.select_by,
                )
                fields = {key: probe[key] for key in FIELDS}
                rows.append(data.row(name, self.name, f, probe["top1"], probe["top5"], **fields))
                logs.console(
                    f"  {name} linear, {fraction_name(f)} labels: top-1 {pct(probe['top1'])}% "
                    f"(l2={probe['l2_selected']:g} chosen: validation cross-entropy "
                    f"{_num(probe['val_ce'])}, top-1 {pct(probe['val_top1'])}%; refit with "
                    f"{probe['l2']:.3g}) "
                    f"[{time.perf_counter() - t:.1f} s]"
                )
        return rows

    def settings(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return {"select_by": self.select_by}

    def same_settings(self, row: Mapping[str, Any]) -> bool:
        # Rows written before the L2 path lack l2_selected; rows written before select_by
        # chose by validation top-1.
        return "l2_selected" in row and super().same_settings(row)

    def notes(self, rows: Sequence[Mapping[str, Any]]) -> str:
        # Always written, as eval.md has always described the probe and the frozen baselines.
        return (
            "- linear: logistic regression (L-BFGS, full batch) on standardised features; L2 "
            "chosen by the lowest cross-entropy on a validation split of the labelled subset "
            "(the candidates fitted strongest first, each from the one before), then refitted "
            "on all of it with the same penalty per summed loss.\n"
            "- random_init: the same encoder before training; raw_pixels: pixels in [0, 1].\n"
        )
