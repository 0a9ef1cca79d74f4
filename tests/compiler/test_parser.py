"""Parser: source text -> AST dataclasses, with located syntax errors."""

from __future__ import annotations

import pytest

from dslc import ast
from dslc.errors import DslcError
from dslc.parser import parse

SPEC = '''
"""File docstring."""
import "blocks.model" as b
from "other.model" import Residual, width
const hidden = 128  # width of the hidden layer

block Residual(channels: int, stride: int = 1) {
    """A residual block."""
    input x: float32[batch, channels, h, w]
    # the main path
    y = x -> conv1: Conv2d(channels, 3, padding=1) -> ReLU -> (Conv2d(channels, 3) -> BatchNorm2d)
    if stride != 1 { y = y -> repeat 2 Linear(3) } elif stride == 3 { y = y } else { z = x[:, 0, ..., 1:2] }
    output out = relu(y + x)
}

model cnn {
    input image: float32[batch, 1, 28, 28]
    output logits: float32[batch, 10] = image
        -> Conv2d(32, 3, padding="same") -> ReLU
        -> Flatten -> Linear(10)
    a, b = split(logits, 2, dim=-1)
    c = -a * 2.5e-3 @ b ** 2
}

train {
    epochs = 10
    step gen { loss = bce(d(fake), 1.0) }
}
'''


def test_parses_every_construct():
    program = parse(SPEC, "t.model")
    assert program.doc == "File docstring."
    kinds = [type(i).__name__ for i in program.items]
    assert kinds == ["Import", "Import", "Const", "BlockDef", "BlockDef", "TrainDef"]
    imp, from_imp, const, block, model, train = program.items
    assert (imp.path, imp.alias, imp.names) == ("blocks.model", "b", None)
    assert from_imp.names == ["Residual", "width"]
    assert const.name == "hidden" and const.value.value == 128 and const.comments == ["width of the hidden layer"]
    assert block.params[1].default.value == 1 and block.doc == "A residual block."
    assert not block.is_model and model.is_model


def test_pipeline_stages_and_comments():
    block = parse(SPEC, "t.model").items[3]
    assign = block.body[1]
    assert isinstance(assign, ast.Assign) and assign.comments == ["the main path"]
    stages = assign.value.stages
    assert isinstance(stages[0], ast.NamedStage) and stages[0].name == "conv1"
    assert isinstance(stages[1], ast.LayerCall) and stages[1].bare
    assert isinstance(stages[2], ast.Group) and len(stages[2].stages) == 2
    branch = block.body[2]
    assert isinstance(branch, ast.If) and len(branch.branches) == 2 and branch.orelse
    repeat = branch.branches[0][1][0].value.stages[0]
    assert isinstance(repeat, ast.Repeat) and repeat.count.value == 2


def test_multiline_pipeline_and_precedence():
    model = parse(SPEC, "t.model").items[4]
    output = model.body[1]
    assert isinstance(output, ast.OutputDecl) and len(output.value.stages) == 4
    c = model.body[3].value
    # '@' binds like '*' (left to right) and '**' binds tighter than unary minus.
    assert c.op == "@" and c.left.op == "*" and c.right.op == "**"
    assert isinstance(c.left.left, ast.UnaryOp)


def test_locations_are_one_based():
    model = parse(SPEC, "t.model").items[4]
    assert (model.loc.line, model.loc.col) == (16, 1)
    assert model.body[0].loc.line == 17 and model.body[0].loc.col == 5


def test_train_section():
    train = parse(SPEC, "t.model").items[5]
    assert train.items[0].name == "epochs"
    section = train.items[1]
    assert (section.kind, section.name) == ("step", "gen")
    assert isinstance(section.items[0].value, ast.Call)


def test_strings_numbers_and_escapes():
    program = parse('const a = "x\\"y"\nconst b = 1_000\nconst c = .5\nconst d = 1e-3\nconst e = \'single\'\n')
    values = [item.value.value for item in program.items]
    assert values == ['x"y', 1000, 0.5, 1e-3, "single"]


def test_hash_inside_string_is_not_a_comment():
    program = parse('const a = "# not a comment"  # real\n')
    assert program.comments == {1: "real"}
    assert program.items[0].value.value == "# not a comment"


@pytest.mark.parametrize(
    ("source", "line", "col", "fragment"),
    [
        ("model m {\n  y = x -> -> Linear(3)\n}", 2, 12, "unexpected '->'"),
        ("model m { y = x $ 3 }", 1, 17, "unexpected character '$'"),
        ("model m {", 1, 9, "unexpected end of file"),
        ("model m { y = x -> Linear(3 }", 1, 29, "expected ')'"),
        ("model m { input x float32[b] }", 1, 19, "expected ':'"),
    ],
)
def test_syntax_errors_are_located(source, line, col, fragment):
    with pytest.raises(DslcError) as info:
        parse(source, "bad.model")
    diag = info.value.diagnostics[0]
    assert (diag.loc.line, diag.loc.col) == (line, col)
    assert fragment in diag.message
    rendered = info.value.render()
    assert rendered.startswith(f"bad.model:{line}:{col}: error:")
    assert "^" in rendered


def test_positional_after_keyword_is_an_error():
    with pytest.raises(DslcError, match="positional argument after keyword"):
        parse("model m { y = x -> Linear(out_features=3, true) }")
