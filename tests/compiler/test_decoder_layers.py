"""The layers of HuggingFace's decoders: attention (grouped-query, causal), rotary embeddings, Conv1D ([in, out]
weights) and tied weights; each checked against its definition, in PyTorch and in the verified ONNX graph."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dslc.build import build, load_generated
from dslc.errors import DslcError
from dslc.verify import session
from tests.compiler.test_checker import errors_of

DECODER = """
const vocab = 40
const d = 16

block Body() {
    input tokens: int64[batch, time]
    output h = (tokens -> wte: Embedding(vocab, d)) + (positions(tokens, dim=1) -> wpe: Embedding(64, d))
}

model lm {
    input tokens: int64[batch, time]
    h = tokens -> transformer: Body()
    q = h -> q_proj: Linear(d, bias=false) -> rotary(heads=4, base=500.0)
    k = h -> k_proj: Linear(8, bias=false) -> rotary(heads=2, base=500.0)
    v = h -> c_v: Conv1D(8)
    a = attention(q, k, v, heads=4, kv_heads=2, causal=true) -> ln: LayerNorm
    output logits = a -> lm_head: Linear(vocab, bias=false)
    tie lm_head.weight = transformer.wte.weight
}
"""


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    out = tmp_path_factory.mktemp("decoder")
    spec = out / "decoder.model"
    spec.write_text(DECODER)
    result = build(spec, out / "build")  # exports and verifies the ONNX graph and its KV-cache graphs
    torch.manual_seed(0)
    return result, load_generated(result.python_path).MODELS["lm"]().eval(), out / "build"


def reference_rotary(x: torch.Tensor, heads: int, base: float) -> torch.Tensor:
    """HuggingFace's apply_rotary_pos_emb on [batch, heads, time, d], from its definition."""
    batch, time, _ = x.shape
    h = x.reshape(batch, time, heads, -1).transpose(1, 2)
    d = h.shape[-1]
    inv_freq = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    freqs = torch.arange(time, dtype=torch.float32)[:, None] * inv_freq[None]
    emb = torch.cat((freqs, freqs), dim=-1)
    rotate_half = torch.cat((-h[..., d // 2 :], h[..., : d // 2]), dim=-1)
    out = h * emb.cos() + rotate_half * emb.sin()
    return out.transpose(1, 2).reshape(batch, time, -1)


def reference_attention(q, k, v, heads, kv_heads):
    """Grouped-query causal attention written out: each key/value head serves heads // kv_heads query heads."""
    b, t, _ = q.shape
    q = q.reshape(b, t, heads, -1).transpose(1, 2)
    k = k.reshape(b, t, kv_heads, -1).transpose(1, 2).repeat_interleave(heads // kv_heads, dim=1)
    v = v.reshape(b, t, kv_heads, -1).transpose(1, 2).repeat_interleave(heads // kv_heads, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, -1)


def test_the_layers_compute_their_definitions(decoder):
    _, model, _ = decoder
    tokens = torch.randint(0, 40, (3, 9))
    with torch.no_grad():
        h = model.transformer(tokens)
        q = reference_rotary(model.q_proj(h), 4, 500.0)
        k = reference_rotary(model.k_proj(h), 2, 500.0)
        v = h @ model.c_v.weight + model.c_v.bias  # Conv1D: weight [in, out]
        expected = model.lm_head(model.ln(reference_attention(q, k, v, 4, 2)))
        got = model(tokens)
    assert model.c_v.weight.shape == (16, 8)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_tied_weights_are_one_tensor_counted_once(decoder):
    result, model, out = decoder
    assert model.lm_head.weight is model.transformer.wte.weight
    assert sum(p.numel() for p in model.parameters()) == result.program.exported[0].param_count
    assert result.program.parameter_counts()[0] == result.program.exported[0].param_count
    import onnx

    tables = [t for t in onnx.load(out / "lm.onnx").graph.initializer if list(t.dims) in ([40, 16], [16, 40])]
    assert len(tables) == 1  # the embedding and the output projection read the same initializer


def test_tied_weights_load_from_a_checkpoint_that_holds_one_name(decoder):
    """HuggingFace saves a tied model without the tied key (`lm_head.weight`): it still loads strictly."""
    import copy

    from dslc.training.weights import with_tied_keys

    model = copy.deepcopy(decoder[1])
    state = {k: v.clone() + 1 for k, v in model.state_dict().items() if k != "lm_head.weight"}
    filled = with_tied_keys(state, model.state_dict())
    model.load_state_dict(filled, strict=True)
    assert torch.equal(model.lm_head.weight, state["transformer.wte.weight"])


def test_the_kv_cache_graphs_follow_the_model_token_by_token(decoder):
    _, model, out = decoder
    tokens = np.random.default_rng(1).integers(0, 40, (2, 12))
    with torch.no_grad():
        full = model(torch.from_numpy(tokens)).numpy()
    prefill, step = session(out / "lm.prefill.onnx"), session(out / "lm.decode_step.onnx")
    assert [i.name for i in step.get_inputs()] == ["tokens", "past_key_values.0.key", "past_key_values.0.value"]
    names = [o.name for o in prefill.get_outputs()]
    assert names == ["logits", "present.0.key", "present.0.value"]
    state = dict(zip(names, prefill.run(names, {"tokens": tokens[:, :1]})))  # a prompt of one token
    assert state["present.0.key"].shape == (2, 2, 1, 4)  # [batch, kv_heads, positions, head_size]
    np.testing.assert_allclose(state["logits"], full[:, :1], atol=1e-5)
    for t in range(1, 12):
        past = {n.replace("present", "past_key_values"): v for n, v in state.items() if n.startswith("present")}
        state = dict(zip(names, step.run(names, {"tokens": tokens[:, t : t + 1], **past})))
        np.testing.assert_allclose(state["logits"], full[:, t : t + 1], atol=1e-5)
    assert state["present.0.value"].shape == (2, 2, 12, 4)


@pytest.mark.parametrize(
    "body, message",
    [
        (
            "tie lm_head.weight = transformer.wte.bias",
            "'transformer.wte' (Embedding) has no parameter 'bias'; its parameters: weight",
        ),
        ("tie lm_head.weight = transformer.wtx.weight", "'transformer' has no layer or parameter 'wtx'"),
        ("tie lm_head.weight = k_proj.weight", "'lm_head.weight' is [40, 16] but 'k_proj.weight' is [8, 16]"),
        ("tie lm_head.weight = ln.weight", "'ln' is a LayerNorm, whose parameters cannot be tied"),
        ("tie lm_head.weight = lm_head.weight", "'lm_head.weight' is tied to itself"),
        ("tie lm_head = transformer.wte", "'lm_head' is a layer, not a parameter"),
    ],
)
def test_tie_errors_say_what_is_wrong(write_spec, body, message):
    spec = DECODER.replace("    tie lm_head.weight = transformer.wte.weight", f"    {body}")
    errors = errors_of(write_spec(spec))
    assert len(errors) == 1 and message in errors[0], errors


def test_a_block_cannot_tie(write_spec):
    spec = DECODER.replace("    output h = (tokens", "    tie wte.weight = wpe.weight\n    output h = (tokens")
    assert "tie is a model's statement" in errors_of(write_spec(spec))[0]


@pytest.mark.parametrize(
    "call, message",
    [
        ("attention(q, k, v, heads=3)", "3 heads do not divide the query size 16"),
        ("attention(q, k, v, heads=4, kv_heads=3)", "3 key/value heads do not divide the 4 query heads"),
        ("attention(q, k, v, heads=4)", "keys [batch, time, 8] need 4 heads of 4 (size 16)"),
        ("rotary(q, heads=16)", "16 heads of an even size do not divide the feature size 16"),
    ],
)
def test_attention_and_rotary_check_their_heads(write_spec, call, message):
    spec = DECODER.replace("attention(q, k, v, heads=4, kv_heads=2, causal=true)", call)
    errors = errors_of(write_spec(spec))
    assert len(errors) == 1 and message in errors[0], errors  # the tie below the failed line says nothing more


def test_a_decoder_whose_layers_mix_positions_gets_no_cache_graphs(tmp_path):
    """A convolution over time after the attention: the cached graphs would see only the new token, so the build
    checks them token by token, leaves them out and says why; the model's own graph is written and verified."""
    spec = tmp_path / "mixing.model"
    spec.write_text(
        DECODER.replace("-> ln: LayerNorm", "-> ln: LayerNorm -> Permute(0, 2, 1) -> Conv1d(16, 3, padding=1)")
        .replace("output logits = a ->", "output logits = Permute(a, 0, 2, 1) ->")
        .replace("Permute(a, 0, 2, 1)", "permute(a, 0, 2, 1)")
    )
    try:
        result = build(spec, tmp_path / "build")
    except DslcError as exc:  # the spec itself must be fine
        pytest.fail(str(exc))
    (report,) = result.models
    assert report.verified and report.decoder is None
    assert any("no KV-cache graphs" in note for note in report.notes)
    assert not (tmp_path / "build" / "lm.prefill.onnx").exists()


BLOCK_ARGUMENTS = """
block Attn(heads: int, kv_heads: int, base: float = 10000.0, causal: bool = true) {
    input x: float32[batch, time, d]
    q = x -> q_proj: Linear(d, bias=false) -> rotary(heads=heads, base=base)
    k = x -> k_proj: Linear(d // heads * kv_heads, bias=false) -> rotary(heads=kv_heads, base=base)
    v = x -> v_proj: Linear(d // heads * kv_heads, bias=false)
    output y = attention(q, k, v, heads=heads, kv_heads=kv_heads, causal=causal) -> o: Conv1D(d)
}

model lm {
    input tokens: int64[batch, time]
    h = tokens -> emb: Embedding(50, 32)
    output logits = h -> a1: Attn(4, 2) -> a2: Attn(4, 1, base=500.0) -> head: Linear(50)
}
"""


def test_attention_and_rotary_take_block_arguments(tmp_path):
    """One class for both uses: heads, kv_heads and base reach the code as the block's arguments."""
    spec = tmp_path / "blocks.model"
    spec.write_text(BLOCK_ARGUMENTS)
    result = build(spec, tmp_path / "build")  # verifies the graph and the KV-cache graphs
    code = result.python_path.read_text()
    assert code.count("class Attn") == 1
    assert "rotary_embedding(q, heads=self.heads, base=self.base)" in code
    assert "causal=self.causal" in code
    assert result.models[0].decoder is not None and result.models[0].decoder.layers == 2


MASKED = """
model encoder {
    input x: float32[batch, time, 16]
    input keep: bool[batch, 1, 1, time]
    q = x -> q_proj: Linear(16)
    k = x -> k_proj: Linear(16)
    v = x -> v_proj: Linear(16)
    output padded = attention(q, k, v, keep, heads=4)
    output additive = attention(q, k, v, (1.0 - float(keep)) * -10000.0, heads=4)
    output both = attention(q, k, v, keep, heads=2, causal=true)
}
"""


def test_attention_masks_bool_and_additive(tmp_path):
    spec = tmp_path / "masked.model"
    spec.write_text(MASKED)
    result = build(spec, tmp_path / "build")  # verified in onnxruntime
    torch.manual_seed(0)
    model = load_generated(result.python_path).MODELS["encoder"]().eval()
    x = torch.randn(3, 7, 16)
    keep = torch.ones(3, 1, 1, 7, dtype=torch.bool)
    keep[1, ..., 5:] = False  # padding at the end of the second row
    with torch.no_grad():
        padded, additive, both = model(x, keep)
        q, k, v = model.q_proj(x), model.k_proj(x), model.v_proj(x)
        alone = model(x[1:2, :5], keep[1:2, ..., :5])[0]  # the row without its padding
    torch.testing.assert_close(padded[1, :5], alone[0], rtol=0, atol=1e-5)  # padding changes nothing
    torch.testing.assert_close(additive, padded, rtol=0, atol=1e-4)
    reference = reference_attention(q, k, v, 2, 2)  # causal, no padding in row 0
    torch.testing.assert_close(both[0], reference[0], rtol=0, atol=1e-5)
    assert result.models[0].verified


def test_attention_mask_must_broadcast_to_the_scores(write_spec):
    spec = MASKED.replace("input keep: bool[batch, 1, 1, time]", "input keep: bool[batch, time]")
    errors = errors_of(write_spec(spec))
    assert "the mask [batch, time] does not broadcast to the scores [batch, 4, time, time]" in errors[0], errors


def test_a_checkpoint_whose_tied_names_differ_is_refused(decoder):
    """An untied model's checkpoint into a tied spec: an error, not one of the two tensors silently dropped."""
    import copy

    from dslc.training.weights import with_tied_keys

    model = copy.deepcopy(decoder[1])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["lm_head.weight"] = state["lm_head.weight"] + 1
    with pytest.raises(DslcError, match="lm_head.weight differ, but the spec ties them"):
        with_tied_keys(state, model.state_dict())
