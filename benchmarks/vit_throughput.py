"""ViT (DINO, MoCo v3) and ResNet-50 (SimCLR, BYOL) train-step throughput and MFU of ssl_jax, with
PyTorch peers timed in the same process on the same device.

    python benchmarks/vit_throughput.py --out DIR        # accelerator (one H100/H200: ~7-8 min)
    python benchmarks/vit_throughput.py --dry-run        # CPU: every code path at tiny shapes
    python benchmarks/vit_throughput.py --groups moco_vitb,simclr_r50 --no-torch

On a lent GPU: ``bash benchmarks/gpu/vit_throughput.sh`` (carry ``[".whl"]``). Needs jax, flax,
optax, numpy; the PyTorch rows also need torch, torchvision and timm (skipped with a message when
they are missing, or with ``--no-torch``; a PyTorch failure is reported in its row and the run
goes on).

What is timed, group by group in the order of ``GROUPS`` (the most wanted first; with
``--budget-s`` a group that would end past the budget, judged by the slowest group so far per
candidate, is skipped, so a run cut short still prints its table):

* ``ssl_jax``: the library's own train step jitted as training jits it
  (``ssl_jax.run.jit_train_step(method, make_mesh(1))``: state and key replicated, batch sharded,
  state donated), the state from the method's ``init_state`` under jit with the replicated
  sharding (as ``ssl_jax.train``), the config from the real recipe (``configs/dino_imagenet.py``,
  ``moco_v3_vit_imagenet.py``, ``simclr_imagenet.py``, ``byol_imagenet.py``: bfloat16 compute,
  224 px views) with ``batch_size`` set per group (DINO 128, the others 256 per GPU) and the
  encoder set per group (``vit_small`` / ``vit_base`` / ``resnet50``). Two inputs:
  ``uint8``: the real step, a uint8 batch ``{'image': [B, 256, 256, 3]}`` placed with
  ``parallel.shard_batch``, the views (and DINO's 10 local crops) made on the device inside the
  step; ``views``: the same step given the two views ready-made in bfloat16 (``{'view1',
  'view2'}``, see ``ssl_jax.methods.state.make_views``; real augmented views, made once
  beforehand), i.e. without the augmentation, which is what the PyTorch peers do. DINO has only
  ``uint8`` (its local crops are always made from ``'image'``).
* ``PyTorch``: the same network, loss and optimizer written in torch: torchvision ResNet-50 /
  timm ``vit_{small,base}_patch16_224`` (``num_classes=0``: the final-normed class token, as
  ssl_jax's ViT), the recipe's heads (Linear without bias + BatchNorm1d + ReLU; the last
  BatchNorm of a BN-ended head without shift), bf16 autocast, channels_last for the ResNets,
  ``torch.compile`` (default mode) of each network (``torch.compile(module)``: forward, and
  backward through AOTAutograd; the small loss, the optimizer and the EMA update stay eager:
  fused AdamW, a foreach LARS written here as optax's, ``_foreach_lerp_``), fed the SAME
  ready-made views (NCHW copies of the ssl_jax ``views`` row's arrays). SimCLR: the 2N views as
  one batch, NT-Xent. BYOL: online (encoder + projector + predictor) on each view, EMA target on
  each view under no_grad, symmetrised 2 - 2cos, LARS. MoCo v3: query (encoder + projector +
  predictor) and momentum network each view on its own, symmetrised InfoNCE x 2 tau, AdamW.

Columns: images/s are SOURCE images per second (each gives 2 views; DINO: 2 global + 10 local
crops); step ms the median over timed windows (``common.interleave``: a group's candidates
alternate window by window, so they share whatever else the machine does; each window ends by
blocking on the result); spread the min/max window around the median. TFLOP/step: XLA's cost
analysis of the ssl_jax step lowered for the CPU platform (``common.step_flops``: the same count
on every backend; augmentation, loss and optimizer included, so it is the step's FLOPs, as
``train_step.py`` reports). A PyTorch row uses the FLOPs of its ssl_jax ``views`` peer (the same
model and work), and torch's own FlopCounterMode count (matmuls, convolutions, attention only) is
printed under the table as a check. MFU = TFLOP/step / step time / peak, two peaks: the device's
DATA-SHEET bf16 dense peak (``DATASHEET_BF16``, e.g. 989 TFLOP/s for H100/H200 SXM; none on a CPU)
and the peak MEASURED at the start of the run by a jitted bf16 ``N^3`` matmul (N = 8192; 1024
dry-run), the practical ceiling of this device and software; torch's own bf16 matmul peak is
printed beside it. ``ssl_jax / PyTorch``: images/s of the ssl_jax row over those of the PyTorch
row of the same method, encoder and batch (like for like on the ``views`` row only). compile s:
ssl_jax's lower + compile; PyTorch's first two steps (where torch.compile compiles).

What differs between the two sides of a pair (besides the framework): ssl_jax's step also
computes its metrics (l2 norms of grads, params and updates, embedding std, SimCLR's contrastive
accuracy) and its learning rate and EMA rate on their schedules; the torch step uses the recipe's
peak learning rate and base EMA rate as constants and computes no metrics. The optimizers follow
the recipes: LARS for SimCLR/BYOL (optax's on the ssl_jax side, ``ForeachLARS`` here on the torch
side: eager, a few foreach kernels plus one multiply per decayed tensor), AdamW for MoCo v3
(optax's vs torch's fused). ssl_jax's ViT attention is ``jax.nn.dot_product_attention`` (XLA's, or
cuDNN's when it picks it), timm's is ``F.scaled_dot_product_attention`` (flash attention).

``--dry-run`` (CPU, ~5 minutes on 2 shared cores): the same code paths at tiny shapes:
``vit_tiny`` (patch 16) for the ViTs and ResNet-18 for ResNet-50 (torchvision / timm likewise),
32 px views from 40 px images, DINO with 2 + 2 crops of 32 / 16 px, heads 128 wide and 256
prototypes, batch 8, two timed windows of one step, the first four groups (the others take the
same paths with other configs; ``--groups`` names them), torch on one thread.
``--torch-compile auto`` (the default) compiles on a GPU only: on 2 CPU cores inductor takes ~2
minutes per model; ``--torch-compile on`` runs that path on the CPU too. Dry-run figures mean
nothing beyond "every path runs".

Device memory: JAX is capped at ``XLA_PYTHON_CLIENT_MEM_FRACTION`` (set to 0.5 here unless
already set) so that the PyTorch rows have the rest of the GPU.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import gc
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")  # the rest for the torch rows

import common  # noqa: E402
import numpy as np  # noqa: E402

common.setup_imports()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from ssl_jax import parallel  # noqa: E402
from ssl_jax.methods import get_method  # noqa: E402
from ssl_jax.methods.state import make_views  # noqa: E402
from ssl_jax.run import jit_train_step, with_drop_path_key  # noqa: E402

# Data-sheet dense bf16 tensor-core peaks in FLOP/s, matched on the device name in this order.
DATASHEET_BF16 = (
    ("H200 NVL", 835e12),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H200", 989e12),  # SXM
    ("H100", 989e12),  # SXM (H100 80GB HBM3)
    ("A100", 312e12),
)

RECIPES = {
    "dino": "dino_imagenet",
    "moco_v3": "moco_v3_vit_imagenet",
    "simclr": "simclr_imagenet",
    "byol": "byol_imagenet",
}


@dataclasses.dataclass(frozen=True)
class Group:
    """Candidates timed together: ``(framework, input)`` pairs of one method/encoder/batch."""

    title: str
    method: str
    encoder: str
    batch: int
    candidates: tuple[tuple[str, str], ...]


JAX_VIEWS, JAX_UINT8, TORCH = ("ssl_jax", "views"), ("ssl_jax", "uint8"), ("pytorch", "views")
# In priority order (the default run does them all, --budget-s skips the tail).
GROUPS = {
    "moco_vitb": Group(
        "MoCo v3 ViT-B/16", "moco_v3", "vit_base", 256, (JAX_VIEWS, TORCH, JAX_UINT8)
    ),
    "dino_vits": Group("DINO ViT-S/16 2x224+10x96", "dino", "vit_small", 128, (JAX_UINT8,)),
    "simclr_r50": Group("SimCLR ResNet-50", "simclr", "resnet50", 256, (JAX_VIEWS, TORCH)),
    "byol_r50": Group("BYOL ResNet-50", "byol", "resnet50", 256, (JAX_VIEWS, TORCH)),
    "moco_vits": Group("MoCo v3 ViT-S/16", "moco_v3", "vit_small", 256, (JAX_UINT8,)),
    "dino_vitb": Group("DINO ViT-B/16 2x224+10x96", "dino", "vit_base", 128, (JAX_UINT8,)),
    "simclr_r50_aug": Group("SimCLR ResNet-50", "simclr", "resnet50", 256, (JAX_UINT8,)),
    "byol_r50_aug": Group("BYOL ResNet-50", "byol", "resnet50", 256, (JAX_UINT8,)),
}

# --dry-run: tiny versions of every recipe (CPU).
DRY_ENCODERS = {"vit_small": "vit_tiny", "vit_base": "vit_tiny", "resnet50": "resnet18"}
DRY_BATCH = 8
DRY_GROUPS = 4  # the first four groups run every code path; the others only change the config
DRY_OVERRIDES = {
    "image_size": 32,
    "data_image_size": 40,
    "model.vit.image_size": 32,
    "multi_crop.local_size": 16,
    "model.projector_hidden": 128,
    "model.predictor_hidden": 128,
    "dino.out_dim": 256,
    "dino.head_hidden": 128,
    "dino.head_bottleneck": 64,
}


@dataclasses.dataclass
class Candidate:
    """One row being timed: its runner for ``common.interleave`` and what the table needs."""

    label: str
    framework: str
    feed: str
    runner: Callable[[int], Any] | None = None
    flops: float | None = None
    compile_s: float | None = None
    params: int | None = None
    torch_counted_flops: float | None = None
    error: str | None = None


def build_config(group: Group, dry: bool) -> Any:
    """The group's recipe with its batch and encoder (and, dry-run, the tiny shapes)."""
    encoder = DRY_ENCODERS[group.encoder] if dry else group.encoder
    overrides = dict(DRY_OVERRIDES) if dry else {}
    if dry and group.method == "dino":
        overrides["multi_crop.local_crops"] = 2
    config = common.load_config(RECIPES[group.method], **overrides)
    config.dataset = "synthetic"
    config.batch_size = DRY_BATCH if dry else group.batch
    config.model.encoder = encoder
    return config


