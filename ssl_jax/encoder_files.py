"""The directory an exported encoder lives in, and how to read it back without the training state.

    DIR/encoder.json          what the encoder is (name, settings: enough to rebuild it) and what it
                              expects (input size, channels, normalisation) and returns (features)
    DIR/encoder.safetensors   its parameters and BatchNorm statistics, float32, each named by its
                              path in the Flax NNX module ("convs.0.kernel", "norms.0.mean")

:mod:`ssl_jax.export` writes such a directory from a run; ``ssl_jax.load_encoder(DIR)`` reads it
through :func:`read` (this module needs neither the run's checkpoints nor its optimizer state).
The weights file is plain safetensors, readable from any framework; NumPy only here.
"""

from __future__ import annotations

import json
import operator
import os
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import numpy as safetensors_numpy

from ssl_jax import models, saved_config
from ssl_jax.methods.network import COMPUTE_DTYPES

ENCODER_JSON = "encoder.json"
WEIGHTS = "encoder.safetensors"
FORMAT = "ssl_jax.encoder"
FORMAT_VERSION = 1


def is_export_dir(path: Any) -> bool:
    """Whether ``path`` is a directory holding an exported encoder (has ``encoder.json``)."""
    path = os.fspath(path)
    return bool(str(path).strip()) and os.path.isfile(os.path.join(path, ENCODER_JSON))


def flat_arrays(state: nnx.State) -> dict[str, np.ndarray]:
    """An NNX state as ``{"path.to.variable": float32 array}``, names sorted."""
    out = {}
    for path, var in nnx.to_flat_state(state):
        out[".".join(str(p) for p in path)] = np.asarray(var.get_value())
    return dict(sorted(out.items()))


def read_meta(path: str) -> dict:
    """``encoder.json`` of an export directory, checked to be one this version reads."""
    file = os.path.join(path, ENCODER_JSON)
    try:
        with open(file, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{file} is not a readable encoder description: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{file} is not an ssl_jax encoder export (no format: {FORMAT!r}).")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{file} has format_version {meta['format_version']}, newer than this ssl_jax reads "
            f"({FORMAT_VERSION}): upgrade ssl_jax (pip install -U ssl-jax)."
        )
    return meta


def build_module(meta: dict) -> nnx.Module:
    """The encoder ``meta['model']`` describes, in eval mode, its arrays abstract (nothing is
    allocated or initialised)."""
    m = meta["model"]
    entry = models.ENCODERS.get(m["encoder"])
    settings = entry.settings(**m["settings"])
    settings.validate()

    def make() -> nnx.Module:
        return entry.constructor(
            **settings.kwargs(),
            in_channels=int(m["in_channels"]),
            dtype=COMPUTE_DTYPES[m["compute_dtype"]],
            conv_impl=m["conv_impl"],
            rngs=nnx.Rngs(0),
        )

    module = nnx.eval_shape(make)
    module.eval()
    return module


def fill_state(abstract: nnx.State, arrays: dict[str, np.ndarray], source: str) -> nnx.State:
    """``abstract`` with every variable's value taken from ``arrays`` (by name); a ValueError
    naming ``source`` when names, shapes or dtypes differ."""
    flat = list(nnx.to_flat_state(abstract))
    names = [".".join(str(p) for p in path) for path, _ in flat]
    missing, extra = sorted(set(names) - set(arrays)), sorted(set(arrays) - set(names))
    if missing or extra:
        raise ValueError(
            f"{source} does not fit the encoder encoder.json describes: missing {missing[:5]}, "
            f"unexpected {extra[:5]}. Export the run again (ssl-jax export --workdir RUN)."
        )
    filled = []
    for name, (path, var) in zip(names, flat, strict=True):
        array = arrays[name]
        if array.shape != var.shape or array.dtype != var.dtype:
            raise ValueError(
                f"{source}: {name} is {array.dtype}{list(array.shape)}, the encoder needs "
                f"{var.dtype}{list(var.shape)}. Export the run again."
            )
        filled.append((path, var.replace(jnp.asarray(array))))
    return nnx.from_flat_state(filled)


def read(path: str, *, step: Any = None) -> dict[str, Any]:
    """An export directory's encoder as the fields of :class:`ssl_jax.evaluation.Encoder`
    (graphdef, state, config, step, workdir, image_size, mean, std). ``step``, if given, must
    be the step that was exported (an export holds one): else FileNotFoundError."""
    path = os.path.abspath(path)
    meta = read_meta(path)
    exported = int(meta["source"]["step"])
    if step is not None and _as_int(step) != exported:
        raise FileNotFoundError(
            f"{path} holds the encoder of step {exported} only, not step {step}: export that "
            "step from the run (ssl-jax export --workdir RUN --step N)."
        )
    weights = os.path.join(path, meta.get("files", {}).get("weights", WEIGHTS))
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"{weights} is missing: export the run again.")
    arrays = safetensors_numpy.load_file(weights)
    graphdef, abstract = nnx.split(build_module(meta))
    state = fill_state(abstract, arrays, weights)
    inputs = meta["input"]
    return dict(
        graphdef=graphdef,
        state=state,
        # checked like config.json: an export may come from someone else
        config=saved_config.from_saved(meta["run_config"], os.path.join(path, ENCODER_JSON)),
        step=exported,
        workdir=path,
        image_size=int(inputs["image_size"]),
        mean=tuple(float(v) for v in inputs["mean"]),
        std=tuple(float(v) for v in inputs["std"]),
    )


def _as_int(step: Any) -> int:
    try:
        return int(step.strip()) if isinstance(step, str) else operator.index(step)
    except (TypeError, ValueError):
        raise TypeError(
            f"step must be an int checkpoint step (e.g. step=1000); got {step!r}."
        ) from None
