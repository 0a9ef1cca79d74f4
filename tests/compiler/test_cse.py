"""The common-subexpression pass: each pure expression is computed once in generated code."""

from __future__ import annotations

import torch

from dslc.build import build, load_generated
from dslc.checker import check_file
from dslc.emit_torch import emit_program
from dslc.ir_text import dump


def forward_of(source: str, cls: str = "M") -> str:
    """The code lines of the class's forward(), without the trace comments."""
    forward = source.split(f"class {cls}(nn.Module):")[1].split("def forward")[1].split("\n\n\n")[0]
    return "\n".join(line for line in forward.splitlines() if not line.strip().startswith("#"))


def test_an_op_that_reads_its_input_twice_gets_a_name(write_spec):
    source = emit_program(
        check_file(
            write_spec("""
        model m {
            input a: float32[batch, time, 8]
            input b: float32[8, 64]
            output y = (a @ b) -> Reshape(batch, time, 4, 16)
        }
    """)
        )
    )
    forward = forward_of(source)
    assert forward.count("a @ b") == 1
    assert "y = product1.reshape(product1.size(0), product1.size(1), 4, 16)" in forward


def test_a_repeated_expression_is_computed_once_and_reused(write_spec):
    program = check_file(
        write_spec("""
        model m {
            input a: float32[batch, 8]
            input b: float32[8, 8]
            h = relu(a @ b) + (a @ b)
            output y = h * (a @ b)
        }
    """)
    )
    forward = forward_of(emit_program(program))
    assert forward.count("a @ b") == 1
    assert "h = torch.relu(product1) + product1" in forward and "y = h * product1" in forward
    assert "product1 = (a @ b) : float32[batch, 8]" in dump(program)


def test_a_value_is_not_reused_after_a_name_it_reads_changes(write_spec):
    forward = forward_of(
        emit_program(
            check_file(
                write_spec("""
        model m {
            input a: float32[batch, 8]
            input b: float32[8, 8]
            h = a @ b
            h = h + 1.0
            output y = h + (a @ b)
        }
    """)
            )
        )
    )
    assert "h = a @ b" in forward and "y = h + a @ b" in forward  # h no longer holds a @ b


def test_layer_calls_are_never_merged(write_spec, tmp_path):
    """Dropout draws a new mask per call and BatchNorm updates its statistics: two calls stay two."""
    spec = write_spec("""
        model m {
            input x: float32[batch, 8]
            output y = (x -> drop: Dropout(0.5)) + (x -> drop)
        }
    """)
    forward = forward_of(emit_program(check_file(spec)))
    assert forward.count("self.drop(x)") == 2
    model = load_generated(build(spec, tmp_path / "out").python_path).MODELS["m"]().train()
    torch.manual_seed(0)
    y = model(torch.ones(4, 8))
    assert ((y == 2.0) | (y == 4.0) | (y == 0.0)).all() and (y == 2.0).any()  # masks differ between calls


def test_self_attention_on_a_compound_input_computes_it_once(write_spec, tmp_path):
    spec = write_spec("""
        model m {
            input x: float32[batch, time, 8]
            output y = (x + 1.0) -> attn: MultiheadAttention(2)
        }
    """)
    result = build(spec, tmp_path / "out")
    forward = forward_of(result.python_path.read_text())
    assert "total1 = x + 1.0" in forward and "y = self.attn(total1, total1, total1)" in forward
    assert result.models[0].verified


def test_values_equal_at_one_use_but_not_in_the_class_stay_apart(write_spec, tmp_path):
    """`x * a` and `x * b` are the same at Scale() (a = b = 2.0) but not for Scale(a=1.0, b=3.0)."""
    spec = write_spec("""
        block Scale(a: float = 2.0, b: float = 2.0, n: int = 4, m: int = 4) {
            input x: float32[batch, t, d]
            output y = x * a + x * b
            output z = x[:, 0:n] + x[:, 0:m]
        }
        model m {
            input x: float32[batch, 8, 8]
            y1, z1 = x -> Scale()
            output y = y1
            output z = z1
        }
    """)
    source = emit_program(check_file(spec))
    forward = forward_of(source, "Scale")
    assert "x * self.a + x * self.b" in forward and "x[:, 0 : self.n] + x[:, 0 : self.m]" in forward
    path = tmp_path / "scale.py"
    path.write_text(source)
    y, z = load_generated(path).Scale(a=1.0, b=3.0, n=2, m=2)(torch.ones(1, 8, 8))
    assert torch.allclose(y, torch.full((1, 8, 8), 4.0)) and z.shape == (1, 2, 8)
