"""Evaluation of pretrained encoders: frozen features, kNN and linear probes, label efficiency.

    from ssl_jax.evaluation import evaluate, load_encoder
    rows = evaluate('runs/simclr')          # writes runs/simclr/eval.json and eval.md
    encoder = load_encoder('runs/simclr')   # uint8 [B, H, W, C] -> float32 features [B, F]

or from the shell: ``ssl-jax evaluate --workdir runs/simclr [--label_fractions=0.01,0.1,1.0]``.

Modules: ``features`` (load a run's encoder, extract features), ``splits`` (class-balanced label
subsets and validation splits), ``knn`` (weighted and majority kNN), ``linear`` (the
preconditioned L-BFGS logistic-regression probe), ``metrics`` (top-k with a fixed tie rule),
``suite`` (``evaluate``: every representation x protocol x label fraction, and the report).

TODO (issue 4, later sessions): fine-tuning the whole encoder on the labelled subsets, a
supervised-from-scratch baseline on the same subsets, and plots of accuracy against the number
of labels; multi-process (multi-host) feature extraction.
"""

from ssl_jax.evaluation.features import (
    Encoder,
    encoder_from_state,
    extract_features,
    load_encoder,
    preprocess,
    random_init_encoder,
    raw_pixels,
)
from ssl_jax.evaluation.knn import knn_neighbors, knn_scores, knn_votes, l2_normalize
from ssl_jax.evaluation.linear import (
    DEFAULT_L2_GRID,
    FeatureStats,
    fit_logistic_regression,
    linear_probe,
)
from ssl_jax.evaluation.metrics import label_rank, topk_accuracy
from ssl_jax.evaluation.splits import class_balanced_subset, validation_split
from ssl_jax.evaluation.suite import PROTOCOLS, REPRESENTATIONS, evaluate, format_table

__all__ = [
    "DEFAULT_L2_GRID",
    "PROTOCOLS",
    "REPRESENTATIONS",
    "Encoder",
    "FeatureStats",
    "class_balanced_subset",
    "encoder_from_state",
    "evaluate",
    "extract_features",
    "fit_logistic_regression",
    "format_table",
    "knn_neighbors",
    "knn_scores",
    "knn_votes",
    "l2_normalize",
    "label_rank",
    "linear_probe",
    "load_encoder",
    "preprocess",
    "random_init_encoder",
    "raw_pixels",
    "topk_accuracy",
    "validation_split",
]
