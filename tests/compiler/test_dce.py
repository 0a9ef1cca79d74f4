"""The dead-code pass: generated forward() computes no pure value that nothing reads, and keeps every layer."""

from __future__ import annotations

import torch

from dslc.build import build, load_generated
from dslc.checker import check_file
from dslc.emit_torch import emit_program
from tests.compiler.test_cse import forward_of

BLOCK_WITH_DEAD_CODE = """
block Res(out: int) {
    input x: float32[batch, channels]
    unused_0 = x
    unused_1 = unused_0 -> ReLU
    unused_2 = unused_1 * 2.0 + 1.0
    scaled = x * 3.0
    if channels == out {
        h = x -> Linear(out)
        output y = x + h
    } else {
        output y = scaled -> Linear(out)
    }
}

model M {
    input x: float32[batch, 4]
    noted = x -> Dropout(0.5)
    stats = x -> BatchNorm1d
    spare = x -> extra: Linear(3)
    output y = x -> Res(4) -> Res(6)
}
"""


def test_unread_pure_values_are_not_computed(write_spec):
    program = check_file(write_spec(BLOCK_WITH_DEAD_CODE))
    source = emit_program(program)
    block = forward_of(source, "Res")
    assert "unused" not in block
    assert "scaled = x * 3.0" in block  # read by the else arm, which the second use takes
    model = forward_of(source, "M")
    assert "dropout" in model.lower() and "stats = " in model  # these change when called (a draw, statistics)
    assert "spare" not in model and "self.extra = nn.Linear(4, 3)" in source  # a Linear's unread call is not made
    assert len([c for c in program.classes if c.name.startswith("Res")]) == 1  # both uses still share one class


def test_code_without_its_dead_values_matches_the_onnx_graph(write_spec, tmp_path):
    spec = write_spec(BLOCK_WITH_DEAD_CODE)
    result = build(spec, tmp_path / "out")
    assert all(report.verified for report in result.models)
    model = load_generated(result.python_path).MODELS["M"]().eval()
    assert model(torch.randn(3, 4)).shape == (3, 6)
    assert "extra.weight" in model.state_dict()  # the uncalled layer keeps its place in the state dict
    (report,) = result.models  # and the build says the graph leaves it out
    assert report.params == result.program.model("M").param_count - 8 - 15  # nor the unread BatchNorm's
    assert report.notes == [
        "bn1 (8 parameters), extra (15 parameters) reach no output: they stay in the PyTorch module and its state "
        "dict, not in the graph"
    ]
