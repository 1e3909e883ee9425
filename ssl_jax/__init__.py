"""ssl_jax: self-supervised pretraining (SimCLR, BYOL, SimSiam, Barlow Twins, VICReg, MoCo v3)
in JAX/Flax.

The public API, flat:

    from ssl_jax import nt_xent, byol_loss          # pure losses for your jit/shard_map code
    from ssl_jax import moco_v3_loss, supcon_loss, simsiam_loss, barlow_twins_loss, vicreg_loss
    from ssl_jax import two_views, get_views        # on-device augmentation
    from ssl_jax import get_encoder, ProjectionMLP  # Flax NNX encoders and heads
    from ssl_jax import load_encoder                # a trained run's encoder, ready to apply
    from ssl_jax import export_encoder              # the encoder alone, to hand on (safetensors)

Pretraining from Python (a notebook): ``ssl_jax.pretrain(workdir, 'simclr_fashion_mnist:quick',
**{'model.encoder': 'resnet18'})``, or ``ssl_jax.train.train(config, workdir)`` with a config of
your own; from the shell: ``ssl-jax``.
"""

from importlib import metadata as _metadata
from typing import TYPE_CHECKING

# The function ssl_jax.augment.augment is not re-exported: it would shadow the module.
from ssl_jax.augment import (
    ViewConfig,
    byol_views,
    get_views,
    grayscale_preset,
    simclr_cifar,
    simclr_imagenet,
    two_views,
)
from ssl_jax.losses import (
    barlow_twins_loss,
    barlow_twins_terms,
    byol_loss,
    contrastive_accuracy,
    dino_center,
    dino_loss,
    moco_v3_loss,
    nt_xent,
    simsiam_loss,
    supcon_loss,
    vicreg_loss,
    vicreg_terms,
)
from ssl_jax.models import ConvNet, Predictor, ProjectionMLP, ResNet, get_encoder

if TYPE_CHECKING:
    from ssl_jax.evaluation import load_encoder
    from ssl_jax.export import export_encoder
    from ssl_jax.pretraining import pretrain

try:  # the installed distribution's version (pyproject.toml), one source of truth
    __version__ = _metadata.version("ssl-jax")
except _metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"


def __getattr__(name: str):
    # load_encoder lives with the evaluation code, which imports the input pipeline (grain,
    # TFDS): imported on first use, so `import ssl_jax` (losses, models, augmentation) needs
    # only jax, flax and optax, as on an accelerator machine with nothing else installed.
    # (`from ssl_jax import *` still imports it: it is in __all__.)
    if name == "load_encoder":
        from ssl_jax.evaluation import load_encoder

        return load_encoder
    if name == "pretrain":  # imports the training loop and the input pipeline: on first use
        from ssl_jax.pretraining import pretrain

        return pretrain
    if name == "export_encoder":
        from ssl_jax.export import export_encoder

        return export_encoder
    raise AttributeError(f"module 'ssl_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "load_encoder", "export_encoder", "pretrain"})


__all__ = [
    "ConvNet",
    "Predictor",
    "ProjectionMLP",
    "ResNet",
    "ViewConfig",
    "barlow_twins_loss",
    "barlow_twins_terms",
    "byol_loss",
    "byol_views",
    "contrastive_accuracy",
    "dino_center",
    "dino_loss",
    "export_encoder",
    "get_encoder",
    "get_views",
    "grayscale_preset",
    "load_encoder",
    "moco_v3_loss",
    "nt_xent",
    "pretrain",
    "simclr_cifar",
    "simclr_imagenet",
    "simsiam_loss",
    "supcon_loss",
    "two_views",
    "vicreg_loss",
    "vicreg_terms",
]
