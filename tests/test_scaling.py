"""The compiled data-parallel train steps hold only the collectives data parallelism needs (#5).

The real SimCLR and BYOL steps (``helpers.tiny_config``) are jitted by
``ssl_jax.run.jit_train_step``, the very function ``ssl_jax.train.train`` runs (state and key
replicated, batch sharded on ``'data'``), and
compiled -- not run -- for the 8 fake CPU devices; ``ssl_jax.profiling.collectives`` reads the
collectives from the optimised HLO and ``ssl_jax.profiling.data_parallel_problems`` judges them.
Expected, and nothing else:

* all-reduce of the parameter gradients; of BatchNorm batch statistics (the forward sums and their
  backward); of scalars (loss, metrics); and, in NT-Xent's direct path, of the gradient of the
  gathered ``[2N, P]`` embeddings (the SPMD partitioner's transpose of the gather);
* all-gather of the embeddings only, inside the contrastive loss (named scope ``nt_xent`` or
  ``contrastive_accuracy``), at most the ``[2, N, P]`` global embeddings.

No all-to-all, collective-permute or reduce-scatter: they mean that data is re-laid-out between
devices (e.g. the two views concatenated along the sharded batch axis) or that parameters are
sharded. The checker is itself run on deliberately broken steps (a sharded parameter, a gathered
image batch), so that its passing the real steps means something.
"""

import functools
import math
import re

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from helpers import tiny_config
from ssl_jax import parallel, profiling, run
from ssl_jax.losses import nt_xent
from ssl_jax.methods import METHODS, get_method

N_DEV = 8


@functools.cache
def _compiled_step(method_name: str):
    """(collectives, abstract state, config, HLO text) of the method's tiny step compiled for 8
    devices."""
    config = tiny_config(method_name)
    method = get_method(method_name)
    mesh = parallel.make_mesh(N_DEV)
    inputs = run.abstract_step_inputs(config, mesh)
    compiled = run.jit_train_step(method, mesh).lower(*inputs).compile()
    text = compiled.as_text()
    return profiling.collectives(text, N_DEV), inputs[0], config, text


def _check_real_step(method_name: str) -> list[dict]:
    assert jax.device_count() == N_DEV, "tests/conftest.py should fake 8 CPU devices"
    colls, state, config, _ = _compiled_step(method_name)
    problems = profiling.data_parallel_problems(colls, **profiling.step_sizes(state, config))
    assert not problems, "\n".join(problems)
    # The gradients are reduced at all: at least one parameter's worth of bytes is all-reduced.
    reduced = sum(c["bytes"] * c["count"] for c in colls if c["kind"] == "all-reduce")
    params = sum(math.prod(x.shape) * 4 for x in jax.tree.leaves(state.params))
    assert reduced >= params, (reduced, params)
    return colls


def test_simclr_step_holds_only_data_parallel_collectives():
    colls = _check_real_step("simclr")
    # The negatives span the devices: the embeddings are gathered inside the loss.
    assert any(c["kind"] == "all-gather" and c["scope"] == "nt_xent" for c in colls)


@pytest.mark.parametrize("method_name", METHODS.names())
def test_step_ops_carry_the_phase_scopes_profiles_read(method_name):
    """benchmarks/profile_step.py attributes device time to augment / optimizer / target_ema by
    these named scopes in the compiled ops' metadata, and to forward / backward by JAX's own
    jvp / transpose wrappers. (Not 'augment': that function's name is in op names anyway.)"""
    op_names = set(re.findall(r'op_name="([^"]*)"', _compiled_step(method_name)[3]))
    scopes = ["augmentation", "optimizer_update"]
    scopes += ["target_ema"] if _compiled_step(method_name)[1].target is not None else []
    scopes += ["target_forward"] if method_name == "byol" else []
    for scope in scopes:
        assert any(re.search(rf"[(/]{scope}[)/]", n) for n in op_names), scope
    assert any("transpose(" in n for n in op_names) and any("jvp(" in n for n in op_names)


def test_byol_step_holds_only_data_parallel_collectives():
    colls = _check_real_step("byol")
    # BYOL's loss is per row: nothing is gathered at all.
    assert not [c for c in colls if c["kind"] == "all-gather"]


# ----------------------------------------------------------------------------- the HLO reader