# ----------------------------------------------------------------------------- ssl_jax rows


def source_images(config: Any) -> np.ndarray:
    """Random uint8 images of the side the host would hand over (256 px for ImageNet)."""
    side = config.data_image_size or config.image_size
    shape = (config.batch_size, side, side, config.image_channels)
    return np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)


def jax_inputs(config: Any, method: Any, mesh: Any, feed: str) -> tuple[Any, dict, Any]:
    """(state, batch, key) placed as the train loop places them; ``feed='views'``: the batch is
    the two augmented views, made once by ``make_views`` (bf16)."""
    repl = parallel.replicated(mesh)
    init = functools.partial(method.init_state, config)
    state = jax.jit(init, out_shardings=repl)(jax.random.key(0))
    key = jax.jit(lambda: jax.random.key(0), out_shardings=repl)()
    batch = parallel.shard_batch({"image": source_images(config)}, mesh)
    if feed == "views":
        augment = functools.partial(make_views, settings=state.settings)
        views = jax.jit(augment, out_shardings=parallel.data_sharding(mesh))(batch, key)
        batch = {"view1": views[0], "view2": views[1]}
    return state, batch, key


def trained_params(config: Any, params: Any) -> int:
    """The parameters the step trains: MoCo v3's frozen patch projection left out, as the
    PyTorch side counts only ``requires_grad`` parameters."""
    frozen = config.method == "moco_v3" and config.moco_v3.freeze_patch_embed
    return sum(
        x.size
        for path, x in jax.tree_util.tree_leaves_with_path(params)
        if not (frozen and "patch_embed" in {getattr(k, "key", None) for k in path})
    )


