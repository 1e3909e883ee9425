"""What a compiled data-parallel step does: its collectives, the bytes they move, its FLOPs.

The train step is one ``jax.jit`` over a batch-sharded global array (``ssl_jax.parallel``); the
SPMD partitioner decides which collectives the program needs. These helpers read them from the
optimised HLO text of a compiled function (``jax.jit(f).lower(...).compile().as_text()``), so a
test can assert that a step holds only the collectives data parallelism needs, and a benchmark can
count the bytes a step puts on the interconnect:

    >>> compiled = jax.jit(step).lower(*args).compile()          # doctest: +SKIP
    >>> for c in collectives(compiled.as_text()):                # doctest: +SKIP
    ...     print(c["kind"], c["shapes"], c["bytes"], c["scope"], c["source"])

Bytes are per device and per execution of the op; ``count`` is how many times a step executes it
(collectives inside a ``while`` loop run once per iteration: the known trip counts are multiplied
in). ``traffic_bytes`` is what each device sends with the usual bandwidth-optimal (ring)
algorithms over ``n`` participants -- all-reduce ``2 (n-1)/n x size``, all-gather and all-to-all
``(n-1)/n x result``, reduce-scatter ``(n-1) x result`` (= ``(n-1)/n`` of its input),
collective-permute the buffer once -- the figure that, divided by the link bandwidth, gives the
time of a bandwidth-bound collective.

References: the HLO operation semantics (https://openxla.org/xla/operation_semantics); the ring
all-reduce cost model, e.g. Patarasuk & Yuan, "Bandwidth optimal all-reduce algorithms for
clusters of workstations", JPDC 2009.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections import defaultdict
from typing import Any

import jax
import jax.numpy as jnp

from ssl_jax.methods import METHODS, get_method

__all__ = [
    "COLLECTIVE_KINDS",
    "COMPUTATION_RE",
    "OP_NAME_RE",
    "classify",
    "collectives",
    "data_parallel_problems",
    "flops",
    "step_sizes",
    "summarize",
    "traffic_bytes",
]

COLLECTIVE_KINDS = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "collective-permute",
    "all-to-all",
    "ragged-all-to-all",
    "collective-broadcast",
)

_DTYPE_BYTES = {
    "pred": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
    "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
    "s32": 4, "u32": 4, "f32": 4,
    "s64": 8, "u64": 8, "f64": 8, "c64": 8,
    "c128": 16,
}  # fmt: skip

# An HLO computation's header line, and an instruction's op_name (public: the profiler reads them).
COMPUTATION_RE = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s+->\s+.*\{\s*$")
_COLLECTIVE = re.compile(
    r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<shape>.*?)\s+"
    r"(?P<kind>" + "|".join(COLLECTIVE_KINDS) + r")(?P<start>-start)?\("
)
_ARRAY = re.compile(r"\b([a-z]+\d*[a-z0-9]*)\[([\d,]*)\]")
_CALLEE = re.compile(
    r"\b(?:calls|to_apply|body|condition|true_computation|false_computation)=%?([\w.\-]+)"
)
_CALLEE_LIST = re.compile(r"\b(?:branch_computations|called_computations)=\{([^}]*)\}")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_BODY = re.compile(r"\bbody=%?([\w.\-]+)")
OP_NAME_RE = re.compile(r'op_name="([^"]*)"')
_STACK_FRAME = re.compile(r"stack_frame_id=(\d+)")
_REPLICA_GROUPS = re.compile(r"replica_groups=(\{\{[^=]*?\}\}|\[[\d,]+\]<=\[[\d,]+\][^,]*|\{\})")
_MESH_GROUPS = re.compile(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}")
_SOURCE_PAIRS = re.compile(r"source_target_pairs=\{(.*?)\}\}")


@functools.cache
def _loss_scopes() -> tuple[str, ...]:
    """The named scopes of every registered method's losses (``LOSS_SCOPES``): they appear in
    op_name as e.g. "jvp(nt_xent)/..."."""
    scopes = (s for _, method in METHODS.items() for s in method.LOSS_SCOPES)
    return tuple(dict.fromkeys(scopes))


def _arrays(shape: str) -> tuple[list[str], list[int]]:
    """All arrays named in an HLO shape string -> (['f32[2,3]', ...], [bytes of each])."""
    arrays, sizes = [], []
    for dtype, dims in _ARRAY.findall(shape):
        if dtype not in _DTYPE_BYTES:
            continue
        size = _DTYPE_BYTES[dtype]
        for d in filter(None, dims.split(",")):
            size *= int(d)
        arrays.append(f"{dtype}[{dims}]")
        sizes.append(size)
    return arrays, sizes


def _split_top_level(shape: str) -> list[str]:
    """'(a, (b, c), d)' -> ['a', '(b, c)', 'd']; a non-tuple shape -> [shape]."""
    shape = re.sub(r"/\*.*?\*/", "", shape).strip()
    if not shape.startswith("("):
        return [shape]
    parts, depth, current = [], 0, []
    for ch in shape[1:-1]:
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    parts.append("".join(current).strip())
    return parts


def _group_size(line: str, num_devices: int | None) -> int | None:
    """Participants per replica group, from the several syntaxes XLA prints."""
    mesh = _MESH_GROUPS.search(line)
    if mesh:  # replica_groups=mesh['axis_0'=8,'axis_1'=1] {'axis_0'}
        sizes = dict(re.findall(r"'([^']+)'=(\d+)", mesh.group(1)))
        return functools.reduce(
            lambda a, b: a * b, (int(sizes[a]) for a in re.findall(r"'([^']+)'", mesh.group(2))), 1
        )
    groups = _REPLICA_GROUPS.search(line)
    if groups:
        text = groups.group(1)
        if text == "{}":  # all devices in one group
            return num_devices
        if text.startswith("["):  # iota form [G,S]<=[...]: G groups of S
            return int(text[1:].split("]")[0].split(",")[-1])
        return len(text[2:].split("}")[0].split(","))
    pairs = _SOURCE_PAIRS.search(line)
    if pairs:  # collective-permute: each device sends to at most one peer
        return 2
    return num_devices


def traffic_bytes(kind: str, nbytes: int, group_size: int | None) -> float:
    """Bytes each device sends for one execution (ring/bandwidth-optimal algorithms).

    Args:
      kind: one of COLLECTIVE_KINDS.
      nbytes: the op's per-device RESULT size in bytes.
      group_size: participants n (None or 1: nothing moves).
    """
    n = group_size or 1
    if n <= 1:
        return 0.0
    if kind == "all-reduce":
        return 2.0 * (n - 1) / n * nbytes
    if kind == "reduce-scatter":
        return float((n - 1) * nbytes)
    if kind == "collective-permute":
        return float(nbytes)
    return (n - 1) / n * nbytes  # all-gather, all-to-all, collective-broadcast


def _metadata_tables(hlo_text: str) -> dict[str, dict[int, str]]:
    tables: dict[str, dict[int, str]] = {}
    for name in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
        m = re.search(rf"^{name}\n((?:\d+ .*\n)*)", hlo_text, re.M)
        if m:
            rows = (line.split(" ", 1) for line in m.group(1).splitlines())
            tables[name] = {int(k): v for k, v in rows}
    return tables


def _fields(row: str) -> dict[str, str]:
    """'{a=1 b=2}' -> {'a': '1', 'b': '2'}."""
    return dict(kv.split("=", 1) for kv in row.strip("{}").split())


def _source(frame_id: int, tables: dict[str, dict[int, str]]) -> str:
    """'path:line (function)' of the innermost stack frame outside jax itself, or ''.

    The HLO text carries the Python stack of each op (StackFrames -> FileLocations -> FileNames);
    printed parent ids are one above the listing's (checked on jaxlib 0.10). Best effort: the
    format is not a stable API, so nothing relies on this beyond messages.
    """
    frames, locations = tables.get("StackFrames"), tables.get("FileLocations")
    if not frames or not locations:
        return ""
    seen: set[int] = set()
    while frame_id in frames and frame_id not in seen:
        seen.add(frame_id)
        frame = dict(kv.split("=") for kv in frames[frame_id].strip("{}").split())
        loc = dict(
            kv.split("=") for kv in locations[int(frame["file_location_id"])].strip("{}").split()
        )
        path = os.path.normpath(tables["FileNames"].get(int(loc["file_name_id"]), "").strip('"'))
        if "/site-packages/jax/" not in path and "/jax/_src/" not in path:
            func = tables["FunctionNames"].get(int(loc["function_name_id"]), "").strip('"')
            short = re.sub(r"^.*?/(ssl_jax|tests|benchmarks|site-packages)/", r"\1/", path)
            return f"{short}:{loc['line']} ({func})"
        frame_id = int(frame["parent_frame_id"]) - 1
    return ""


def _scope(op_name: str) -> str:
    """The ssl_jax.losses scope an op belongs to ('nt_xent', ...), or ''."""
    for scope in _loss_scopes():
        if re.search(rf"[(/]{scope}[)/]", op_name):
            return scope
    return ""


def collectives(hlo_text: str, num_devices: int | None = None) -> list[dict[str, Any]]:
    """The collective ops of an optimised HLO module, one dict per op.

    Args:
      hlo_text: ``compiled.as_text()`` of a compiled (SPMD-partitioned) function.
      num_devices: devices of the program, for ops whose replica groups say "all".

    Returns:
      Dicts with keys ``kind`` (e.g. ``'all-gather'``), ``name``, ``computation``, ``shapes``
      (result arrays, e.g. ``['f32[2,64,16]']``), ``array_bytes`` (bytes of each), ``bytes``
      (result bytes per device, summed over the tuple of a combined op), ``group_size``,
      ``count`` (executions per call of the program), ``traffic_bytes`` (bytes each device sends
      per call: per-execution traffic x count),
      ``op_name`` (JAX's metadata), ``scope`` (``'nt_xent'``, ``'contrastive_accuracy'``,
      ``'byol_loss'`` or ``''``: the ``ssl_jax.losses`` named scope of the op) and ``source``
      (best-effort ``'file:line (function)'`` of the Python code that caused it). Async pairs
      (``*-start``/``*-done``) count once, by their start op.
    """
    tables = _metadata_tables(hlo_text)
    found: list[dict[str, Any]] = []
    callees: dict[str, list[tuple[str, int]]] = defaultdict(list)
    entry, current = None, None
    for line in hlo_text.splitlines():
        header = COMPUTATION_RE.match(line)
        if header:
            current = header.group(1)
            if line.startswith("ENTRY"):
                entry = current
            continue
        if current is None:
            continue
        trips = _TRIP_COUNT.search(line)
        body = _BODY.search(line)
        for callee in _CALLEE.findall(line):
            is_body = body is not None and callee == body.group(1)
            callees[current].append((callee, int(trips.group(1)) if trips and is_body else 1))
        for group in _CALLEE_LIST.findall(line):
            for callee in re.findall(r"%?([\w.\-]+)", group):
                callees[current].append((callee, 1))
        m = _COLLECTIVE.match(line)
        if not m:
            continue
        kind, shape = m.group("kind"), m.group("shape")
        if m.group("start") and kind in ("all-gather", "collective-permute", "all-to-all"):
            # Async start ops of these return (operands, results[, context]): keep the results.
            parts = _split_top_level(shape)
            shape = parts[1] if len(parts) > 1 else shape
        arrays, sizes = _arrays(shape)
        op_name = OP_NAME_RE.search(line)
        frame = _STACK_FRAME.search(line)
        found.append(
            dict(
                kind=kind,
                name=m.group("name"),
                computation=current,
                shapes=arrays,
                array_bytes=sizes,
                bytes=sum(sizes),
                group_size=_group_size(line, num_devices),
                op_name=op_name.group(1) if op_name else "",
                scope=_scope(op_name.group(1)) if op_name else "",
                source=_source(int(frame.group(1)), tables) if frame else "",
            )
        )

    counts: dict[str, int] = defaultdict(int)

    def visit(name: str, times: int, depth: int = 0) -> None:
        if depth > 64:  # the call graph is a DAG; this only guards against a parsing surprise
            return
        counts[name] += times
        for callee, trips in callees.get(name, ()):
            visit(callee, times * trips, depth + 1)

    if entry is not None:
        visit(entry, 1)
    for c in found:
        # An op in a computation not reached from ENTRY (should not happen) counts once.
        c["count"] = counts.get(c["computation"], 0) or 1
        c["traffic_bytes"] = traffic_bytes(c["kind"], c["bytes"], c["group_size"]) * c["count"]
    return found


def summarize(colls: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per kind: number of ops, executions, result bytes and traffic bytes per step."""
    out: dict[str, dict[str, float]] = {}
    for c in colls:
        s = out.setdefault(c["kind"], dict(ops=0, executions=0, bytes=0, traffic_bytes=0.0))
        s["ops"] += 1
        s["executions"] += c["count"]
        s["bytes"] += c["bytes"] * c["count"]
        s["traffic_bytes"] += c["traffic_bytes"]
    return out


