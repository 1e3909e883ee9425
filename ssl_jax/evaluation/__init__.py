"""Evaluation of pretrained encoders: kNN and linear probes, fine-tuning, label efficiency.

    from ssl_jax.evaluation import evaluate, load_encoder
    rows = evaluate('runs/simclr')          # writes runs/simclr/eval.json and eval.md
    encoder = load_encoder('runs/simclr')   # uint8 [B, H, W, C] -> float32 features [B, F]

or from the shell: ``ssl-jax evaluate --workdir runs/simclr [--label_fractions=0.01,0.1,1.0]``
(``--protocols=knn,linear`` leaves out the fine-tuning, the slow part).

Modules:

- loading and features: ``features`` (load a run's encoder, the frozen-model wrapper, extract
  features);
- algorithms: ``splits`` (class-balanced label subsets and validation splits), ``knn``
  (weighted and majority kNN), ``linear`` (the preconditioned L-BFGS logistic-regression probe),
  ``finetune`` (the whole encoder plus a linear head trained on a labelled subset; from a random
  init it is the supervised-from-scratch baseline), ``metrics`` (top-k with a fixed tie rule),
  ``maps`` (PCA and t-SNE);
- protocols, each an object registered by name in ``protocol.PROTOCOLS``: ``knn_protocol``,
  ``linear_protocol``, ``finetune_protocol`` (``protocol`` says what a protocol provides);
- the orchestrator and its report: ``suite`` (``evaluate``: every representation x protocol x
  label fraction), ``report`` (row order, the eval.json merge, eval.md), ``plots`` (the PNG
  pictures; imported on use, as it needs matplotlib);
- a training-time hook's measure: ``monitor`` (the kNN monitor that pretraining logs every
  ``config.eval_every`` steps).

TODO: multi-process (multi-host) feature extraction and fine-tuning.
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
from ssl_jax.evaluation.finetune import (
    FinetunedClassifier,
    FinetuneHParams,
    default_finetune_steps,
    finetune_and_score,
    finetune_encoder,
)
from ssl_jax.evaluation.knn import knn_neighbors, knn_scores, knn_votes, l2_normalize
from ssl_jax.evaluation.linear import (
    DEFAULT_L2_GRID,
    FeatureStats,
    fit_logistic_regression,
    linear_probe,
)
from ssl_jax.evaluation.maps import pca, tsne
from ssl_jax.evaluation.metrics import label_rank, topk_accuracy
from ssl_jax.evaluation.protocol import PROTOCOLS, REPRESENTATIONS, EvalInputs, Protocol
from ssl_jax.evaluation.report import format_table
from ssl_jax.evaluation.splits import class_balanced_subset, validation_folds, validation_split
from ssl_jax.evaluation.suite import PROTOCOL_CHOICES, evaluate

__all__ = [
    "pca",
    "tsne",
    "DEFAULT_L2_GRID",
    "PROTOCOLS",
    "PROTOCOL_CHOICES",
    "REPRESENTATIONS",
    "Encoder",
    "EvalInputs",
    "FeatureStats",
    "FinetuneHParams",
    "FinetunedClassifier",
    "Protocol",
    "class_balanced_subset",
    "default_finetune_steps",
    "encoder_from_state",
    "evaluate",
    "extract_features",
    "finetune_and_score",
    "finetune_encoder",
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
    "validation_folds",
    "validation_split",
]