def jax_candidate(config: Any, feed: str, mesh: Any) -> tuple[Candidate, dict | None]:
    """The compiled ssl_jax step and its FLOPs; also the views when ``feed='views'``."""
    method = get_method(config.method)
    state, batch, key = jax_inputs(config, method, mesh, feed)
    params = trained_params(config, state.params)
    flops = common.step_flops(jax.jit(with_drop_path_key(method.train_step)), state, batch, key)
    start = time.perf_counter()
    compiled = jit_train_step(method, mesh).lower(state, batch, key).compile()
    compile_s = time.perf_counter() - start
    label = "ready views (bf16)" if feed == "views" else "uint8, aug on device"
    candidate = Candidate(label, "ssl_jax", feed, flops=flops, compile_s=compile_s, params=params)
    candidate.runner = common.jax_step_runner(compiled, state, batch, key)
    return candidate, (batch if feed == "views" else None)


# ----------------------------------------------------------------------------- PyTorch rows


def torch_device() -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def torch_sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def torch_encoder(config: Any) -> tuple[Any, int]:
    """torchvision's ResNet or timm's ViT, without classifier: ``(module, num_features)``."""
    from torch import nn

    m, name = config.model, config.model.encoder
    if name.startswith("resnet"):
        import torchvision

        if m.resnet.stem != "imagenet" or m.resnet.width != 1:
            raise ValueError("the torch peer is torchvision's ResNet: imagenet stem, width 1")
        net = getattr(torchvision.models, name)()
        features, net.fc = net.fc.in_features, nn.Identity()
        return net, features
    if name.startswith("vit_"):
        import timm

        if m.vit.pool != "cls" or m.vit.image_size != config.image_size:
            raise ValueError("the torch peer is timm's ViT: class-token pooling, one input size")
        net = timm.create_model(
            f"{name}_patch{m.vit.patch_size}_224",
            num_classes=0,
            img_size=config.image_size,
            drop_path_rate=m.vit.drop_path,
        )
        if config.method == "moco_v3" and config.moco_v3.freeze_patch_embed:
            net.patch_embed.requires_grad_(False)  # the paper's frozen random patch projection
        return net, net.num_features
    raise ValueError(f"no torch peer for encoder {name!r}")


