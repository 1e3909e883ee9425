"""An exported encoder's arrays under PyTorch's names and layouts: torchvision's ResNet, timm's ViT.

    arrays = encoder_files.flat_arrays(encoder.state)     # {"stem_conv.kernel": HWIO, ...}
    state_dict, model = torch_state_dict(meta, arrays)     # {"conv1.weight": OIHW, ...}

then, in PyTorch (``model`` says how to build the module the dict loads into)::

    net = torchvision.models.resnet50(); net.fc = torch.nn.Identity()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})

Layouts: convolution kernels HWIO -> OIHW; linear kernels ``[in, out]`` -> ``[out, in]``; the
ViT's patch embedding, a matmul over ``(y, x, c)``-ordered patches here, becomes timm's
``patch_embed.proj`` convolution; the fused qkv projection keeps its order (q, k, v, then heads:
timm's ``reshape(B, N, 3, heads, head_dim)`` is ours); BatchNorm ``scale / bias / mean / var``
-> ``weight / bias / running_mean / running_var`` (+ ``num_batches_tracked``); LayerNorm
``scale`` -> ``weight``. NumPy only: nothing here imports torch.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ssl_jax import models
from ssl_jax.models.vit import SIZES

_BN = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
TIMM_NAMES = {name: f"{name}_patch16_224" for name in SIZES}


def torch_state_dict(meta: dict, arrays: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict]:
    """``(state_dict, model)``: the encoder's arrays under torchvision's (ResNet) or timm's (ViT)
    names and layouts, and how to build the PyTorch module they load into (``model``: library,
    constructor, keyword arguments and the changes to make to it). ``meta``: the export's
    ``encoder.json``. ValueError for an encoder with no such counterpart (the convnet)."""
    name = meta["model"]["encoder"]
    if name.startswith("resnet"):
        return _resnet(meta, arrays)
    if name in TIMM_NAMES:
        return _vit(meta, arrays)
    raise ValueError(
        f"--format torch: the {name} encoder has no torchvision or timm counterpart (resnet18, "
        "resnet34, resnet50 and vit_* have); its safetensors export is framework-neutral."
    )


def _conv(kernel: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))  # HWIO -> OIHW


def _linear(kernel: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(kernel.T)  # [in, out] -> [out, in]


def _batch_norm(prefix: str, arrays: dict, target: str, out: dict) -> None:
    for ours, theirs in _BN.items():
        out[f"{target}.{theirs}"] = arrays.pop(f"{prefix}.{ours}")
    out[f"{target}.num_batches_tracked"] = np.zeros((), np.int64)


def _resnet(meta: dict, arrays: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict]:
    m = meta["model"]
    settings = m["settings"]
    if float(settings["width"]) != 1:
        raise ValueError(
            f"--format torch: torchvision has no ResNet of width {settings['width']} (its "
            "wide_resnet widens only the bottleneck); export a width-1 ResNet."
        )
    arrays = dict(arrays)
    stage_sizes = models.ENCODERS.get(m["encoder"]).constructor.keywords["stage_sizes"]
    out: dict[str, Any] = {"conv1.weight": _conv(arrays.pop("stem_conv.kernel"))}
    _batch_norm("stem_bn", arrays, "bn1", out)
    k = 0
    for i, size in enumerate(stage_sizes):
        for j in range(size):
            ours, theirs = f"blocks.{k}", f"layer{i + 1}.{j}"
            for n in (1, 2, 3):
                if f"{ours}.conv{n}.kernel" in arrays:
                    out[f"{theirs}.conv{n}.weight"] = _conv(arrays.pop(f"{ours}.conv{n}.kernel"))
                    _batch_norm(f"{ours}.bn{n}", arrays, f"{theirs}.bn{n}", out)
            if f"{ours}.downsample_conv.kernel" in arrays:
                kernel = arrays.pop(f"{ours}.downsample_conv.kernel")
                out[f"{theirs}.downsample.0.weight"] = _conv(kernel)
                _batch_norm(f"{ours}.downsample_bn", arrays, f"{theirs}.downsample.1", out)
            k += 1
    _check_all_used(arrays)
    channels, stem = int(m["in_channels"]), settings["stem"]
    changes = ["model.fc = torch.nn.Identity()"]
    if stem == "cifar":
        changes += [
            f"model.conv1 = torch.nn.Conv2d({channels}, 64, 3, 1, 1, bias=False)",
            "model.maxpool = torch.nn.Identity()",
        ]
    elif channels != 3:
        changes.append(f"model.conv1 = torch.nn.Conv2d({channels}, 64, 7, 2, 3, bias=False)")
    model = {
        "library": "torchvision",
        "constructor": f"torchvision.models.{m['encoder']}",
        "kwargs": {},
        "changes": changes,
    }
    return out, model


def _vit(meta: dict, arrays: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict]:
    m = meta["model"]
    settings = m["settings"]
    arrays = dict(arrays)
    channels, p = int(m["in_channels"]), int(settings["patch_size"])
    kernel = arrays.pop("patch_embed.kernel")  # [p * p * C, D], rows ordered (y, x, c)
    out: dict[str, Any] = {
        "cls_token": arrays.pop("cls_token"),
        "pos_embed": arrays.pop("pos_embed"),
        "patch_embed.proj.weight": _conv(kernel.reshape(p, p, channels, -1)),
        "patch_embed.proj.bias": arrays.pop("patch_embed.bias"),
    }
    for name in sorted(arrays):
        match = re.fullmatch(r"(blocks\.\d+\.)?(.+)\.(kernel|scale|bias)", name)
        if match is None:
            continue
        block, layer, leaf = match.groups()
        layer = {"fc1": "mlp.fc1", "fc2": "mlp.fc2"}.get(layer, layer)
        value = arrays.pop(name)
        if leaf == "kernel":
            out[f"{block or ''}{layer}.weight"] = _linear(value)
        else:
            out[f"{block or ''}{layer}.{'weight' if leaf == 'scale' else 'bias'}"] = value
    _check_all_used(arrays)
    pool = settings["pool"]
    kwargs = {
        "num_classes": 0,
        "img_size": int(settings["image_size"]),
        "patch_size": p,
        "in_chans": channels,
        # timm's 'avg' pools the patch tokens after the final norm only with fc_norm=False.
        "global_pool": "token" if pool == "cls" else "avg",
        "fc_norm": False,
    }
    model = {
        "library": "timm",
        "constructor": f"timm.create_model('{TIMM_NAMES[m['encoder']]}', **kwargs)",
        "kwargs": kwargs,
        "changes": [],
    }
    return out, model


def _check_all_used(arrays: dict) -> None:
    if arrays:
        raise ValueError(f"--format torch: arrays with no PyTorch name: {sorted(arrays)[:5]}.")
