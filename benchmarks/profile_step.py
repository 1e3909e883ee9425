"""Where a train step's device time goes: a jax.profiler trace of the real step, summarised per op.

    python benchmarks/profile_step.py --model convnet --batch 256                # CPU
    python benchmarks/profile_step.py --model resnet50 --dtype bfloat16 --batch 256   # GPU
    python benchmarks/profile_step.py --model resnet50 --dtype bfloat16 --method byol --top 40

Builds the step exactly as ``train_step.py`` does (the recipe with synthetic data, state donated,
on-device augmentation included), runs two warm-up steps, traces ``--steps`` steps with
``jax.profiler`` into ``--trace-dir`` (open it with TensorBoard/XProf or Perfetto for the
timeline) and prints, per step:

* the device time by **phase** x **kind** of op. The phase comes from each op's name scope in
  the compiled HLO: augment, target (BYOL's target network), optimizer and target_ema (the named
  scopes ``augmentation``, ``target_forward``, ``optimizer_update`` and ``target_ema`` of
  ``ssl_jax.methods``), backward (``transpose(...)``
  of JAX's autodiff), forward (the rest of ``jvp(...)``), other. The kind comes from the op
  itself: convolution, matmul (``dot``, cuBLAS or a library fusion around one), collective,
  copy/transpose, reduction fusion, elementwise fusion;
* the ``--top`` ops by time, with their shape and the source of their name scope.

Events are matched to HLO instructions by the op name the profiler records (``hlo_op`` on GPU,
the event name on CPU, or a kernel named after its fusion). On GPU, XLA's command buffers (CUDA
graphs) hide that attribution, so this script turns them off (``--xla_gpu_enable_command_buffer=``,
set before JAX starts; they run the same kernels, and the step time printed is measured without
them). The summed op time
can exceed the step time where ops overlap (several streams, CPU threads) and falls short of it
where the device idles (host work, launch gaps): the script prints both.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys

# Before JAX starts: per-op attribution on GPU needs command buffers off (see above).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_gpu_enable_command_buffer="
).strip()

import common  # noqa: E402

common.setup_imports()

import jax  # noqa: E402
from train_step import MODELS, build_step  # noqa: E402

from ssl_jax import host_memory  # noqa: E402
from ssl_jax.methods import METHODS  # noqa: E402
from ssl_jax.profiling import COLLECTIVE_KINDS, COMPUTATION_RE, OP_NAME_RE  # noqa: E402

# name = shape opcode(...); a tuple shape "(bf16[..]{..}, u8[..]{0})" holds spaces (cuDNN
# convolutions return their scratch buffer beside the result).
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\(.*?\)|\S+(?:\{[^}]*\})?)\s+([\w\-]+)\("
)
_CALLS = re.compile(r"\bcalls=%?([\w.\-]+)")
_TARGET = re.compile(r'custom_call_target="([^"]*)"')
_FUSION_KIND = re.compile(r"\bkind=(k\w+)")
PHASES = ("augment", "target", "forward", "backward", "optimizer", "target_ema", "other")


def hlo_instructions(hlo_text: str) -> dict[str, dict]:
    """Every instruction of an HLO module text: name -> {opcode, shape, op_name, computation,
    calls, target, fusion_kind}; and each computation's opcodes under the key ``computations``."""
    table: dict[str, dict] = {}
    computations: dict[str, set] = collections.defaultdict(set)
    current = ""
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.match(line)
        if m is None:
            c = COMPUTATION_RE.match(line)
            if c:
                current = c.group(1)
            continue
        name, shape, opcode = m.groups()
        target = _TARGET.search(line)
        op_name = OP_NAME_RE.search(line)
        calls = _CALLS.search(line)
        kind = _FUSION_KIND.search(line)
        computations[current].add(opcode if target is None else f"{opcode}:{target.group(1)}")
        table[name] = dict(
            opcode=opcode,
            shape=shape,
            op_name=op_name.group(1) if op_name else "",
            calls=calls.group(1) if calls else "",
            target=target.group(1) if target else "",
            fusion_kind=kind.group(1) if kind else "",
        )
    return {"instructions": table, "computations": computations}