def torch_mlp(d_in: int, hidden: int, d_out: int, layers: int, last_bn: bool) -> Any:
    """ssl_jax's ProjectionMLP: (Linear [no bias] + BN + ReLU) x (layers - 1), then Linear
    [+ BN without shift when ``last_bn``; else with bias]."""
    from torch import nn

    mods = []
    for i in range(layers):
        last = i == layers - 1
        width, bn = (d_out, last_bn) if last else (hidden, True)
        mods.append(nn.Linear(d_in, width, bias=not bn))
        if bn:
            mods.append(nn.BatchNorm1d(width))
            if last:
                mods[-1].bias.requires_grad_(False)  # SimCLR v2 / MoCo v3: scale only
        if not last:
            mods.append(nn.ReLU(inplace=True))
        d_in = width
    return nn.Sequential(*mods)


def torch_losses() -> dict[str, Callable]:
    """The three losses in float32 (autocast off), as ssl_jax.losses writes them."""
    import torch
    import torch.nn.functional as F

    def fp32(fn):
        @functools.wraps(fn)
        def wrapped(a, b, *rest):
            with torch.autocast(a.device.type, enabled=False):
                return fn(a.float(), b.float(), *rest)

        return wrapped

    @fp32
    def nt_xent(z1, z2, t):
        z = F.normalize(torch.cat([z1, z2]), dim=1)
        n = z1.shape[0]
        eye = torch.eye(2 * n, dtype=torch.bool, device=z.device)
        logits = (z @ z.T / t).masked_fill(eye, float("-inf"))
        targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
        return F.cross_entropy(logits, targets)

    @fp32
    def byol(p, t):
        cos = (F.normalize(p, dim=1) * F.normalize(t, dim=1)).sum(1)
        return (2 - 2 * cos).mean()

    @fp32
    def moco_ctr(q, k, t):
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
        labels = torch.arange(q.shape[0], device=q.device)
        return F.cross_entropy(q @ k.T / t, labels) * (2 * t)

    return {"nt_xent": nt_xent, "byol": byol, "moco_ctr": moco_ctr}


def torch_model(config: Any) -> dict[str, Any]:
    """The method's networks and loss in torch: ``{'trained': the optimised module, 'loss':
    fn(x1, x2), 'nets': the networks the loss calls, by name (swap in compiled ones there),
    'ema': (target, online part) or None, 'tau': the EMA rate}``."""
    import torch
    from torch import nn

    m, lf = config.model, torch_losses()
    encoder, features = torch_encoder(config)
    layers, last_bn = m.projector_layers, m.projector_last_bn
    network = nn.Sequential(
        encoder, torch_mlp(features, m.projector_hidden, m.projector_dim, layers, last_bn)
    )
    if config.method == "simclr":
        nets = {"network": network}

        def simclr_loss(x1, x2):  # the 2N views as one batch (BatchNorm over both)
            z1, z2 = nets["network"](torch.cat([x1, x2])).chunk(2)
            return lf["nt_xent"](z1, z2, config.simclr.temperature)

        return {"trained": network, "loss": simclr_loss, "nets": nets, "ema": None}
    # BYOL's predictor ends with a biased Linear, MoCo v3's with a BatchNorm.
    bn_end = config.method == "moco_v3"
    predictor = torch_mlp(m.projector_dim, m.predictor_hidden, m.projector_dim, 2, bn_end)
    nets = {
        "online": nn.Sequential(network, predictor),
        "target": copy.deepcopy(network).requires_grad_(False),
    }
    if config.method == "byol":
        tau, pair_loss = config.byol.base_tau, lf["byol"]
    elif config.method == "moco_v3":
        t = config.moco_v3.temperature
        tau, pair_loss = config.moco_v3.base_momentum, lambda q, k: lf["moco_ctr"](q, k, t)
    else:
        raise ValueError(f"no torch peer for method {config.method!r}")

    def loss(x1, x2):  # each view on its own through both networks
        online, target = nets["online"], nets["target"]
        with torch.no_grad():
            k1, k2 = target(x1), target(x2)
        return pair_loss(online(x1), k2) + pair_loss(online(x2), k1)

    return {
        "trained": nets["online"],
        "loss": loss,
        "nets": nets,
        "ema": (nets["target"], network),
        "tau": tau,
    }


