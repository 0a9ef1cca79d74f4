"""The graph rewrites after the lowering (dslc.onnx_passes): attention a spec writes out becomes one Attention node
where that is exact, sibling projections one MatMul, a position embedding one Slice, Shape/Gather one Shape; each
graph still matches PyTorch in onnxruntime."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx

from tests.compiler.test_fused_attention import _compare, _lowered

WRITTEN = """
const heads = 2
const d = 16

block SelfAttention() {
    input x: float32[batch, time, d]
    input mask_bias: float32[batch, 1, 1, time]
    q = x -> query: Linear(d) -> Reshape(batch, time, heads, d // heads) -> Permute(0, 2, 1, 3)
    k = x -> key: Linear(d) -> Reshape(batch, time, heads, d // heads) -> Permute(0, 2, 1, 3)
    v = x -> value: Linear(d) -> Reshape(batch, time, heads, d // heads) -> Permute(0, 2, 1, 3)
    scores = q @ transpose(k) / (d // heads) ** 0.5 + mask_bias
    weights = softmax(scores, dim=-1) -> dropout: Dropout(0.1)
    output context = (weights @ v) -> Permute(0, 2, 1, 3) -> Reshape(batch, time, d)
}

model written {
    input tokens: int64[batch, time]
    input attention_mask: int64[batch, time]
    mask_bias = (1.0 - float(attention_mask))[:, none, none, :] * -10000.0
    x = (tokens -> emb: Embedding(30, d)) + (positions(tokens, dim=1) -> pos: Embedding(20, d))
    h = (x, mask_bias) -> attn: SelfAttention()
    g = softmax(h @ transpose(h) * 0.25, dim=-1) @ h
    output y = g -> head: Linear(3)
}
"""


def _ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def test_written_out_attention_with_a_finite_padding_mask_is_one_attention_node(tmp_path):
    *_, net, model = _lowered(tmp_path, WRITTEN, "written")
    ops = _ops(model)
    assert ops["Attention"] == 2 and "Softmax" not in ops and "Transpose" not in ops and "Reshape" not in ops
    assert ops["MatMul"] == 2 and ops["Split"] == 1  # query|key|value: one MatMul on the weights side by side; head
    assert "Range" not in ops and ops["Slice"] == 1  # the position embedding: the table's first rows
    assert ops["Shape"] == 1  # the length of tokens: for the position table's rows and the mask's expansion
    attention = [n for n in model.graph.node if n.op_type == "Attention"]
    assert [len(n.input) for n in attention] == [4, 3]  # BERT's with its mask (expanded over queries), the other
    assert {a.name: a.f for a in attention[1].attribute}["scale"] == 0.25
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 30, (3, 6))
    mask = np.ones((3, 6), np.int64)
    mask[1, 4:] = 0
    mask[2] = 0  # every key padded: -10000 everywhere, uniform weights in both runtimes
    _compare(net, model, {"tokens": tokens, "attention_mask": mask})


def test_a_mask_that_may_be_minus_infinity_keeps_the_softmax(tmp_path):
    """softmax over a row of -inf is NaN in PyTorch, and the fused Attention would answer 0: not exact."""
    source = WRITTEN.replace(
        "    mask_bias = (1.0 - float(attention_mask))[:, none, none, :] * -10000.0\n",
        "    mask_bias = log(float(attention_mask))[:, none, none, :]\n",
    )
    *_, net, model = _lowered(tmp_path, source, "written")
    ops = _ops(model)
    assert ops["Softmax"] == 1 and ops["Attention"] == 1  # the unmasked one is still fused
    tokens = np.random.default_rng(1).integers(0, 30, (2, 5))
    mask = np.ones((2, 5), np.int64)
    mask[1, 3:] = 0  # log(0) = -inf at padding, as a mask usually is
    _compare(net, model, {"tokens": tokens, "attention_mask": mask})


SIBLINGS = """
model siblings {
    input x: float32[batch, time, 8]
    input y: float32[batch, 8]
    gate = x -> gate_proj: Linear(12, bias=false)
    up = x -> up_proj: Linear(12, bias=false)
    a = x -> a: Linear(5)
    b = x -> b: Linear(3)
    output z = (SiLU(gate) * up) -> down_proj: Linear(8, bias=false)
    output w = concat([a, b], dim=-1) -> Tanh
    output u = y -> c: Linear(4)
}
"""


def test_projections_of_one_input_are_one_matmul_with_or_without_biases(tmp_path):
    *_, net, model = _lowered(tmp_path, SIBLINGS, "siblings")
    ops = _ops(model)
    assert ops["Split"] == 2 and ops["MatMul"] == 3  # gate|up, a|b (with their biases: one Add), down_proj
    widths = sorted(
        tuple(onnx.numpy_helper.to_array(i).tolist())
        for i in model.graph.initializer
        if any(n.op_type == "Split" and i.name in n.input for n in model.graph.node)
    )
    assert widths == [(5, 3), (12, 12)]
    rng = np.random.default_rng(2)
    feeds = {
        "x": rng.standard_normal((2, 4, 8)).astype(np.float32),
        "y": rng.standard_normal((2, 8)).astype(np.float32),
    }
    _compare(net, model, feeds)
    assert not any(i.name.endswith("gate_proj_weight_t") for i in model.graph.initializer)  # folded, not kept twice


RESIDUAL = """
model residual {
    input x: float32[batch, time, 8]
    input n: int64[batch, time]
    h = x + (x -> proj: Linear(8))
    output y = (h + (h -> ff: Linear(8) -> GELU -> out: Linear(8))) -> norm: LayerNorm
    output m = n + n + n
}
"""


def test_chained_float_additions_are_one_sum(tmp_path):
    *_, net, model = _lowered(tmp_path, RESIDUAL, "residual")
    ops = _ops(model)
    assert ops["Sum"] == 2 and ops["Add"] == 3  # x + (x W + b); h + (g W + b); ff's bias; the int additions
    rng = np.random.default_rng(3)
    _compare(net, model, {"x": rng.standard_normal((2, 5, 8)).astype(np.float32), "n": rng.integers(0, 9, (2, 5))})