def _kind_of(inst: dict, computations: dict[str, set]) -> str:
    opcode, target = inst["opcode"], inst["target"].lower()
    body = " ".join(computations.get(inst["calls"], ())).lower()
    text = f"{opcode} {target} {body}"
    if any(c in opcode for c in COLLECTIVE_KINDS):
        return "collective"
    if "convolution" in text or "conv" in target:
        return "convolution"
    if re.search(r"\bdot\b|gemm|cublas|matmul", text):
        return "matmul"
    if opcode in ("copy", "transpose", "copy-start", "copy-done") or (
        opcode == "fusion" and body and set(body.split()) <= {"copy", "transpose", "bitcast"}
    ):
        return "copy/transpose"
    if opcode == "fusion" and (inst["fusion_kind"] == "kInput" or "reduce" in body):
        return "reduction fusion"
    if opcode == "fusion":
        return "elementwise fusion"
    return opcode


# Named scopes of ssl_jax.methods -> the phase they are reported as.
_SCOPES = {
    "augmentation": "augment",
    "target_forward": "target",  # BYOL's target network (no gradient)
    "optimizer_update": "optimizer",
    "target_ema": "target_ema",
}


def _phase_of(op_name: str) -> str:
    for scope, phase in _SCOPES.items():
        if re.search(rf"(^|[(/]){scope}[)/]", op_name):
            return phase
    if "transpose(" in op_name:
        return "backward"
    if "jvp(" in op_name:
        return "forward"
    return "other"


def read_trace(trace_dir: str) -> list[dict]:
    """The complete ('X') events of the newest trace under ``trace_dir``, each with the name of
    its process; only device processes ('/device:...') when the trace has any."""
    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))
    if not files:
        raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}")
    with gzip.open(max(files, key=os.path.getmtime)) as fh:
        events = json.load(fh)["traceEvents"]
    process = {
        e["pid"]: e.get("args", {}).get("name", "")
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name"
    }
    complete = [
        dict(e, process=process.get(e.get("pid"), "")) for e in events if e.get("ph") == "X"
    ]
    on_device = [e for e in complete if e["process"].startswith("/device:")]
    return on_device or complete


def summarize(events: list[dict], hlo: dict, steps: int) -> tuple[dict, list, float]:
    """Per-step microseconds by (phase, kind), per op, and the time of unmatched events."""
    instructions, computations = hlo["instructions"], hlo["computations"]
    # GPU kernels of XLA's own fusions are named like the instruction with '_' for '.'.
    alias = {name.replace(".", "_"): name for name in instructions}
    by_cell: dict[tuple[str, str], float] = collections.defaultdict(float)
    by_op: dict[str, float] = collections.defaultdict(float)
    unmatched = 0.0
    for e in events:
        name = str(e.get("args", {}).get("hlo_op") or e.get("name", ""))
        name = name if name in instructions else alias.get(name, name)
        inst = instructions.get(name)
        if inst is None:
            if e["process"].startswith("/device:"):
                unmatched += e.get("dur", 0.0)
            continue
        by_op[name] += e.get("dur", 0.0) / steps
        by_cell[_phase_of(inst["op_name"]), _kind_of(inst, computations)] += e["dur"] / steps
    ops = sorted(by_op.items(), key=lambda kv: -kv[1])
    return by_cell, ops, unmatched / steps


