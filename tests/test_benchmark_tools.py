"""Tests for what the benchmark scripts compute: the FLOPs that MFU divides by and the profile's
matching of device events to HLO instructions (benchmarks/common.py, benchmarks/profile_step.py)."""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))

import common  # noqa: E402
import profile_step  # noqa: E402

from ssl_jax.models.layers import make_conv  # noqa: E402


def test_step_flops_counts_the_model_not_the_gpu_channel_padding(monkeypatch):
    """MFU's numerator is the model's arithmetic: on GPU 'auto' pads a 3-channel stem to 8
    channels for cuDNN, and the count must not include those zeros."""
    n, hw, k, c_in, c_out = 2, 16, 7, 3, 4
    x = np.zeros((n, hw, hw, c_in), np.float32)
    # Multiply-adds x 2, over the taps that land inside the image (XLA's cost analysis does not
    # count those on the zero border).
    taps = sum(sum(0 <= 2 * i - 3 + t < hw for t in range(k)) for i in range(hw // 2))
    expected = 2 * n * c_out * c_in * taps**2
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    # A 7x7 stride-2 stem (conv_impl='auto'), applied through its graph definition as a method's
    # train step applies its network from the train state.
    graphdef, params = nnx.split(make_conv(c_in, c_out, k, strides=2, padding=3, rngs=nnx.Rngs(0)))
    step = jax.jit(lambda graphdef, params, x: nnx.merge(graphdef, params)(x))
    # What the GPU runs holds the padded convolution ...
    assert np.asarray(step(graphdef, params, x)).shape == (n, hw // 2, hw // 2, c_out)
    traced = step.trace(graphdef, params, x)
    padded = common.compiled_flops(traced.lower(lowering_platforms=("cpu",)))
    np.testing.assert_allclose(padded, expected * 8 / c_in, rtol=0.01)
    # ... and what MFU divides by does not.
    flops = common.step_flops(step, graphdef, params, x)
    np.testing.assert_allclose(flops, expected, rtol=0.01)


def test_profile_reads_instructions_with_tuple_shapes():
    """cuDNN convolutions return (result, scratch): a tuple shape with spaces in it. A profile
    that missed them attributed only 28 of a ResNet-50 step's 97 ms (benchmarks/RESULTS.md)."""
    conv_line = (
        "  %cudnn-conv.1 = (bf16[8,8,8,4]{3,2,1,0}, u8[4096]{0}) custom-call(%p0, %p1), "
        "window={size=7x7 stride=2x2 pad=3_3x3_3}, dim_labels=b01f_o01i->b01f, "
        'custom_call_target="__cudnn$convForward", '
        'metadata={op_name="jit(train_step)/jvp()/conv_general_dilated"}'
    )
    hlo = """
ENTRY %main (p0: bf16[8,16,16,3], p1: bf16[7,7,3,4]) -> bf16[8,8,8,4] {
  %p0 = bf16[8,16,16,3]{3,2,1,0} parameter(0)
  %p1 = bf16[7,7,3,4]{3,2,1,0} parameter(1)
%CONV%
  ROOT %get-tuple-element.1 = bf16[8,8,8,4]{3,2,1,0} get-tuple-element(%cudnn-conv.1), index=0
}
""".replace("%CONV%", conv_line)
    table = profile_step.hlo_instructions(hlo)
    conv = table["instructions"]["cudnn-conv.1"]
    assert conv["opcode"] == "custom-call" and conv["shape"].startswith("(bf16[8,8,8,4]")
    assert conv["target"] == "__cudnn$convForward"
    events = [
        {"name": "sm90_xmma_fprop", "process": "/device:GPU:0", "dur": 30.0,
         "args": {"hlo_op": "cudnn-conv.1"}},
        {"name": "other", "process": "/device:GPU:0", "dur": 6.0, "args": {"hlo_op": "nope"}},
    ]  # fmt: skip
    by_cell, ops, unmatched = profile_step.summarize(events, table, steps=2)
    assert by_cell == {("forward", "convolution"): 15.0}
    assert ops == [("cudnn-conv.1", 15.0)] and unmatched == 3.0
