"""ssl_jax's SimCLR train step side by side with the same step in PyTorch, in one run.

    python benchmarks/compare_pytorch.py            # convnet b256 28x28x1; ResNet-18 b256 32x32x3
    python benchmarks/compare_pytorch.py --quick    # CPU: ResNet-18 at batch 32, fewer windows
    taskset -c 1 python benchmarks/compare_pytorch.py --quick   # both frameworks on one core

Needs the ``bench`` extra (``pip install -e '.[bench]'``: torch, torchvision, lightly); PyTorch is
never a runtime dependency of ssl_jax.

What is compared, for each model (same architecture, batch, loss and optimizer on both sides):

* ``ssl_jax``: the library's own ``ssl_jax.methods.simclr.train_step``, built from the recipe
  (``configs/simclr_fashion_mnist.py`` for the 4-layer convnet at 28x28x1,
  ``configs/simclr_cifar10.py`` for ResNet-18 with the CIFAR stem at 32x32x3), jitted with the
  state donated as ``ssl_jax.train`` does, and given the two views ready-made in the batch
  (``ssl_jax.methods.state.make_views``), so that it does exactly what the PyTorch step does:
  encoder + projector on the 2N views as one batch, NT-Xent (temperature from the recipe),
  backward, LARS (optax; kernels get weight decay and trust-ratio scaling, biases and BatchNorm
  do not).
* ``ssl_jax xla-conv``: the same with ``model.conv_impl='xla'`` (XLA's own convolution instead of
  the im2col path that ``'auto'`` picks on CPU).
* ``PyTorch eager`` / ``torch.compile``: the same network written in torch (torchvision's
  ResNet-18 with the CIFAR stem), lightly's ``NTXentLoss`` and ``LARS`` (the same two parameter
  groups), the same ready-made views (NCHW copies of the same arrays). ``torch.compile`` compiles
  the network and the loss (forward and backward); LARS stays eager (it branches on tensor values).
* ``ssl_jax + aug`` (not like for like, listed for reference): the real step, which also makes the
  two augmented views on the device from the uint8 batch.

Images/s counts source images (batch N; each gives two views). Every timed window runs a few
steps of one candidate and the candidates alternate (``common.interleave``), so both frameworks
see the same load; the table gives the median window, its spread, and the ratios of ssl_jax to
PyTorch eager and to torch.compile, the primary figure on a shared machine. Threads: torch gets as
many intra-op threads as the CPUs this process may use, and XLA:CPU uses those CPUs by default;
restrict both with ``taskset``. The parameter counts and the FLOPs of the two models (forward on
the 2N views: XLA cost analysis vs torch's FlopCounterMode) are printed as a check that the models
are the same.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import common
import numpy as np

common.setup_imports()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from ssl_jax import host_memory  # noqa: E402

CASES = {
    # name: (recipe, overrides, batch, quick batch)
    # Global average pooling (the recipe's 4x4 grid + pooling head computes the same features
    # for the loss, but that is not what the torch side writes).
    "convnet": (
        "simclr_fashion_mnist",
        {"model.convnet.grid": 1, "model.convnet.head_pools": False},
        256,
        256,
    ),
    "resnet18": ("simclr_cifar10", {"dataset": "synthetic"}, 256, 32),
}


# ----------------------------------------------------------------------------- PyTorch side


def torch_network(config):
    """Encoder + projector in torch, layer for layer the ssl_jax network of ``config``."""
    import torch
    from torch import nn

    m = config.model
    if m.projector_layers != 2 or m.projector_last_bn:
        raise ValueError("only the 2-layer projector without a last BN is written in torch here")
    if m.convnet.grid != 1 or config.simclr.loss_block_size:
        raise ValueError("the torch side has global pooling and the direct NT-Xent only")
    if m.encoder == "convnet":
        layers, c_in = [], config.image_channels
        features = tuple(m.convnet.features)
        for c_out, s in zip(features, (1,) + (2,) * (len(features) - 1), strict=True):
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=s, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        encoder = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        num_features = c_in
    elif m.encoder == "resnet18" and m.resnet.stem == "cifar" and m.resnet.width == 1:
        import torchvision

        encoder = torchvision.models.resnet18()
        encoder.conv1 = nn.Conv2d(config.image_channels, 64, 3, stride=1, padding=1, bias=False)
        encoder.maxpool = nn.Identity()
        encoder.fc = nn.Identity()
        num_features = 512
    else:
        raise ValueError(f"no torch version of encoder {m.encoder!r} (stem {m.resnet.stem!r}) here")
    projector = nn.Sequential(
        nn.Linear(num_features, m.projector_hidden, bias=False),
        nn.BatchNorm1d(m.projector_hidden),
        nn.ReLU(inplace=True),
        nn.Linear(m.projector_hidden, m.projector_dim),
    )
    return torch.nn.Sequential(encoder, projector)


class TorchSimCLRLoss:
    """``loss(x1, x2)``: the 2N views through the network as one batch, then lightly's NT-Xent."""

    def __init__(self, network, temperature: float):
        from lightly.loss import NTXentLoss

        self.network = network
        self.criterion = NTXentLoss(temperature=temperature)

    def __call__(self, x1, x2):
        import torch

        z = self.network(torch.cat([x1, x2]))
        n = x1.shape[0]
        return self.criterion(z[:n], z[n:])


