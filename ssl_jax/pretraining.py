"""Pretraining from Python (a notebook): a recipe by name, overrides as keywords, the run back.

    import ssl_jax

    result = ssl_jax.pretrain("runs/nb", "simclr_fashion_mnist:quick", total_steps=50,
                              **{"model.encoder": "resnet18", "model.resnet.stem": "cifar"})
    result.run.metrics_path, result.metrics()[-1]["loss"], result.evaluation
    encoder = result.encoder()                      # ssl_jax.load_encoder of the run

It does what ``ssl-jax pretrain --config RECIPE --workdir DIR --config.FIELD=VALUE ...`` does
(train, then evaluate when ``config.eval_at_end``), in this process and without flags.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import ml_collections

from ssl_jax import recipes
from ssl_jax.run import Run


@dataclasses.dataclass
class PretrainResult:
    """What :func:`pretrain` returns: the run directory, the config it trained with
    (``total_epochs`` resolved into ``total_steps``), the final train state (on the device mesh)
    and the evaluation rows (``eval.json``; None when ``config.eval_at_end`` is False)."""

    run: Run
    config: ml_collections.ConfigDict
    state: Any
    evaluation: list[dict] | None

    @property
    def workdir(self) -> str:
        return self.run.workdir

    def encoder(self, step: int | None = None) -> Any:
        """The run's frozen encoder (:func:`ssl_jax.load_encoder`), the latest step unless
        ``step``."""
        from ssl_jax.evaluation import load_encoder

        return load_encoder(self.run.workdir, step=step)

    def metrics(self) -> list[dict]:
        """The logged steps (``metrics.jsonl``), one dict per step."""
        from ssl_jax import logs

        return logs.read_metrics(self.run.workdir)


def pretrain(
    workdir: str,
    config: str | ml_collections.ConfigDict = "simclr_fashion_mnist",
    *,
    quiet: bool = False,
    **overrides: Any,
) -> PretrainResult:
    """Pretrain a recipe into ``workdir`` (resuming a run that is there), then evaluate it when
    the config says so (``eval_at_end``; pass ``eval_at_end=False`` to skip).

    Args:
      workdir: the run directory (made if missing; the same one again resumes).
      config: a recipe name with an optional variant (``'simclr_fashion_mnist:quick'``; `ssl-jax
        recipes` lists them), a recipe file (``'configs/x.py'``), or a ConfigDict (copied).
      quiet: silence the console (progress lines and the evaluation table); the files of the
        run are written as always.
      **overrides: config fields to set, as on the command line. Top-level fields as keywords
        (``total_steps=50``); nested ones by dotted name through a dict
        (``**{'model.encoder': 'resnet18'}``) or as a dict per group
        (``model={'encoder': 'resnet18'}``); lists become tuples. ``total_steps`` and
        ``total_epochs`` together are an error.

    Returns:
      :class:`PretrainResult`. Raises ValueError (a RecipeError for the recipe) naming the field
      or file for bad input, as the command prints it.
    """
    config = recipes.load_with_overrides(config, overrides)
    from ssl_jax import train
    from ssl_jax.evaluation import evaluate

    with _silenced(quiet):
        trained = train.train(config, workdir)
        rows = None
        if config.eval_at_end:
            rows = evaluate(  # a folder without labels or a test split: one line, no rows
                workdir, finetune_fractions=config.eval_finetune_fractions, unevaluable="skip"
            )
    return PretrainResult(Run(trained.workdir), config, trained.state, rows)


@contextlib.contextmanager
def _silenced(quiet: bool) -> Iterator[None]:
    if not quiet:
        yield
        return
    with (
        open(os.devnull, "w") as sink,
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
    ):
        yield