class ForeachLARS:
    """optax.lars as ssl_jax configures it, with torch foreach ops (eager). On the decayed
    tensors ``u = (g + wd p) * trust`` with ``trust = tc |p| / |g + wd p|`` (1 where a norm is
    0), on the others ``u = g``; then ``buf = momentum buf - lr u`` and ``p += buf``."""

    def __init__(self, decayed, other, *, lr, weight_decay, momentum, trust_coefficient):
        self.decayed, self.other = decayed, other
        self.lr, self.wd, self.momentum, self.tc = lr, weight_decay, momentum, trust_coefficient
        self.buf = None

    def zero_grad(self, set_to_none: bool = True) -> None:
        del set_to_none
        for p in self.decayed + self.other:
            p.grad = None

    def step(self) -> None:
        import torch

        with torch.no_grad():
            grads = [p.grad for p in self.decayed]
            u = list(torch._foreach_add(grads, self.decayed, alpha=self.wd))
            p_norm = torch.stack(torch._foreach_norm(self.decayed))
            u_norm = torch.stack(torch._foreach_norm(u))
            ok = (p_norm > 0) & (u_norm > 0)
            trust = torch.where(ok, self.tc * p_norm / u_norm.clamp_min(1e-30), 1.0)
            torch._foreach_mul_(u, list(trust.unbind()))
            u += [p.grad for p in self.other]
            if self.buf is None:
                self.buf = torch._foreach_mul(u, -self.lr)
            else:
                torch._foreach_mul_(self.buf, self.momentum)
                torch._foreach_add_(self.buf, u, alpha=-self.lr)
            torch._foreach_add_(self.decayed + self.other, self.buf)


def torch_optimizer(config: Any, module: Any) -> Any:
    """The recipe's optimizer at its peak learning rate (no schedule); weight decay (and LARS's
    trust ratio) as ssl_jax's mask: ``ndim > 1``, not a position embedding or class token."""
    import torch

    from ssl_jax.optim import scaled_learning_rate

    exempt = ("pos_embed", "cls_token")
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    decays = [p.ndim > 1 and not n.endswith(exempt) for n, p in named]
    decayed = [p for (_, p), d in zip(named, decays, strict=True) if d]
    other = [p for (_, p), d in zip(named, decays, strict=True) if not d]
    lr = scaled_learning_rate(config.base_lr, config.batch_size, config.lr_scaling)
    if config.optimizer == "lars":
        return ForeachLARS(
            decayed,
            other,
            lr=lr,
            weight_decay=config.weight_decay,
            momentum=config.momentum,
            trust_coefficient=config.lars_trust_coefficient,
        )
    if config.optimizer != "adamw":
        raise ValueError(f"no torch peer for optimizer {config.optimizer!r}")
    groups = [
        {"params": decayed, "weight_decay": config.weight_decay},
        {"params": other, "weight_decay": 0.0},
    ]
    fused = torch.cuda.is_available()
    betas = (config.adam_b1, config.adam_b2)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused, foreach=not fused)


def memory_format(config: Any) -> Any:
    import torch

    cnn = config.model.encoder.startswith("resnet")
    return torch.channels_last if cnn else torch.contiguous_format


def torch_views(config: Any, jax_views: dict | None) -> tuple[Any, Any]:
    """The ssl_jax row's ready-made views as bf16 NCHW tensors on the torch device
    (channels_last for a CNN); random ones if no ssl_jax ``views`` row ran."""
    import torch

    if jax_views is None:
        s, b = config.image_size, config.batch_size
        rng = np.random.default_rng(1)
        jax_views = {k: rng.standard_normal((b, s, s, 3), np.float32) for k in ("view1", "view2")}

    def one(x):
        t = torch.from_numpy(np.asarray(x, np.float32)).permute(0, 3, 1, 2)
        return t.to(torch_device(), torch.bfloat16).contiguous(memory_format=memory_format(config))

    return one(jax_views["view1"]), one(jax_views["view2"])


def torch_step(model: dict, optimizer: Any, loss_fn: Callable, x1, x2) -> Callable[[], None]:
    """One training step: zero grads, forward + loss, backward, optimizer, EMA update."""
    import torch

    ema = None
    if model["ema"] is not None:
        target, online = (list(m.parameters()) for m in model["ema"])
        ema = (target, online, 1.0 - model["tau"])

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(x1, x2).backward()
        optimizer.step()
        if ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(*ema)

    return step


