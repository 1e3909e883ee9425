"""Check ``ssl-jax export --format torch``: load the state dict into torchvision's ResNet and timm's
ViT, built as ``encoder.json`` says, and compare their features with ssl_jax's on random images.

    python benchmarks/check_export_torch.py                  # four encoders (below), untrained runs
    python benchmarks/check_export_torch.py --workdir RUN    # a real run (resnet* or vit_*)

Needs torch, torchvision and timm (the ``bench`` extra); not a test, as CI has no torch. Without
``--workdir`` each encoder gets a run directory that no training wrote: its initial state (the
method's ``init_state``) with every weight and BatchNorm statistic moved at random, so that a
wrong name, transpose or statistic shows, saved as a checkpoint and exported from there. The
PyTorch module is built by the recipe in ``encoder.json`` (``torch.constructor``, ``kwargs`` and
the ``changes`` lines, run as written), loaded with ``strict=True``, and fed the images prepared as
``encoder.json``'s ``input`` says (``/ 255``, ``(x - mean) / std``, NCHW). Printed: the largest
absolute difference of the features and the largest feature, for scale.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import ssl_jax  # noqa: E402
from ssl_jax import config as config_lib  # noqa: E402
from ssl_jax import outputs  # noqa: E402
from ssl_jax.methods import get_method  # noqa: E402
from ssl_jax.run import Run  # noqa: E402

# name: (config overrides, batch of random images)
CASES = {
    "resnet18, CIFAR stem, 32x32x1": (
        {"model.encoder": "resnet18", "image_size": 32, "image_channels": 1},
        8,
    ),
    "resnet50, ImageNet stem, 64x64x3": (
        {"model.encoder": "resnet50", "model.resnet.stem": "imagenet", "image_size": 64},
        8,
    ),
    "vit_tiny/16, 224x224x3, class token": (
        {"model.encoder": "vit_tiny", "image_size": 224},
        4,
    ),
    "vit_tiny/4, 32x32x3, mean of patch tokens": (
        {
            "model.encoder": "vit_tiny",
            "model.vit.patch_size": 4,
            "model.vit.image_size": 32,
            "model.vit.pool": "mean",
            "image_size": 32,
        },
        8,
    ),
}


def _config(overrides: dict):
    c = config_lib.base_config()
    c.dataset, c.method = "synthetic", "simclr"
    c.image_channels, c.augment = 3, "simclr_cifar"
    c.model.projector_hidden, c.model.projector_dim = 64, 32
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        target = c
        for p in parents:
            target = target[p]
        target[leaf] = value
    if c.image_channels == 1:
        c.augment = "grayscale"
    return c


def _calibrated_stats(state, config):
    """The BatchNorm statistics of one train-mode pass of the encoder over N(0, 1) images (the
    initial running averages, 0 and 1, let a deep ResNet's features grow to ~1e7)."""
    module = state.module(copy=True)
    module.train()
    for _, layer in nnx.iter_modules(module):
        if isinstance(layer, nnx.BatchNorm):
            layer.momentum = 0.0  # running averages := this batch's statistics
    shape = (16, config.image_size, config.image_size, config.image_channels)
    module.encoder(jax.random.normal(jax.random.key(2), shape))
    return nnx.state(module, nnx.BatchStat)


def untrained_run(workdir: str, config, step: int = 1) -> str:
    """config.json + a checkpoint of ``step``: the initial state, its weights moved at random
    and its BatchNorm statistics those of a batch of N(0, 1) images, moved at random (means
    + 0.1 N(0, 1) * std, variances * U(0.8, 1.2))."""
    state = jax.jit(lambda key: get_method(config.method).init_state(config, key))(
        jax.random.key(0)
    )
    rng = np.random.default_rng(0)

    def params(path, x):
        return np.asarray(x) + 0.05 * rng.standard_normal(x.shape).astype(np.float32)

    state = state.replace(params=jax.tree_util.tree_map_with_path(params, state.params))
    flat = dict(nnx.to_flat_state(_calibrated_stats(state, config)))
    moved = []
    for path, var in flat.items():
        x = np.asarray(var.get_value())
        if path[-1] == "var":
            x = x * rng.uniform(0.8, 1.2, x.shape).astype(np.float32)
        else:  # the mean, moved by a tenth of a standard deviation
            std = np.sqrt(np.asarray(flat[(*path[:-1], "var")].get_value()))
            x = x + 0.1 * std * rng.standard_normal(x.shape).astype(np.float32)
        moved.append((path, var.replace(x)))
    state = state.replace(step=np.asarray(step, np.int32), batch_stats=nnx.from_flat_state(moved))
    run = Run(workdir)
    os.makedirs(run.workdir, exist_ok=True)
    outputs.write_text(run.config_path, config_lib.to_json(config))
    ckpt = run.checkpointer(max_to_keep=None, async_save=False)
    ckpt.save(step, state, {})
    ckpt.close()
    return run.workdir


def torch_module(meta: dict):
    """The PyTorch module ``encoder.json``'s ``torch`` section describes, in eval mode."""
    import timm
    import torch
    import torchvision

    spec = meta["torch"]
    if spec["library"] == "timm":
        model = eval(spec["constructor"], {"timm": timm, "kwargs": spec["kwargs"]})  # noqa: S307
    else:
        model = eval(spec["constructor"], {"torchvision": torchvision})(**spec["kwargs"])  # noqa: S307
    for change in spec["changes"]:
        exec(change, {"torch": torch, "model": model})  # noqa: S102
    return model.eval()


def compare(export_dir: str, batch: int) -> tuple[float, float, dict]:
    """(max |features_jax - features_torch|, max |features_jax|, encoder.json)."""
    import torch
    from safetensors.torch import load_file

    with open(os.path.join(export_dir, "encoder.json")) as f:
        meta = json.load(f)
    model = torch_module(meta)
    model.load_state_dict(load_file(os.path.join(export_dir, meta["files"]["torch"])), strict=True)
    inputs = meta["input"]
    size, channels = inputs["image_size"], inputs["channels"]
    images = np.random.default_rng(1).integers(0, 256, (batch, size, size, channels), np.uint8)
    ours = np.asarray(ssl_jax.load_encoder(export_dir)(images))
    x = (images / 255.0 - np.asarray(inputs["mean"])) / np.asarray(inputs["std"])
    with torch.no_grad():
        theirs = model(torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32))).numpy()
    assert theirs.shape == ours.shape, (theirs.shape, ours.shape)
    return float(np.abs(ours - theirs).max()), float(np.abs(ours).max()), meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", help="a run to export and check (default: untrained runs)")
    parser.add_argument("--batch", type=int, default=None, help="random images per check")
    args = parser.parse_args()
    import timm
    import torch
    import torchvision

    print(
        f"jax {jax.__version__}, torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}, timm {timm.__version__}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        if args.workdir:
            runs = {args.workdir: (args.workdir, args.batch or 8)}
        else:
            runs = {
                name: (untrained_run(os.path.join(tmp, str(i)), _config(overrides)), batch)
                for i, (name, (overrides, batch)) in enumerate(CASES.items())
            }
        print("| encoder | torch module | max abs diff | max abs feature | features |")
        print("|---|---|---:|---:|---:|")
        for name, (workdir, batch) in runs.items():
            out = ssl_jax.export_encoder(
                workdir, os.path.join(tmp, "export", str(abs(hash(name)))), formats=("torch",)
            )
            diff, scale, meta = compare(out, args.batch or batch)
            spec = meta["torch"]
            module = spec["constructor"].split("(")[0] + (
                "(" + spec["constructor"].split("(", 1)[1] if spec["library"] == "timm" else ""
            )
            print(f"| {name} | {module} | {diff:.2e} | {scale:.3g} | {meta['features']['dim']} |")


if __name__ == "__main__":
    main()