def step_sizes(state: Any, config: Any) -> dict[str, Any]:
    """The sizes a data-parallel step's collectives are judged against (see data_parallel_problems).

    Returns:
      ``loss_scopes``: the named scopes of the method's losses (its ``LOSS_SCOPES``);
      ``param_bytes``: the byte sizes of the parameter arrays (their gradients are all-reduced);
      ``stat_bytes``: of per-channel statistics (BatchNorm batch statistics, the embedding std
      metric); ``embed_bytes``: of the ``[2, N, P]`` global float32 embeddings of a contrastive
      loss (N = ``config.batch_size``, P = ``config.model.projector_dim``).
    """

    def sizes(tree: Any) -> set[int]:
        return {math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)}

    projector_dim = int(config.model.projector_dim)
    return dict(
        loss_scopes=tuple(get_method(config.method).LOSS_SCOPES),
        param_bytes=sizes(state.params),
        stat_bytes=sizes(state.batch_stats) | {projector_dim * 4},
        embed_bytes=2 * int(config.batch_size) * projector_dim * 4,
    )


def data_parallel_problems(
    colls: list[dict[str, Any]],
    *,
    param_bytes: set[int],
    stat_bytes: set[int],
    embed_bytes: int,
    loss_scopes: tuple[str, ...] = ("nt_xent", "contrastive_accuracy"),
) -> list[str]:
    """Why each collective of a data-parallel step is unexpected (empty list: none is).

    Expected: all-reduces of arrays the size of a parameter (gradients), of a per-channel
    statistic or of a scalar, and inside the contrastive loss of at most the embeddings (the
    gradient of the gathered embeddings); all-gathers inside the contrastive loss of at most the
    ``[2, N, P]`` embeddings. Anything else -- all-to-all, collective-permute, reduce-scatter, an
    all-gather of parameters, images or activations -- means data or parameters are laid out
    other than "batch sharded, state replicated".

    Args:
      colls: :func:`collectives` of the compiled step.
      param_bytes, stat_bytes, embed_bytes: from :func:`step_sizes`.
      loss_scopes: the named scopes of the losses allowed to gather.
    """
    problems = []
    for c in colls:
        what = f"{c['kind']} {c['shapes']} from {c['source'] or c['op_name']}"
        if c["kind"] == "all-gather":
            if c["scope"] not in loss_scopes:
                problems.append(f"{what}: an all-gather outside the contrastive loss")
            elif c["bytes"] > embed_bytes:
                problems.append(f"{what}: gathers more than the embeddings ({embed_bytes} bytes)")
        elif c["kind"] == "all-reduce":
            for shape, nbytes in zip(c["shapes"], c["array_bytes"], strict=True):
                known = nbytes in param_bytes or nbytes in stat_bytes or nbytes <= 8
                in_loss = c["scope"] in loss_scopes and nbytes <= embed_bytes
                if not (known or in_loss):
                    problems.append(
                        f"{what}: all-reduces {shape}, neither a parameter, a per-channel "
                        "statistic, a scalar nor the loss's embedding gradient"
                    )
        else:
            problems.append(f"{what}: not a data-parallel collective")
    return problems