def torch_candidate(config: Any, jax_views: dict | None, compile_: bool) -> Candidate:
    """The PyTorch peer step: FLOPs counted on one eager forward + backward, then compiled
    (the first two steps, timed as compile) and ready to time."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    torch._dynamo.reset()  # a fresh compile cache per group
    model = torch_model(config)
    device = torch_device()
    for module in model["nets"].values():
        module.to(device=device, memory_format=memory_format(config)).train()
    x1, x2 = torch_views(config, jax_views)

    def loss_bf16(a, b):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return model["loss"](a, b)

    counter = FlopCounterMode(display=False)
    with counter:
        loss_bf16(x1, x2).backward()
    optimizer = torch_optimizer(config, model["trained"])
    if compile_:  # each network (forward and backward); the loss itself stays eager
        model["nets"].update({k: torch.compile(v) for k, v in model["nets"].items()})
    step = torch_step(model, optimizer, loss_bf16, x1, x2)
    start = time.perf_counter()
    for _ in range(2):  # the first compiles
        step()
    torch_sync()
    compile_s = time.perf_counter() - start
    params = sum(p.numel() for p in model["trained"].parameters() if p.requires_grad)
    label = "ready views (bf16), " + ("torch.compile" if compile_ else "eager")
    candidate = Candidate(label, "pytorch", "views", compile_s=compile_s, params=params)
    candidate.torch_counted_flops = float(counter.get_total_flops())
    candidate.runner = torch_runner(step)
    return candidate


def torch_runner(step: Callable[[], None]) -> Callable[[int], None]:
    def run(n: int) -> None:
        for _ in range(n):
            step()
        torch_sync()

    return run


def torch_matmul_peak(n: int, repeats: int = 5) -> float:
    """FLOP/s of a bf16 n x n x n torch matmul (best of ``repeats``), beside JAX's."""
    import torch

    a, b = (torch.randn(n, n, device=torch_device()).to(torch.bfloat16) for _ in range(2))
    best = float("inf")
    for _ in range(repeats + 1):  # the first call warms up
        torch_sync()
        start = time.perf_counter()
        a @ b
        torch_sync()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


def torch_setup(args: argparse.Namespace) -> str | None:
    """Import torch, torchvision and timm and set them up; the reason if the rows are skipped."""
    if args.no_torch:
        return "--no-torch"
    try:
        import timm  # noqa: F401
        import torch
        import torchvision  # noqa: F401
    except Exception as e:  # noqa: BLE001 - ImportError, or a torchvision built for another torch
        return f"import failed ({type(e).__name__}: {e})"
    # Dry run: one thread, as torch's OpenMP threads beside XLA's on a small shared CPU slowed
    # its steps 25-700x (measured on 2 cores).
    torch.set_num_threads(1 if args.dry_run else len(os.sched_getaffinity(0)))
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True  # as XLA's default for float32 on GPU
    torch.backends.cudnn.allow_tf32 = True
    return None


# ----------------------------------------------------------------------------- a group


def build_candidates(group: Group, config: Any, args, mesh) -> list[Candidate]:
    """Every candidate of the group, built (and compiled); a failure becomes an error row."""
    candidates, views = [], None
    for framework, feed in group.candidates:
        try:
            if framework == "ssl_jax":
                candidate, made = jax_candidate(config, feed, mesh)
                views = made if made is not None else views
            elif args.torch_skip:
                candidate = Candidate("-", "pytorch", feed, error=f"skipped: {args.torch_skip}")
            else:
                candidate = torch_candidate(config, views, args.torch_compile == "on")
        except Exception as e:  # noqa: BLE001 - report (out of memory, a torch build issue), go on
            traceback.print_exc(limit=-4)
            candidate = Candidate("-", framework, feed, error=error_text(e))
        candidates.append(candidate)
    return candidates


def error_text(e: Exception) -> str:
    """The exception on one line that fits a Markdown table cell."""
    return f"{type(e).__name__}: {e}".replace("\n", " ").replace("|", "/")[:300]


def time_candidates(candidates: list[Candidate], args) -> dict[int, dict]:
    """Seconds per step of each built candidate, interleaved; one at a time if that fails."""
    runners = {i: c.runner for i, c in enumerate(candidates) if c.runner is not None}
    kw = dict(windows=args.windows, iters=args.iters, warmup=1)
    try:
        return common.interleave(runners, **kw)
    except Exception:  # noqa: BLE001 - find which one fails, keep the others
        seconds = {}
        for i, run in runners.items():
            try:
                seconds.update(common.interleave({i: run}, **kw))
            except Exception as e:  # noqa: BLE001
                candidates[i].error = "while timing: " + error_text(e)
        return seconds


def row_of(group, config, candidate, seconds, flops, peaks) -> dict:
    """One table row (a dict, as it goes into the JSON)."""
    row = dict(
        group=group.title,
        method=config.method,
        encoder=config.model.encoder,
        px=config.image_size,
        batch=config.batch_size,
        framework=candidate.framework,
        input=candidate.label,
        feed=candidate.feed,
        compile_s=candidate.compile_s,
        params=candidate.params,
        tflop_step=flops / 1e12 if flops else None,
        torch_counted_tflop=(candidate.torch_counted_flops or 0) / 1e12 or None,
        error=candidate.error,
    )
    if seconds is None or candidate.error:
        return row
    t = common.median(seconds["wall"])
    row.update(
        step_ms=1e3 * t, images_s=config.batch_size / t, spread=common.spread(seconds["wall"])
    )
    if flops:
        row["mfu_measured"] = flops / t / peaks["measured"]
        if peaks["datasheet"]:
            row["mfu_datasheet"] = flops / t / peaks["datasheet"]
    return row