def print_report(by_cell, ops, unmatched_us, hlo, step_ms, top: int) -> None:
    instructions, computations = hlo["instructions"], hlo["computations"]
    total = sum(by_cell.values()) / 1e3
    print(
        f"\nstep {step_ms:.2f} ms (wall, median); ops matched to the HLO: {total:.2f} ms per step"
        + (f"; device events not matched: {unmatched_us / 1e3:.2f} ms" if unmatched_us else "")
    )
    kinds = sorted(
        {k for _, k in by_cell}, key=lambda k: -sum(v for (_, kk), v in by_cell.items() if kk == k)
    )
    width = max(len(k) for k in kinds) if kinds else 10
    print(
        f"\n{'ms per step':<{width}} " + " ".join(f"{p:>10s}" for p in PHASES) + f" {'total':>9s}"
    )
    for k in kinds:
        cells = [by_cell.get((p, k), 0.0) / 1e3 for p in PHASES]
        print(f"{k:<{width}} " + " ".join(f"{c:10.2f}" for c in cells) + f" {sum(cells):9.2f}")
    sums = [sum(v for (p, _), v in by_cell.items() if p == ph) / 1e3 for ph in PHASES]
    print(f"{'total':<{width}} " + " ".join(f"{c:10.2f}" for c in sums) + f" {sum(sums):9.2f}")
    print(f"{'share':<{width}} " + " ".join(f"{100 * c / max(total, 1e-9):9.1f}%" for c in sums))
    print(f"\ntop {top} ops (ms per step, share of the matched time):")
    for name, us in ops[:top]:
        inst = instructions[name]
        kind = _kind_of(inst, computations)
        scope = inst["op_name"].split("/", 1)[-1][-70:]
        print(
            f"{us / 1e3:8.2f} {100 * us / 1e3 / max(total, 1e-9):5.1f}%  {name[:28]:28s} "
            f"{kind[:18]:18s} {_phase_of(inst['op_name']):10s} {inst['shape'][:30]:30s} {scope}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="convnet", choices=sorted(MODELS))
    parser.add_argument("--method", default="simclr", choices=METHODS.names())
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--batch", type=int, default=None, help="default: the model's smallest")
    parser.add_argument("--steps", type=int, default=3, help="traced steps")
    parser.add_argument("--top", type=int, default=25, help="ops listed one by one")
    parser.add_argument("--trace-dir", default="/tmp/ssl_jax_profile", help="where the trace goes")
    parser.add_argument(
        "--hlo-out",
        default=None,
        help="also write the compiled step's HLO text here (.gz: gzipped)",
    )
    parser.add_argument(
        "--from-trace",
        default=None,
        metavar="DIR",
        help="summarise a trace saved earlier (with --hlo FILE, that run's --hlo-out) instead of "
        "running a step; --steps must be the traced run's",
    )
    parser.add_argument("--hlo", default=None, help="with --from-trace: the step's HLO text")
    args = parser.parse_args()
    if args.from_trace:
        if not args.hlo:
            parser.error("--from-trace needs --hlo FILE (the --hlo-out of the traced run)")
        with (gzip.open if args.hlo.endswith(".gz") else open)(args.hlo, "rt") as fh:
            hlo = hlo_instructions(fh.read())
        report(read_trace(args.from_trace), hlo, args.steps, float("nan"), args.top)
        return
    host_memory.configure()
    batch = args.batch or MODELS[args.model][2][0]
    common.header(f"profile of the {args.method} train step (benchmarks/profile_step.py)")
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')}")
    config, _, state, data, key, step = build_step(args.method, args.model, args.dtype, batch)
    compiled = step.lower(state, data, key).compile()
    hlo_text = compiled.as_text()
    if args.hlo_out:  # to match the trace against by hand where the matching here falls short
        with (gzip.open if args.hlo_out.endswith(".gz") else open)(args.hlo_out, "wt") as fh:
            fh.write(hlo_text)
    hlo = hlo_instructions(hlo_text)
    print(
        f"{args.model} {config.image_size} px, {args.dtype}, batch {batch}: "
        f"{len(hlo['instructions']):,} HLO instructions"
    )
    run = common.jax_step_runner(compiled, state, data, key)  # carries the donated state
    times = common.interleave({"step": run}, windows=5, iters=1, warmup=2)["step"]["wall"]
    with jax.profiler.trace(args.trace_dir):
        run(args.steps)
    report(read_trace(args.trace_dir), hlo, args.steps, 1e3 * common.median(times), args.top)
    print(f"\ntrace: {args.trace_dir} (TensorBoard/XProf or https://ui.perfetto.dev)")


def report(events: list[dict], hlo: dict, steps: int, step_ms: float, top: int) -> None:
    by_cell, ops, unmatched = summarize(events, hlo, steps)
    if not ops:
        raise SystemExit(
            "no trace event matched an HLO instruction of the step: this backend's profiler "
            "names ops differently; open the trace in XProf instead."
        )
    print_report(by_cell, ops, unmatched, hlo, step_ms, top)


if __name__ == "__main__":
    main()
