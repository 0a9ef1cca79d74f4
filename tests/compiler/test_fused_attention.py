"""Attention lowered to one ONNX Attention node (opset 23), RMSNorm to RMSNormalization, rotary to RotaryEmbedding:
onnxruntime's CPU kernels give PyTorch's results for bool and additive masks, fully masked queries, causal
attention (also with queries after cached keys), grouped-query heads, dropout in eval and cross-attention of other
lengths."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from dslc.build import build, load_generated
from dslc.decoding import lower_decoder
from dslc.export_onnx import state_arrays
from dslc.lower_onnx import IR_VERSION, OPSET, lower


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _lowered(tmp_path, source: str, name: str):
    spec = tmp_path / "spec.model"
    spec.write_text(source)
    result = build(spec, tmp_path / "build", export_onnx=False)
    torch.manual_seed(0)
    net = load_generated(result.python_path).MODELS[name]().eval()
    module = result.program.model(name)
    return result.program, module, net, lower(result.program, module, state_arrays(net))


def _ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def _compare(net, model, feeds: dict[str, np.ndarray], atol: float = 1e-5) -> list[np.ndarray]:
    with torch.no_grad():
        want = net(*(torch.from_numpy(v) for v in feeds.values()))
    want = [w.numpy() for w in (want if isinstance(want, tuple) else (want,))]
    got = _session(model).run(None, feeds)
    for w, g in zip(want, got):
        assert not np.isnan(w).any() and not np.isnan(g).any()
        np.testing.assert_allclose(g, w, rtol=0, atol=atol)
    return got


MASKED = """
model masked {
    input x: float32[batch, time, 16]
    input keep: bool[batch, 1, 1, time]
    input bias: float32[batch, 1, time, time]
    q = x -> q_proj: Linear(16)
    k = x -> k_proj: Linear(8)
    v = x -> v_proj: Linear(8)
    output padded = attention(q, k, v, keep, heads=4, kv_heads=2)
    output additive = attention(q, k, v, bias, heads=4, kv_heads=2, dropout=0.3)
    output both = attention(q, k, v, keep, heads=4, kv_heads=2, causal=true)
    k1 = x -> k1_proj: Linear(4)
    output one_head = attention(q, k1, k1, heads=4, kv_heads=1, causal=true)
}
"""


def test_masked_attention_is_one_node_each_and_matches_pytorch_where_rows_are_fully_masked(tmp_path):
    *_, net, model = _lowered(tmp_path, MASKED, "masked")
    ops = _ops(model)
    assert ops["Attention"] == 4 and "Softmax" not in ops and "Where" not in ops
    assert ops["Expand"] == 1  # the padding mask to [batch, 1, time, time], once for the two that read it
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 7, 16)).astype(np.float32)
    keep = np.ones((3, 1, 1, 7), bool)
    keep[1, ..., 5:] = False  # padding
    keep[2] = False  # every key masked: PyTorch's SDPA answers 0, so must onnxruntime
    bias = rng.standard_normal((3, 1, 7, 7)).astype(np.float32)
    bias[0, 0, 2, :] = -np.inf  # a query that may look nowhere
    bias[1, 0, :, 3] = -np.inf
    padded, additive, both, _ = _compare(net, model, {"x": x, "keep": keep, "bias": bias})
    assert not padded[2].any() and not both[2].any() and not additive[0, 2].any()


def test_a_key_padding_mask_broadcast_over_queries_is_expanded_for_onnxruntime():
    """onnxruntime's Attention refuses a mask whose query dimension is 1 ([batch, 1, 1, keys]), which ONNX allows:
    why the lowering expands it."""
    q = helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, 3, 8])
    m = helper.make_tensor_value_info("m", TensorProto.BOOL, [1, 1, 1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8])
    node = helper.make_node("Attention", ["q", "q", "q", "m"], ["y"], q_num_heads=2, kv_num_heads=2)
    graph = helper.make_graph([node], "g", [q, m], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    feeds = {"q": np.ones((1, 3, 8), np.float32), "m": np.ones((1, 1, 1, 3), bool)}
    with pytest.raises(Exception, match="inconsistent q_sequence_length"):
        _session(model).run(None, feeds)


def test_onnxruntime_attention_zeroes_a_fully_masked_query():
    """The runtime's onnxruntime pin (>= 1.28): 1.23 answers NaN here, 1.24 to 1.27 the mean of the values."""
    q = helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, 2, 4, 8])
    m = helper.make_tensor_value_info("m", TensorProto.BOOL, [4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 8])
    graph = helper.make_graph([helper.make_node("Attention", ["q", "q", "q", "m"], ["y"])], "g", [q, m], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    mask = np.ones((4, 4), bool)
    mask[1] = False
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 8)).astype(np.float32)
    (got,) = _session(model).run(None, {"q": x, "m": mask})
    want = torch.nn.functional.scaled_dot_product_attention(*[torch.from_numpy(x)] * 3, torch.from_numpy(mask))
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-5)
    assert not got[:, :, 1].any()


