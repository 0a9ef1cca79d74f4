"""Build verification exercises every integer input over its whole valid range, and a failed ONNX
export reports dslc's own error without the exporter's graph dump."""

from __future__ import annotations

import pytest

from dslc import ir
from dslc.build import build
from dslc.checker import check_file
from dslc.export_onnx import example_inputs, example_sizes, int_input_bounds
from dslc.verify import verification_inputs
from tests.conftest import SPECS

# model -> integer input -> (block, Embedding attribute) it feeds; the vocabulary is read from the IR
EMBEDDED = {
    "transformer": {
        "transformer": {
            "source": ("TransformerEncoder", "token_embedding"),
            "target_in": ("TransformerDecoder", "token_embedding"),
        },
        "encoder": {"source": ("TransformerEncoder", "token_embedding")},
        "decoder_step": {
            "token": ("TransformerDecoder", "token_embedding"),
            "history": ("TransformerDecoder", "token_embedding"),
        },
    },
    "bert_classifier": {
        "bert_classifier": {
            "input_ids": ("BertEmbeddings", "word_embeddings"),
            "token_type_ids": ("BertEmbeddings", "token_type_embeddings"),
        },
    },
    "seq2seq_attention": {
        "seq2seq_attention": {
            "source": ("SourceEncoder", "embedding1"),
            "target_in": ("AttentionDecoder", "embedding1"),
        },
        "encoder": {"source": ("SourceEncoder", "embedding1")},
        "decoder_step": {"token": ("AttentionDecoder", "embedding1")},
    },
}


def embedding_vocab(program: ir.ProgramIR, block: str, attr: str) -> int:
    """num_embeddings of the Embedding `attr` in every instance of `block` (they must agree)."""
    found = {
        sub.init["num_embeddings"]
        for module in program.modules
        if module.kind == "block" and module.spec_name == block
        for sub in module.submodules
        if sub.attr == attr and sub.op == "Embedding"
    }
    assert len(found) == 1, (block, attr, found)
    return found.pop()


@pytest.mark.parametrize("stem", sorted(EMBEDDED))
def test_token_ids_cover_the_whole_vocabulary(stem):
    """Export and verification inputs reach the largest valid id (vocab - 1) and 0, not just 0 and 1."""
    program = check_file(SPECS / f"{stem}.model")
    assert sorted(m.spec_name for m in program.exported) == sorted(EMBEDDED[stem])
    for module in program.exported:
        feeding = EMBEDDED[stem][module.spec_name]
        runs = [(example_sizes(module), example_inputs(module, example_sizes(module), program=program))]
        runs += verification_inputs(module, program)
        assert len(runs) == 3
        for sizes, inputs in runs:
            for port, tensor in zip(module.inputs, inputs, strict=True):
                if port.type.is_float:
                    continue
                where = f"{stem}.{module.spec_name}.{port.name} at {sizes}"
                vocab = embedding_vocab(program, *feeding[port.name]) if port.name in feeding else 2
                low, high = int(tensor.min()), int(tensor.max())
                if tensor.numel() >= 2:
                    assert (low, high) == (0, vocab - 1), where
                else:  # one id (batch 1): the largest, where an off-by-one shows
                    assert low == high == vocab - 1, where