def torch_lars(network, config, batch: int):
    """lightly's LARS with SimCLR's groups: kernels decayed and trust-scaled; biases and BN not
    (lightly skips the trust ratio where weight decay is 0); the recipe's peak learning rate."""
    from lightly.utils.lars import LARS

    from ssl_jax.optim import scaled_learning_rate

    params = list(network.parameters())
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    lr = scaled_learning_rate(config.base_lr, batch, config.lr_scaling)
    return LARS(
        groups,
        lr=lr,
        momentum=config.momentum,
        trust_coefficient=config.lars_trust_coefficient,
    )


def torch_runner(loss_fn, optimizer, x1, x2):
    def run(n: int) -> None:
        for _ in range(n):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(x1, x2)
            loss.backward()
            optimizer.step()

    return run


def torch_forward_flops(network, x) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        network(x)
    return float(counter.get_total_flops())


# ----------------------------------------------------------------------------- one case


def jax_forward_flops(state, x) -> float:
    def forward(params, batch_stats, x):
        network = nnx.merge(state.graphdef, params, batch_stats, copy=True)
        return network(x)[1]

    compiled = jax.jit(forward).lower(state.params, state.batch_stats, x).compile()
    return common.compiled_flops(compiled)


def run_case(name: str, args) -> list[dict]:
    import torch

    recipe, overrides, full_batch, quick_batch = CASES[name]
    batch = args.batch or (quick_batch if args.quick else full_batch)
    config = common.load_config(recipe, **overrides)
    config.batch_size = batch
    size, channels = config.image_size, config.image_channels
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((batch, size, size, channels), dtype=np.float32)
    x2 = rng.standard_normal((batch, size, size, channels), dtype=np.float32)
    images = rng.integers(0, 256, (batch, size, size, channels), dtype=np.uint8)
    print(
        f"\n## {name}: SimCLR step, batch {batch} of {size}x{size}x{channels} "
        f"(configs/{recipe}.py, encoder {config.model.encoder}, projector "
        f"{config.model.projector_hidden}->{config.model.projector_dim}, "
        f"temperature {config.simclr.temperature}, {config.optimizer})",
        flush=True,
    )

    runners, compile_s, facts = {}, {}, {}
    key = jax.random.key(0)
    views = {"view1": jnp.asarray(x1), "view2": jnp.asarray(x2)}
    for impl in args.conv_impls:
        config.model.conv_impl = impl
        method, state = common.init_state(config)
        label = "ssl_jax" if impl == "auto" else f"ssl_jax {impl}-conv"
        step = jax.jit(method.train_step, donate_argnums=(0,))  # the views come in the batch
        t = time.perf_counter()
        compiled = step.lower(state, views, key).compile()
        compile_s[label] = time.perf_counter() - t
        runners[label] = common.jax_step_runner(compiled, state, views, key)
        if impl == "auto":
            facts["jax_params"] = common.num_params(state.params)
            facts["jax_fwd_flops"] = jax_forward_flops(state, jnp.concatenate([x1, x2]))
            facts["jax_step_flops"] = common.compiled_flops(compiled)
    if args.with_augmentation:
        config.model.conv_impl = "auto"
        method, state = common.init_state(config)
        step = jax.jit(method.train_step, donate_argnums=(0,))
        uint8 = {"image": jnp.asarray(images)}
        t = time.perf_counter()
        compiled = step.lower(state, uint8, key).compile()
        compile_s["ssl_jax + aug"] = time.perf_counter() - t
        runners["ssl_jax + aug"] = common.jax_step_runner(compiled, state, uint8, key)

    t1 = torch.from_numpy(np.ascontiguousarray(x1.transpose(0, 3, 1, 2)))
    t2 = torch.from_numpy(np.ascontiguousarray(x2.transpose(0, 3, 1, 2)))
    torch.manual_seed(0)
    eager_net = torch_network(config)
    facts["torch_params"] = sum(p.numel() for p in eager_net.parameters())
    facts["torch_fwd_flops"] = torch_forward_flops(eager_net, torch.cat([t1, t2]))
    eager_net.train()
    runners["PyTorch eager"] = torch_runner(
        TorchSimCLRLoss(eager_net, config.simclr.temperature),
        torch_lars(eager_net, config, batch),
        t1,
        t2,
    )
    if not args.no_compile:
        compiled_net = torch_network(config)
        compiled_net.train()
        loss_fn = torch.compile(TorchSimCLRLoss(compiled_net, config.simclr.temperature).__call__)
        optimizer = torch_lars(compiled_net, config, batch)
        run = torch_runner(loss_fn, optimizer, t1, t2)
        t = time.perf_counter()
        run(2)  # compiles forward and backward
        compile_s["torch.compile"] = time.perf_counter() - t
        runners["torch.compile"] = run

    same = "equal" if facts["jax_params"] == facts["torch_params"] else "DIFFERENT"
    print(
        f"parameters: ssl_jax {facts['jax_params']:,}, PyTorch {facts['torch_params']:,} ({same})"
    )
    print(
        f"forward FLOPs on the 2N views: ssl_jax {facts['jax_fwd_flops'] / 1e9:.3f} G "
        f"(XLA cost analysis), PyTorch {facts['torch_fwd_flops'] / 1e9:.3f} G (FlopCounterMode, "
        f"convs and matmuls only); ssl_jax step {facts['jax_step_flops'] / 1e9:.3f} G"
    )
    print("compile: " + ", ".join(f"{k} {v:.1f} s" for k, v in compile_s.items()), flush=True)

    seconds = common.interleave(runners, windows=args.windows, iters=args.iters, warmup=1)
    print_ratios(seconds, batch)
    print(f"load after: {common.load_line()}", flush=True)
    return [
        dict(case=name, name=label, batch=batch, **{k: common.median(v) for k, v in s.items()})
        for label, s in seconds.items()
    ]


