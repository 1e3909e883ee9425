"""Export a run's encoder alone, to hand to someone else: no optimizer state, no projector, no
target network.

    ssl_jax.export_encoder("runs/simclr")            # -> runs/simclr/exported/
    encoder = ssl_jax.load_encoder("runs/simclr/exported")   # the same features as the run's
    # or: ssl-jax export --workdir runs/simclr [--out DIR] [--step N] [--format torch]

The export holds what the method evaluates (``method.encoder_of``: DINO's teacher, BYOL's online
encoder, MoCo v3's query encoder) in eval mode, written as described in
:mod:`ssl_jax.encoder_files`: ``encoder.safetensors`` and ``encoder.json`` (the encoder's name
and settings, its input size, channels and normalisation, which features it returns and their
dimension, the ssl_jax version, the source run and step). ``formats=("torch",)`` adds
``torch.safetensors``: the same arrays under torchvision's ResNet or timm's ViT names
(:mod:`ssl_jax.torch_names`).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from safetensors import numpy as safetensors_numpy

from ssl_jax import encoder_files, models, outputs
from ssl_jax.config import to_json
from ssl_jax.evaluation.features import Encoder, load_encoder
from ssl_jax.torch_names import torch_state_dict

FORMATS = ("torch",)  # beside the native safetensors export, which is always written
TORCH_WEIGHTS = "torch.safetensors"


def export_encoder(
    workdir: str,
    out_dir: str | None = None,
    *,
    step: int | str | None = None,
    formats: Sequence[str] = (),
) -> str:
    """Write the encoder of a run's checkpoint to ``out_dir`` and return its absolute path.

    Args:
      workdir: a run directory (``ssl-jax pretrain --workdir``).
      out_dir: where to write (made if missing; default ``workdir/exported``). Files of an
        earlier export there are replaced; a directory holding anything else is refused.
      step: the checkpoint (default: the latest).
      formats: extra formats: ``"torch"`` (a state dict with torchvision's / timm's names).

    Raises:
      FileNotFoundError: no run, no checkpoint, or no checkpoint of that step.
      ValueError: an unknown format, an encoder with no torch counterpart, a non-empty
        ``out_dir`` that is no export, or ``workdir`` that is already an export.
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"Unknown export format(s) {unknown}: choose from {list(FORMATS)}.")
    if encoder_files.is_export_dir(workdir):
        raise ValueError(f"{workdir} is an exported encoder already: give the run's directory.")
    out_dir = os.path.abspath(out_dir or os.path.join(workdir, "exported"))
    _check_out_dir(out_dir)
    encoder = load_encoder(workdir, step=step)
    arrays = encoder_files.flat_arrays(encoder.state)
    meta = describe(encoder, arrays)
    files = {encoder_files.WEIGHTS: arrays}
    if "torch" in formats:
        state_dict, model = torch_state_dict(meta, arrays)
        files[TORCH_WEIGHTS] = state_dict
        meta["files"]["torch"] = TORCH_WEIGHTS
        meta["torch"] = {**model, "input_layout": "NCHW"}
    os.makedirs(out_dir, exist_ok=True)
    stale = os.path.join(out_dir, TORCH_WEIGHTS)
    if TORCH_WEIGHTS not in files and os.path.exists(stale):
        os.remove(stale)
    tags = {"format": encoder_files.FORMAT, "encoder": meta["model"]["encoder"]}
    for name, tensors in files.items():
        _save_safetensors(os.path.join(out_dir, name), tensors, tags)
    # Last: a directory with encoder.json is a complete export.
    outputs.write_text(
        os.path.join(out_dir, encoder_files.ENCODER_JSON), json.dumps(meta, indent=2) + "\n"
    )
    return out_dir


def _check_out_dir(out_dir: str) -> None:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out {out_dir} is a file: give a directory (it is made if missing).")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not encoder_files.is_export_dir(out_dir):
        raise ValueError(
            f"--out {out_dir} holds other files: choose a new or empty directory (an earlier "
            "export there would be replaced)."
        )


def _save_safetensors(path: str, tensors: dict[str, np.ndarray], tags: dict[str, str]) -> None:
    # Through outputs: a new file renamed over ``path`` (a link there is replaced, not followed).
    outputs.write_bytes(path, safetensors_numpy.save(tensors, metadata=tags))


def describe(encoder: Encoder, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """``encoder.json``: what the encoder is, expects and returns, and where it came from."""
    config = encoder.config
    settings = models.encoder_settings(config.model)
    block = models.ENCODERS.get(config.model.encoder).block
    return {
        "format": encoder_files.FORMAT,
        "format_version": encoder_files.FORMAT_VERSION,
        "ssl_jax_version": _version(),
        "model": {
            "encoder": config.model.encoder,
            "block": block,
            "settings": dataclasses.asdict(settings),
            "in_channels": int(config.image_channels),
            "compute_dtype": config.model.compute_dtype,
            "conv_impl": config.model.conv_impl,
            "num_parameters": int(sum(a.size for a in arrays.values())),
        },
        "input": {
            "layout": "NHWC",
            "image_size": encoder.image_size,
            "channels": int(config.image_channels),
            "values": "uint8 in [0, 255], or float in [0, 1] (uint8 / 255)",
            "preprocess": "scale to [0, 1]; resize the shorter side to image_size (antialiased "
            "bilinear) and centre-crop to image_size x image_size; (x - mean) / std per channel",
            "mean": list(encoder.mean),
            "std": list(encoder.std),
        },
        "features": {"dim": encoder.num_features, **_features(block, settings)},
        "source": {
            "workdir": encoder.workdir,
            "step": encoder.step,
            "method": config.method,
            "dataset": config.dataset,
        },
        "files": {"weights": encoder_files.WEIGHTS},
        "run_config": json.loads(to_json(config)),
    }


def _features(block: str, settings: Any) -> dict[str, str]:
    """Which features an encoder family returns (``kind`` and a sentence)."""
    if block == "vit":
        if settings.pool == "cls":
            return {"kind": "class_token", "description": "the class token after the final norm"}
        return {"kind": "mean_patch_tokens", "description": "the patch tokens' mean after norm"}
    if block == "convnet" and int(settings.grid) > 1:
        g = int(settings.grid)
        return {
            "kind": "grid",
            "description": f"the last conv map average-pooled to {g}x{g} cells, flattened "
            "row-major: feature (row * grid + col) * channels + channel",
        }
    if block in ("convnet", "resnet"):
        return {"kind": "pooled", "description": "the last map's global average pool"}
    return {"kind": "encoder_output", "description": "the encoder's output"}


def _version() -> str:
    try:
        return importlib.metadata.version("ssl-jax")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"