def test_bounds_follow_ids_through_blocks_groups_and_shared_layers(write_spec, tmp_path):
    """Ids are followed through a shared layer, a block's output, a named group and concat/unsqueeze into
    a block; `positions(ids)` feeds its Embedding with positions, not with the ids."""
    spec = write_spec("""
        const vocab = 50

        block Ids() {
            input ids: int64[batch, time]
            output same = ids
            output places = positions(ids, dim=1)
        }

        block Embed() {
            input ids: int64[batch, time]
            output y = ids -> Embedding(vocab, 8)
        }

        model m {
            input a: int64[batch, time]
            input b: int64[batch, time]
            input c: int64[batch, time]
            input d: int64[batch, time]
            input e: int64[batch]
            input f: int64[batch, time]
            input n: int64[batch, time]
            ea = a -> shared: Embedding(30, 4)
            eb = b -> shared
            same, places = c -> Ids()
            ec = (same -> Embedding(20, 4)) + (places -> Embedding(1000, 4))
            ed = d -> g: (Embedding(40, 4) -> Linear(4))
            output y = ea + eb + ec + ed
            output z = concat(unsqueeze(e, 1), f, dim=1) -> Embed()
            output k = n * 2
        }
    """)
    program = check_file(spec)
    module = program.model("m")
    assert int_input_bounds(module, program) == {"a": 30, "b": 30, "c": 20, "d": 40, "e": 50, "f": 50}
    for sizes, inputs in verification_inputs(module, program):
        got = {p.name: (int(x.min()), int(x.max())) for p, x in zip(module.inputs, inputs)}
        assert got["a"] == (0, 29) and got["c"] == (0, 19) and got["f"] == (0, 49) and got["n"] == (0, 1)
        assert got["e"] == ((49, 49) if sizes["batch"] == 1 else (0, 49))
    result = build(spec, tmp_path / "out")
    assert result.models[0].verified


def test_class_ids_for_one_hot_stay_below_its_classes_and_computed_ones_are_a_clear_build_error(write_spec, tmp_path):
    """one_hot refuses an id at or above num_classes, as an Embedding does: verification's ids stay below the smaller
    of the two an input feeds, and ids computed past it are refused in words (an internal error before)."""
    from click.testing import CliRunner

    from dslc.cli import main

    spec = write_spec("""
        model m {
            input ids: int64[batch, 6]
            output codes = one_hot(ids, 5)
            output vectors = ids -> Embedding(10, 4)
        }
    """)
    program = check_file(spec)
    assert int_input_bounds(program.model("m"), program) == {"ids": 5}
    assert build(spec, tmp_path / "out").models[0].verified
    shifted = tmp_path / "shifted.model"
    shifted.write_text("model m {\n    input ids: int64[batch, 6]\n    output codes = one_hot(ids + 7, 5)\n}\n")
    result = CliRunner().invoke(main, ["build", str(shifted), "-o", str(tmp_path / "out2")])
    assert result.exit_code == 1 and "internal error" not in result.output
    assert result.output.startswith("error: one_hot was given a class id outside [0, num_classes)"), result.output


def test_build_verifies_the_largest_token_id(tmp_path):
    """The built graphs are verified with those inputs (and pass)."""
    result = build(SPECS / "seq2seq_attention.model", tmp_path / "out")
    assert all(report.verified for report in result.models)


UNEVEN_POOLING = """
    model m {
        input x: float32[batch, 3, 10, 10]
        output y = x -> pool: AdaptiveAvgPool2d(3)
        output z = x -> AdaptiveAvgPool2d((7, 2))
    }
"""


def test_adaptive_pooling_to_any_size_builds_and_verifies(write_spec, tmp_path):
    """Uneven bins (10 -> 3, 10 -> 7, as PyTorch cuts them) lower to pooling matrices and match PyTorch."""
    result = build(write_spec(UNEVEN_POOLING), tmp_path / "out")
    assert all(report.verified and report.max_abs_diff < 1e-5 for report in result.models)


def test_adaptive_pooling_of_symbolic_sizes_matches_pytorch_at_every_size(write_spec, tmp_path):
    """The bins of a symbolic size are computed at run time: one graph matches PyTorch at sizes below, at and above
    the output size, even and uneven."""
    import onnxruntime as ort
    import torch
    from torch import nn

    spec = write_spec(
        "model m {\n    input x: float32[batch, 3, h, w]\n    output y = x -> AdaptiveAvgPool2d((3, 7))\n}\n"
    )
    (report,) = build(spec, tmp_path / "out").models
    assert report.verified
    session = ort.InferenceSession(str(tmp_path / "out" / report.onnx), providers=["CPUExecutionProvider"])
    pool = nn.AdaptiveAvgPool2d((3, 7))
    for h, w in [(1, 1), (2, 5), (3, 7), (9, 14), (10, 23)]:
        x = torch.randn(2, 3, h, w)
        (got,) = session.run(None, {"x": x.numpy()})
        torch.testing.assert_close(torch.from_numpy(got), pool(x), rtol=1e-5, atol=1e-6)