def classify(c: dict[str, Any], *, param_bytes: set[int], embed_bytes: int, **_: Any) -> str:
    """A one-phrase label of a collective for reports (XLA combines all-reduces: a combined op
    is labelled by what most of its bytes are)."""
    if c["kind"] == "all-gather":
        return "embedding gather" if c["scope"] else "UNEXPECTED gather"
    if c["kind"] != "all-reduce":
        return f"UNEXPECTED {c['kind']}"
    if "normalization.py" in c["source"]:
        return "BatchNorm statistics"
    # A combined op's op_name joins its members' with ':'; a single op of a loss scope is the
    # loss's own: [2N, P] float32 is the gradient of the gathered embeddings, smaller ones are
    # the loss and metrics (sizes alone can collide: 2N may equal a layer width).
    if c["scope"] and ":" not in c["op_name"] and max(c["array_bytes"]) <= embed_bytes:
        big = max(c["array_bytes"]) == embed_bytes
        return "embedding gradient" if big else "loss and metrics"
    grads = sum(b for b in c["array_bytes"] if b in param_bytes and b > 8)
    if grads * 2 > c["bytes"] and "transpose(" in c["op_name"]:
        return "gradients"
    if all(b <= 8 for b in c["array_bytes"]):
        return "scalars (loss, metrics)"
    if c["scope"] and max(c["array_bytes"]) <= embed_bytes:
        return "loss and metrics"
    return "other all-reduce"


def flops(compiled: jax.stages.Compiled) -> float | None:
    """FLOPs of one call per device, from XLA's cost analysis (None if the backend gives none).

    For an SPMD-partitioned program the analysis is of the per-device program.
    """
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older jax: one dict per computation
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])