def print_ratios(seconds: dict, batch: int) -> None:
    """Median images/s by wall clock and by process CPU time, with the ratios to PyTorch."""
    baselines = [b for b in ("PyTorch eager", "torch.compile") if b in seconds]
    cols = "".join(f" {'x ' + b.split()[-1]:>9s}" for b in baselines)
    print(
        f"{'':18s} {'ms/step':>8s} {'images/s':>9s} {'windows':>10s}{cols}"
        f" | {'cpu ms':>8s} {'img/cpu-s':>9s}{cols}"
    )
    for label, s in seconds.items():
        line = f"{label:18s}"
        for clock in ("wall", "cpu"):
            t = common.median(s[clock])
            if clock == "cpu":
                line += " |"
            line += f" {1e3 * t:8.1f} {batch / t:9.1f}"
            if clock == "wall":
                line += f" {common.spread(s[clock]):>10s}"
            for b in baselines:
                line += f" {common.median(seconds[b][clock]) / t:9.2f}"
        print(line)
    print(
        "(x eager / x compile: ssl_jax's speed over PyTorch's, >1 = ssl_jax faster; left by wall "
        "clock, right by the CPU time the process used, which load from other jobs inflates less)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CPU smoke run (few minutes)")
    parser.add_argument("--cases", default="convnet,resnet18", help="comma list of " + str(CASES))
    parser.add_argument("--batch", type=int, default=None, help="override every case's batch")
    parser.add_argument("--windows", type=int, default=None, help="timed windows (default 7/3)")
    parser.add_argument("--iters", type=int, default=None, help="steps per window (default 3/2)")
    parser.add_argument(
        "--conv-impls",
        default=None,
        help="ssl_jax conv_impl values to time (default 'auto,xla'; 'auto' with --quick)",
    )
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument(
        "--malloc",
        choices=("default", "keep"),
        default="default",
        help="'keep': glibc keeps freed memory (host_memory.keep_freed_memory), for both",
    )
    parser.add_argument(
        "--with-augmentation",
        action="store_true",
        help="also time ssl_jax's full step (on-device augmentation included; not like for like)",
    )
    args = parser.parse_args()
    args.windows = args.windows or (3 if args.quick else 7)
    args.iters = args.iters or (2 if args.quick else 3)
    impls = args.conv_impls or ("auto" if args.quick else "auto,xla")
    args.conv_impls = [s for s in impls.split(",") if s]
    if "auto" not in args.conv_impls:
        args.conv_impls.insert(0, "auto")

    if args.malloc == "keep" and not host_memory.keep_freed_memory():
        raise SystemExit("--malloc keep needs glibc")
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    common.header("ssl_jax SimCLR step vs PyTorch (benchmarks/compare_pytorch.py)")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads; malloc "
        f"{args.malloc}"
    )
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}", flush=True)
    for name in args.cases.split(","):
        run_case(name, args)


if __name__ == "__main__":
    main()