def run_group(group: Group, args, mesh, peaks) -> list[dict]:
    config = build_config(group, args.dry_run)
    candidates = build_candidates(group, config, args, mesh)
    seconds = time_candidates(candidates, args)
    jax_views_flops = next(
        (c.flops for c in candidates if c.framework == "ssl_jax" and c.feed == "views"), None
    )
    rows = []
    for i, c in enumerate(candidates):
        flops = c.flops if c.framework == "ssl_jax" else jax_views_flops
        rows.append(row_of(group, config, c, seconds.get(i), flops, peaks))
    del candidates
    gc.collect()
    if not args.torch_skip:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return rows


# ----------------------------------------------------------------------------- output


def _fmt(value: Any, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def peer_ratio(row: dict, rows: list[dict]) -> str:
    """images/s of an ssl_jax row over its PyTorch peer's (same method, encoder, batch)."""
    if row["framework"] != "ssl_jax" or "images_s" not in row:
        return "-"
    same = ("method", "encoder", "batch")
    for peer in rows:
        if peer["framework"] == "pytorch" and "images_s" in peer:
            if all(peer[k] == row[k] for k in same):
                like = "" if row["feed"] == "views" else " (not like for like)"
                return f"{row['images_s'] / peer['images_s']:.2f}{like}"
    return "-"


def print_table(rows: list[dict]) -> None:
    cols = (
        "row | framework | input | batch | images/s | step ms | windows | TFLOP/step | "
        "MFU datasheet | MFU measured | ssl_jax / PyTorch | compile s"
    )
    print("\n| " + cols + " |")
    print("|" + " --- |" * len(cols.split("|")))
    for r in rows:
        name = f"{r['group']} ({r['encoder']}, {r['px']} px)"
        if r["error"]:
            print(f"| {name} | {r['framework']} | {r['input']} | {r['batch']} | {r['error']} |")
            continue
        cells = (
            name,
            r["framework"],
            r["input"],
            str(r["batch"]),
            _fmt(r.get("images_s"), ",.1f"),
            _fmt(r.get("step_ms"), ".2f"),
            r.get("spread", "-"),
            _fmt(r["tflop_step"], ".4g"),
            _fmt(r.get("mfu_datasheet"), ".1f", 100) + ("%" if r.get("mfu_datasheet") else ""),
            _fmt(r.get("mfu_measured"), ".1f", 100) + ("%" if r.get("mfu_measured") else ""),
            peer_ratio(r, rows),
            _fmt(r["compile_s"], ".1f"),
        )
        print("| " + " | ".join(cells) + " |")


def print_checks(rows: list[dict]) -> None:
    """Parameter counts and FLOP counts of each ssl_jax ``views`` row and its PyTorch peer."""
    print("\nChecks (ssl_jax views row vs its PyTorch peer):")
    for t in (r for r in rows if r["framework"] == "pytorch" and not r["error"]):
        j = next(
            (r for r in rows if r["framework"] == "ssl_jax" and r["feed"] == "views" and
             all(r[k] == t[k] for k in ("method", "encoder", "batch"))),
            None,
        )  # fmt: skip
        if j is None or j["error"]:
            continue
        same = "equal" if j["params"] == t["params"] else "DIFFERENT"
        print(
            f"- {t['group']} ({t['encoder']}): trained parameters ssl_jax {j['params']:,}, "
            f"PyTorch {t['params']:,} ({same}); FLOPs per step: XLA cost analysis of the "
            f"ssl_jax step {_fmt(j['tflop_step'], '.4g')} T (all ops, optimizer included), "
            f"torch FlopCounterMode forward+backward {_fmt(t['torch_counted_tflop'], '.4g')} T "
            "(matmuls, convolutions, attention only)"
        )


def datasheet_peak(device_kind: str) -> float | None:
    for name, peak in DATASHEET_BF16:
        if name in device_kind:
            return peak
    return None


def measure_peaks(args) -> dict:
    """The data-sheet and the measured bf16 matmul peaks (and torch's, for comparison)."""
    kind = jax.devices()[0].device_kind
    n = 1024 if args.dry_run else 8192
    peaks = {"device": kind, "datasheet": datasheet_peak(kind), "matmul_n": n}
    peaks["measured"] = common.measure_peak_flops(jnp.bfloat16, n)
    if not args.torch_skip:
        peaks["torch_measured"] = torch_matmul_peak(n)
    sheet = _fmt(peaks["datasheet"], ".0f", 1e-12)
    print(
        f"bf16 peaks: data sheet {sheet} TFLOP/s ({kind}); measured {n}^3 matmul: JAX "
        f"{peaks['measured'] / 1e12:.4g} TFLOP/s, torch "
        f"{_fmt(peaks.get('torch_measured'), '.4g', 1e-12)} TFLOP/s",
        flush=True,
    )
    return peaks


def print_row(r: dict) -> None:
    what = r["error"] or (
        f"{_fmt(r.get('images_s'), ',.1f')} img/s, {_fmt(r.get('step_ms'), '.2f')} ms/step, "
        f"{_fmt(r['tflop_step'], '.4g')} TFLOP/step, compile {_fmt(r['compile_s'], '.1f')} s"
    )
    print(f"  {r['group']} [{r['framework']}: {r['input']}]: {what}", flush=True)


def save(args, facts: dict, rows: list[dict]) -> None:
    if not args.out:
        return
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "vit_throughput.json"), "w") as f:
        json.dump(dict(facts=facts, rows=rows), f, indent=1)