# Long instruction lines are split in the source and joined here.
_HLO = "\n".join(
    [
        "HloModule m, num_partitions=8",
        "",
        "%add (x: f32[], y: f32[]) -> f32[] {",
        "  %x = f32[] parameter(0)",
        "  %y = f32[] parameter(1)",
        "  ROOT %a = f32[] add(%x, %y)",
        "}",
        "",
        "%body (p: (s32[], f32[4])) -> (s32[], f32[4]) {",
        "  %p = (s32[], f32[4]{0}) parameter(0)",
        "  %v = f32[4]{0} get-tuple-element(%p), index=1",
        "  %ar.1 = f32[4]{0} all-reduce(%v), channel_id=1, replica_groups=[1,8]<=[8], "
        "to_apply=%add",
        "  ROOT %t = (s32[], f32[4]{0}) tuple(%i, %ar.1)",
        "}",
        "",
        "%cond (p: (s32[], f32[4])) -> pred[] {",
        "  ROOT %c = pred[] constant(true)",
        "}",
        "",
        "ENTRY %main (x: f32[2,8]) -> f32[16,8] {",
        "  %x = f32[2,8]{1,0} parameter(0)",
        "  %ag = f32[16,8]{1,0} all-gather(%x), channel_id=2, "
        "replica_groups={{0,1,2,3,4,5,6,7}}, dimensions={0}, "
        'metadata={op_name="jit(f)/jvp(nt_xent)/reshape"}',
        "  %ars = (f32[3]{0}, /*index=1*/f32[]) all-reduce-start(%a, %b), channel_id=3, "
        "replica_groups=mesh['axis_0'=8,'axis_1'=1] {'axis_0'}, to_apply=%add",
        "  %ard = (f32[3]{0}, f32[]) all-reduce-done(%ars)",
        "  %cp = f32[2,8]{1,0} collective-permute(%x), channel_id=4, "
        "source_target_pairs={{0,1},{1,2}}",
        "  %ags = (f32[2,8]{1,0}, f32[16,8]{1,0}) all-gather-start(%x), channel_id=5, "
        "replica_groups=[2,4]<=[8], dimensions={0}",
        "  %w = (s32[], f32[4]{0}) while(%init), condition=%cond, body=%body, "
        'backend_config={"known_trip_count":{"n":"5"}}',
        "  ROOT %r = f32[16,8]{1,0} copy(%ag)",
        "}",
    ]
)


def test_collectives_reader_on_handwritten_hlo():
    colls = {c["name"]: c for c in profiling.collectives(_HLO, N_DEV)}
    assert sorted(colls) == ["ag", "ags", "ar.1", "ars", "cp"]  # the *-done op is not counted
    # Inside a while body with 5 known trips: 5 executions of a ring all-reduce of 16 bytes.
    ar = colls["ar.1"]
    assert (ar["count"], ar["group_size"], ar["bytes"]) == (5, 8, 16)
    assert ar["traffic_bytes"] == pytest.approx(5 * 2 * 7 / 8 * 16)
    ag = colls["ag"]
    assert (ag["shapes"], ag["bytes"], ag["scope"]) == (["f32[16,8]"], 512, "nt_xent")
    assert ag["traffic_bytes"] == pytest.approx(7 / 8 * 512)
    # A combined async all-reduce (tuple result), groups in the mesh syntax.
    ars = colls["ars"]
    assert (ars["shapes"], ars["array_bytes"]) == (["f32[3]", "f32[]"], [12, 4])
    assert ars["group_size"] == 8
    # An async all-gather returns (operand, result): only the result counts; 2 groups of 4.
    ags = colls["ags"]
    assert (ags["bytes"], ags["group_size"]) == (512, 4)
    assert ags["traffic_bytes"] == pytest.approx(3 / 4 * 512)
    assert colls["cp"]["traffic_bytes"] == 64
    assert profiling.summarize(list(colls.values()))["all-reduce"]["executions"] == 6


# ----------------------------------------------------------------------------- the checker can fail


def _toy_step_collectives(param_spec: P, gather_images: bool = False) -> list[dict]:
    """A small encoder + NT-Xent SGD step on the mesh, its parameter laid out as param_spec."""
    mesh = parallel.make_mesh(N_DEV)
    rows = NamedSharding(mesh, P("data"))
    w_sharding = NamedSharding(mesh, param_spec)

    def step(w, x1, x2):
        if gather_images:  # every device gets the whole batch
            x1 = jax.lax.with_sharding_constraint(x1, NamedSharding(mesh, P()))
            x2 = jax.lax.with_sharding_constraint(x2, NamedSharding(mesh, P()))
        loss = lambda w: nt_xent(jnp.tanh(x1 @ w), jnp.tanh(x2 @ w))
        return w - 0.1 * jax.grad(loss)(w)

    w = jax.ShapeDtypeStruct((64, 16), jnp.float32, sharding=w_sharding)
    x = jax.ShapeDtypeStruct((32, 64), jnp.float32, sharding=rows)
    jitted = jax.jit(step, in_shardings=(w_sharding, rows, rows), out_shardings=w_sharding)
    return profiling.collectives(jitted.lower(w, x, x).compile().as_text(), N_DEV)


def _toy_problems(colls: list[dict]) -> list[str]:
    return profiling.data_parallel_problems(
        colls, param_bytes={64 * 16 * 4}, stat_bytes=set(), embed_bytes=2 * 32 * 16 * 4
    )


def test_checker_passes_a_data_parallel_step():
    assert _toy_problems(_toy_step_collectives(P())) == []


@pytest.mark.parametrize(
    "param_spec,gather_images", [(P(None, "data"), False), (P("data", None), False), (P(), True)]
)
def test_checker_flags_sharded_parameters_and_gathered_images(param_spec, gather_images):
    problems = _toy_problems(_toy_step_collectives(param_spec, gather_images))
    assert problems, "the checker missed a non-data-parallel collective"


def test_train_runs_the_step_these_tests_compile(tmp_path, monkeypatch):
    """The guarantee above is about the step ``train()`` runs: train jits its step with
    ``ssl_jax.run.jit_train_step`` (counted here), the function compiled above."""
    from ssl_jax import train as train_lib

    calls = []

    def counted(method, mesh):
        calls.append(method.__name__)
        return run.jit_train_step(method, mesh)

    monkeypatch.setattr(train_lib, "jit_train_step", counted)
    train_lib.train(tiny_config("byol", total_steps=1), str(tmp_path))
    assert calls == ["ssl_jax.methods.byol"]
