"""Positions that index a table (`positions(x, dim=time) -> Embedding(n)`, a learned position embedding) may count
no further than its rows. A fixed count beyond them is a located error at check; a symbolic one becomes a size
rule with a largest size (`require time <= n` in `dslc check --ir`), which verification's sizes, the KV-cache
graphs' decoding and the train section's data sizes all keep to. Before, `dslc check` said ok and build or train
stopped with "an Embedding was given an id beyond its table"."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from dslc_runtime import InputError, Model

from dslc import ir, ir_text
from dslc.build import build
from dslc.checker import check_file
from dslc.decoding import decode_spans
from dslc.errors import DslcError
from dslc.id_flow import position_limits
from dslc.shapes import SizeRule, Sym, solve_sizes
from tests.conftest import ROOT

TABLE = """
    model m {
        input tokens: int64[batch, time]
        output y = (tokens -> Embedding(20, 4)) + (positions(tokens, dim=time) -> table: Embedding(ROWS, 4))
    }
"""


def _spec(write_spec, rows: int):
    return write_spec(TABLE.replace("ROWS", str(rows)))


def test_a_position_table_limits_its_size_and_verification_keeps_to_it(write_spec, tmp_path):
    spec = _spec(write_spec, 8)
    program = check_file(spec)
    module = program.model("m")
    (rule,) = module.size_rules
    assert (str(rule.dim), rule.at_most, rule.loc.line) == ("time", 8, 3)
    assert "'table' (Embedding) has 8 rows" in rule.why
    assert "require time <= 8  # line 3" in ir_text.dump(program)
    lengths = [ir.example_sizes(module, shift)["time"] for shift in (ir.SMALLEST_SHIFT, 0, ir.LARGEST_SHIFT)]
    assert lengths == sorted(set(lengths)) and lengths[-1] == 8  # distinct, the longest at the table's end
    (report,) = build(spec, tmp_path / "out").models
    assert report.verified
    model = Model.load(tmp_path / "out", model="m", providers="cpu")  # the graph declares it: dslc.max_sizes
    assert model.signature.max_sizes == {"time": 8}
    assert model.run(tokens=np.zeros((2, 8), np.int64))["y"].shape == (2, 8, 4)
    with pytest.raises(InputError, match="'time' is 9 but the model takes at most 8"):
        model.run(tokens=np.zeros((2, 9), np.int64))


def test_a_table_longer_than_verification_needs_changes_no_size(write_spec):
    module = check_file(_spec(write_spec, 128)).model("m")
    assert ir.example_sizes(module, ir.LARGEST_SHIFT) == ir.default_sizes(module, ir.LARGEST_SHIFT)


def test_a_fixed_count_beyond_the_table_is_a_located_error(write_spec):
    spec = write_spec("""
        model m {
            input tokens: int64[batch, 12]
            output y = positions(tokens) -> table: Embedding(8, 4)
        }
    """)
    with pytest.raises(DslcError) as info:
        check_file(spec)
    (diagnostic,) = info.value.diagnostics
    assert "'table' (Embedding) has 8 rows, and the positions it is given count to '12'" in diagnostic.message
    assert diagnostic.hint == "give it at least 12 rows" and diagnostic.loc.line == 3


def test_positions_passed_into_a_block_are_limited_by_its_table(write_spec):
    spec = write_spec("""
        block Lookup() {
            input ids: int64[n]
            output y = ids -> Embedding(6, 4)
        }

        model m {
            input x: float32[batch, time, 4]
            output y = positions(x, dim=time) -> Lookup()
        }
    """)
    program = check_file(spec)
    (limit,) = position_limits(program.model("m"), program.modules)
    assert (str(limit.count), limit.rows, limit.layer) == ("time", 6, "block 'Lookup'")


def test_a_smallest_size_above_the_tables_rows_is_a_located_error(write_spec):
    spec = write_spec("""
        model m {
            input x: float32[batch, time]
            v, i = topk(x, 12, dim=time)
            output y = (positions(x, dim=time) -> Embedding(8, 4))
            output z = v
        }
    """)
    result = subprocess.run(
        [sys.executable, "-m", "dslc.cli", "check", str(spec)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{spec}:3:12: error: topk: k=12 needs dimension 1 (size time) to be at least 12; but " in result.stderr
    assert "(Embedding) has 8 rows, and the positions it is given count to 'time' (line 4), so it is at most 8" in (
        result.stderr
    )


def test_training_data_longer_than_the_position_table_is_refused_at_check():
    spec = ROOT / "specs" / "text_generator.model"
    assert check_file(spec, overrides={"context": 32})  # the data's sequences are 32 long
    with pytest.raises(DslcError) as info:
        check_file(spec, overrides={"context": 16})
    (diagnostic,) = info.value.diagnostics
    assert "model 'text_generator' cannot run at time=32: 'position_embedding' (Embedding) has 16 rows" in (
        diagnostic.message
    )
    assert diagnostic.message.endswith("which needs time <= 16") and diagnostic.loc.line > 40


def test_sizes_are_lowered_to_a_largest_and_raised_to_a_smallest():
    time, width = Sym.named("time"), Sym.named("width")
    rules = [SizeRule(time, 1, "table", at_most=8), SizeRule(time, 5, "kernel"), SizeRule(2 * width, 1, "w", at_most=9)]
    assert solve_sizes({"time": 28, "width": 16}, rules) == ({"time": 8, "width": 4}, [])
    assert solve_sizes({"time": 2, "width": 3}, rules) == ({"time": 5, "width": 3}, [])
    conflict = [SizeRule(time, 1, "table", at_most=8), SizeRule(time, 9, "kernel")]
    _, unmet = solve_sizes({"time": 16}, conflict)
    assert unmet


@pytest.mark.parametrize("length", range(3, 11))
def test_decoding_steps_cover_every_position_once(length):
    spans = decode_spans(length)
    assert spans[0][0] == 0 and spans[-1][1] == length and len(spans) >= 3
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert decode_spans(10) == [(0, 3), (3, 4), (4, 5), (5, 6), (6, 7), (7, 8), (8, 10)]


def test_a_decoder_with_a_short_position_table_builds_its_kv_cache_graphs(write_spec, tmp_path):
    spec = write_spec("""
        model lm {
            input tokens: int64[batch, time]
            embedded = (tokens -> Embedding(16, 8)) + (positions(tokens, dim=time) -> Embedding(6, 8))
            attended = embedded -> LayerNorm -> MultiheadAttention(2, causal=true)
            output logits = embedded + attended -> Linear(16)
        }
    """)
    result = build(spec, tmp_path / "out")
    (report,) = result.models
    assert report.verified and (tmp_path / "out" / "lm.decode_step.onnx").exists()