# ----------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU: tiny shapes, every path")
    parser.add_argument(
        "--groups",
        default=None,
        help=f"comma list of {list(GROUPS)} (default: all; dry run: the first {DRY_GROUPS})",
    )
    parser.add_argument("--windows", type=int, default=None, help="timed windows (5; dry 2)")
    parser.add_argument("--iters", type=int, default=None, help="steps per window (5; dry 1)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch rows")
    parser.add_argument(
        "--torch-compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="torch.compile the PyTorch steps (auto: on with CUDA, off on a CPU)",
    )
    parser.add_argument(
        "--budget-s", type=float, default=None, help="start no group after this many seconds"
    )
    parser.add_argument("--out", default=None, help="folder for vit_throughput.json")
    args = parser.parse_args()
    args.groups = args.groups or ",".join(list(GROUPS)[: DRY_GROUPS if args.dry_run else None])
    args.windows = args.windows or (2 if args.dry_run else 5)
    args.iters = args.iters or (1 if args.dry_run else 5)
    unknown = set(args.groups.split(",")) - set(GROUPS)
    if unknown:
        parser.error(f"unknown groups {sorted(unknown)}: choose from {list(GROUPS)}")
    return args


def versions(args) -> dict:
    """The versions the figures depend on (printed, and kept in the JSON)."""
    import flax
    import optax

    out = dict(jax=jax.__version__, flax=flax.__version__, optax=optax.__version__)
    if args.torch_skip:
        print(f"PyTorch rows skipped: {args.torch_skip}")
        return out
    import timm
    import torch
    import torchvision

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    out.update(torch=torch.__version__, torchvision=torchvision.__version__, timm=timm.__version__)
    print(
        f"torch {torch.__version__} ({device}, {torch.get_num_threads()} threads), torchvision "
        f"{torchvision.__version__}, timm {timm.__version__}; torch.compile {args.torch_compile}",
        flush=True,
    )
    return out


def main() -> None:
    start = time.perf_counter()
    args = parse_args()
    # JAX first: its backend and CUDA libraries are loaded before torch's (the ssl_jax rows come
    # first; a torch that fails to import or load only loses its own rows).
    common.header(
        "ViT and ResNet-50 train steps, ssl_jax vs PyTorch (benchmarks/vit_throughput.py)"
    )
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    jnp.ones(8).block_until_ready()
    args.torch_skip = torch_setup(args)
    if args.torch_compile == "auto" and not args.torch_skip:
        import torch

        args.torch_compile = "on" if torch.cuda.is_available() else "off"
    facts = dict(command=sys.argv, commit=common.git_commit(), versions=versions(args))
    facts["peaks"] = peaks = measure_peaks(args)
    mesh = parallel.make_mesh(1)
    rows, per_candidate = [], 0.0
    for name in args.groups.split(","):
        group, elapsed = GROUPS[name], time.perf_counter() - start
        need = per_candidate * len(group.candidates)  # as the slowest group so far
        if args.budget_s is not None and elapsed + need > args.budget_s:
            print(f"skipped group {name}: at {elapsed:.0f} s, ~{need:.0f} s more passes --budget-s")
            continue
        print(f"group {name} (at {elapsed:.0f} s)", flush=True)
        new = run_group(group, args, mesh, peaks)
        took = time.perf_counter() - start - elapsed
        per_candidate = max(per_candidate, took / len(group.candidates))
        for r in new:
            print_row(r)
        rows += new
        save(args, facts, rows)
    print_table(rows)
    print_checks(rows)
    print(f"\ntotal {time.perf_counter() - start:.0f} s; load after: {common.load_line()}")


if __name__ == "__main__":
    main()