MHA = """
model mha {
    input x: float32[batch, time, 32]
    input memory: float32[batch, source, 24]
    s = x -> self_attn: MultiheadAttention(4, dropout=0.2, causal=true)
    output y = (s, memory) -> cross: MultiheadAttention(4, bias=false)
    output z = x -> plain: MultiheadAttention(2)
}
"""


def test_multihead_attention_self_causal_and_cross_with_other_lengths(tmp_path):
    *_, net, model = _lowered(tmp_path, MHA, "mha")
    ops = _ops(model)
    assert ops["Attention"] == 3 and not {"Softmax", "Transpose", "Reshape", "Trilu"} & set(ops)
    causal = [
        n for n in model.graph.node if n.op_type == "Attention" and any(a.name == "is_causal" for a in n.attribute)
    ]
    assert len(causal) == 1
    rng = np.random.default_rng(1)
    for time, source in ((5, 9), (1, 3), (12, 2)):
        feeds = {
            "x": rng.standard_normal((2, time, 32)).astype(np.float32),
            "memory": rng.standard_normal((2, source, 24)).astype(np.float32),
        }
        _compare(net, model, feeds)


DECODER = """
model lm {
    input tokens: int64[batch, time]
    h = (tokens -> wte: Embedding(50, 32)) -> norm: RMSNorm(eps=1e-6)
    q = h -> q_proj: Linear(32, bias=false) -> rotary(heads=4)
    k = h -> k_proj: Linear(16, bias=false) -> rotary(heads=2)
    v = h -> v_proj: Linear(16, bias=false)
    a = attention(q, k, v, heads=4, kv_heads=2, causal=true)
    m = (h + a) -> block: MultiheadAttention(4, causal=true)
    output logits = m -> lm_head: Linear(50, bias=false)
}
"""


def test_decode_step_queries_after_the_cache_see_every_earlier_key(tmp_path):
    """Chunks of several tokens after a cached prefix: causal Attention with past keys aligns each query to the
    last key (query i sees the past and the new keys up to i), as the full forward pass does."""
    program, module, net, model = _lowered(tmp_path, DECODER, "lm")
    ops = _ops(model)
    assert ops["Attention"] == 2 and ops["RMSNormalization"] == 1 and "ReduceMean" not in ops
    assert ops["RotaryEmbedding"] == 2 and "Neg" not in ops  # rotate-half, its cos and sin computed once
    graphs = lower_decoder(program, module, state_arrays(net))
    step_ops = _ops(graphs.decode_step)
    assert step_ops["Attention"] == 2
    reads_past = [n.op_type for n in graphs.decode_step.graph.node if any("past_key_values" in i for i in n.input)]
    assert reads_past == ["Shape", "Attention", "Attention"]  # the past length (for rotary), no Concat
    attention = [n for n in graphs.decode_step.graph.node if n.op_type == "Attention"]
    assert [list(n.output) for n in attention] == [
        [n.output[0], f"present.{i}.key", f"present.{i}.value"] for i, n in enumerate(attention)
    ]
    tokens = np.random.default_rng(2).integers(0, 50, (2, 11))
    with torch.no_grad():
        full = net(torch.from_numpy(tokens)).numpy()
    prefill, step = _session(graphs.prefill), _session(graphs.decode_step)
    names = [o.name for o in step.get_outputs()]
    state = dict(zip([o.name for o in prefill.get_outputs()], prefill.run(None, {"tokens": tokens[:, :4]})))
    np.testing.assert_allclose(state["logits"], full[:, :4], rtol=0, atol=1e-5)
    for start, stop in ((4, 7), (7, 8), (8, 11)):  # three new tokens, one, three
        past = {n.replace("present", "past_key_values"): v for n, v in state.items() if n.startswith("present")}
        state = dict(zip(names, step.run(None, {"tokens": tokens[:, start:stop], **past})))
        np.testing.assert_allclose(state["logits"], full[:, start:stop], rtol=0, atol=1e-5)
    assert state["present.0.key"].shape == (2, 2, 11, 8)


@pytest.mark.parametrize("dims, affine", [(1, True), (2, True), (1, False)])
def test_rmsnorm_is_one_node_and_matches_pytorch(tmp_path, dims, affine):
    layer = f"RMSNorm(dims={dims}, elementwise_affine={'true' if affine else 'false'})"
    source = f"model normed {{\n    input x: float32[batch, 5, 6]\n    output y = x -> norm: {layer}\n}}\n"
    program, module, net, model = _lowered(tmp_path, source, "normed")
    assert [n.op_type for n in model.graph.node] == ["RMSNormalization"]
    if affine:
        with torch.no_grad():
            net.norm.weight.uniform_(0.5, 1.5)
        model = lower(program, module, state_arrays(net))
    x = np.random.default_rng(3).standard_normal((3, 5, 6)).astype(np.float32) * 1e-3  # eps (float32's) matters
    _compare(net, model, {"x": x})
