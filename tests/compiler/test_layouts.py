"""Parameter layouts the language writes as PyTorch does: numbered groups inside groups, compile-time
loops and stage conditionals that join a group's numbering, conditional values, declared parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dslc.build import build, load_generated
from dslc.checker import check_file
from dslc.errors import DslcError
from dslc.fmt import format_source
from dslc.parser import parse
from tests.compiler.test_checker import errors_of

MOBILENET_LIKE = """
const SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2)]

block InvertedResidual(out: int, stride: int, expand: int) {
    input x: float32[batch, channels, height, width]
    hidden = channels * expand
    h = x -> conv: (
        if expand != 1 { (Conv2d(hidden, kernel=1, bias=false) -> BatchNorm2d -> ReLU) }
        -> (Conv2d(hidden, kernel=3, stride=stride, padding=1, groups=hidden, bias=false) -> BatchNorm2d -> ReLU)
        -> Conv2d(out, kernel=1, bias=false) -> BatchNorm2d)
    if stride == 1 and channels == out {
        output y = x + h
    } else {
        output y = h
    }
}

model net {
    input image: float32[batch, 3, 16, 16]
    f = image -> features: (
        (Conv2d(8, kernel=3, stride=2, padding=1, bias=false) -> BatchNorm2d -> ReLU)
        -> for t, c, n, s in SETTINGS {
            for i in range(n) { InvertedResidual(c, stride=(s if i == 0 else 1), expand=t) }
        })
    output logits = f -> AdaptiveAvgPool2d(1) -> Flatten -> classifier: (Dropout(0.2) -> Linear(10))
}
"""


@pytest.fixture(scope="module")
def mobilenet_like(tmp_path_factory):
    out = tmp_path_factory.mktemp("mobilenet_like")
    spec = out / "mobilenet_like.model"
    spec.write_text(MOBILENET_LIKE)
    result = build(spec, out / "build")  # exports the ONNX graph and verifies it against PyTorch
    return result, load_generated(result.python_path).MODELS["net"]


def test_groups_nest_and_loops_number_their_layers_as_pytorch_does(mobilenet_like):
    _, net = mobilenet_like
    keys = [k for k in net().state_dict() if k.endswith("weight")]
    assert keys == [
        "features.0.0.weight",  # the stem: a numbered group inside the named group
        "features.0.1.weight",
        "features.1.conv.0.0.weight",  # expand == 1: no expansion group, the depthwise one is conv.0
        "features.1.conv.0.1.weight",
        "features.1.conv.1.weight",
        "features.1.conv.2.weight",
        *[f"features.{i}.conv.{part}.weight" for i in (2, 3) for part in ("0.0", "0.1", "1.0", "1.1", "2", "3")],
        "classifier.1.weight",
    ]


def test_the_loop_unrolls_into_the_block_uses_it_names(mobilenet_like):
    _, net = mobilenet_like
    model = net()
    strides = [block.conv[-3][0].stride for block in list(model.features)[1:]]  # the depthwise convolution
    assert strides == [(1, 1), (2, 2), (1, 1)]  # (s if i == 0 else 1): the first of each setting strides
    assert [block.conv[-2].out_channels for block in list(model.features)[1:]] == [16, 24, 24]  # pointwise


def test_the_layout_builds_runs_and_trains(mobilenet_like):
    result, net = mobilenet_like
    assert [(m.name, m.verified) for m in result.models] == [("net", True)]  # exported, run and compared
    torch.manual_seed(0)
    model = net().train()
    image = torch.randn(4, 3, 16, 16)
    model(image).square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


DECLARED = """
model tokens {
    input x: float32[batch, 4, 8]
    param cls_token: float32[1, 1, 8] = trunc_normal(std=0.02)
    param scale: float32[8] = ones
    param position: float32[1, 5, 8]
    h = x -> proj: Linear(8)
    output y = concat([cls_token + zeros_like(h[:, :1]), h], dim=1) * scale + position
}
"""


def test_declared_parameters_are_named_initialised_trained_and_exported(tmp_path):
    spec = tmp_path / "tokens.model"
    spec.write_text(DECLARED)
    result = build(spec, tmp_path / "out")  # the ONNX graph is verified against PyTorch
    assert [(m.name, m.verified) for m in result.models] == [("tokens", True)]
    model = load_generated(result.python_path).MODELS["tokens"]()
    state = model.state_dict()
    assert list(state)[:3] == ["cls_token", "scale", "position"]
    assert state["cls_token"].shape == (1, 1, 8) and 0 < state["cls_token"].abs().max() < 0.2
    assert torch.equal(state["scale"], torch.ones(8)) and torch.equal(state["position"], torch.zeros(1, 5, 8))
    code = result.python_path.read_text()
    assert "self.cls_token = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, 1, 8), std=0.02))" in code
    assert "self.scale = nn.Parameter(torch.ones(8))" in code
    model(torch.randn(2, 4, 8)).sum().backward()
    assert model.cls_token.grad is not None and model.position.grad.abs().sum() > 0
    assert result.program.model("tokens").param_count == 8 + 8 + 40 + 8 * 8 + 8
    # the ONNX graph reads the trained values
    with torch.no_grad():
        model.position.fill_(0.5)
    from dslc.export_onnx import export
    from dslc.verify import session

    path = tmp_path / "trained.onnx"
    export(model.eval(), result.program, result.program.model("tokens"), path)
    x = np.random.default_rng(0).standard_normal((3, 4, 8)).astype("float32")
    (y,) = session(path).run(["y"], {"x": x})
    np.testing.assert_allclose(y, model(torch.from_numpy(x)).detach().numpy(), atol=1e-5)


def test_a_block_parameter_sizes_a_declared_parameter(write_spec):
    program = check_file(
        write_spec("""
        block Embed(width: int) {
            input x: float32[batch, n, width]
            param position: float32[1, n, width]
            output y = x + position
        }
        model m {
            input x: float32[batch, 3, 4]
            output y = x -> embeddings: Embed(4)
        }
    """)
    )
    assert program.model("m").param_count == 12


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("param p: float32[batch, 4]\n    output y = x", "3:22 a parameter's sizes are fixed, but 'batch'"),
        ("param p: float32[0]\n    output y = x", "3:22 a parameter's size must be a positive integer, got 0"),
        ("param p: int64[4]\n    output y = x", "3:14 parameters are float32"),
        ("param p: float32[4] = xavier\n    output y = x", "3:27 a parameter starts as one of zeros, ones"),
        ("param p: float32[4] = normal(sd=1)\n    output y = x", "normal has no argument 'sd'"),
        # torch's trunc_normal_ divides by std, and uniform_ refuses a > b: internal errors at build before
        ("param p: float32[4] = trunc_normal(std=0)\n    output y = x", "3:27 trunc_normal: 'std' must be above 0.0"),
        ("param p: float32[4] = uniform(a=1, b=0)\n    output y = x", "3:27 uniform: 'a' (1) is above 'b' (0)"),
        ("param p: float32[4] = trunc_normal(a=1, b=-1)\n    output y = x", "trunc_normal: 'a' (1) is above 'b' (-1)"),
        ("param x: float32[4]\n    output y = x", "3:5 'x' is already defined"),
        ("param p: float32[n]\n    output y = x", "3:22 unknown name 'n'"),
        ("output y = x -> (for i in 3 { Linear(4) })", "a loop walks a list, a tuple or a range, got 3"),
        ("output y = x -> (for a, b in [1, 2] { Linear(4) })", "cannot unpack 1 into 2 names"),
        ("output y = x -> (for x in [1] { Linear(4) })", "'x' is already defined; a loop needs new names"),
        ("output y = x -> (for i in range(2000) { Linear(4) })", "range gives 2,000 numbers"),
        ("output y = x -> (for i in range(1, 2, 0) { Linear(4) })", "range's step cannot be zero"),
        ("output y = x -> g: (for i in range(0) { Linear(4) })", "this group has no layers"),
        ("output y = x -> (if 1 { Linear(4) })", "an if condition must be true or false, got 1"),
        ("output y = x * (2 if 3 else 1)", "a condition must be true or false, got 3"),
    ],
)
def test_layout_errors_are_located(write_spec, body, fragment):
    path = write_spec(f"model m {{\n    input x: float32[batch, 4]\n    {body}\n}}\n")
    errors = errors_of(path)
    assert any(fragment in e for e in errors), errors


def test_loops_and_ifs_outside_groups_chain_their_stages(write_spec):
    program = check_file(
        write_spec("""
        const WIDTHS = [8, 16]
        model m {
            input x: float32[batch, 4]
            h = x -> for w in WIDTHS { Linear(w) -> ReLU } -> if false { Linear(3) }
            output y = h * (0.5 if WIDTHS[1] == 16 else 2.0)
        }
    """)
    )
    module = program.model("m")
    assert [s.attr for s in module.submodules] == ["fc1", "fc2"]
    assert str(module.outputs[0].type) == "float32[batch, 16]"


def test_a_repeat_of_a_group_numbers_each_copy():
    source = "model m {\n    input x: float32[b, 4]\n    output y = x -> blocks: repeat 2 (Linear(4) -> ReLU)\n}\n"
    program = _check_source(source)
    (blocks,) = program.model("m").submodules
    assert [c.kind for c in blocks.children] == ["sequential", "sequential"]
    assert [[g.op for g in c.children] for c in blocks.children] == [["Linear", "ReLU"]] * 2


def _check_source(source: str):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t.model"
        path.write_text(source)
        return check_file(path)


def test_the_formatter_keeps_the_new_constructs_and_breaks_long_groups():
    formatted = format_source(MOBILENET_LIKE.lstrip("\n"), "t.model")
    assert parse(formatted, "t.model").items  # re-parses
    assert format_source(formatted, "t.model") == formatted  # and is stable
    assert "        -> for t, c, n, s in SETTINGS {\n" in formatted
    assert "InvertedResidual(c, stride=(s if i == 0 else 1), expand=t)" in formatted
    assert all(len(line) <= 100 for line in formatted.splitlines())
    param = format_source("model m {\n  input x: float32[b, 2]\n  param p:float32[2]=normal( std=0.5 )\n"
                          "  output y = x + p\n}\n", "t.model")  # fmt: skip
    assert "    param p: float32[2] = normal(std=0.5)\n" in param


def test_keywords_param_for_and_in_are_refused_as_names(write_spec):
    with pytest.raises(DslcError):
        check_file(write_spec("model m {\n    input x: float32[b, 2]\n    for = x\n    output y = for\n}\n"))


def test_sizes_computed_through_hundreds_of_layers_stay_cheap(write_spec, tmp_path):
    """Each 1x1 convolution computes its output size from the block's input size; past a depth the
    trace is dropped (the fuzzer's 1,000-convolution block overflowed the recursion limit)."""
    path = write_spec("""
        block Deep(width: int) {
            input x: float32[batch, channels, height, height]
            output y = x -> for i in range(500) { Conv2d(width, kernel=1) }
        }
        model m {
            input image: float32[batch, 3, 8, 8]
            output y = image -> a: Deep(2) -> b: Deep(2)
        }
    """)
    program = check_file(path)
    assert str(program.model("m").outputs[0].type) == "float32[batch, 2, 8, 8]"
    build(path, tmp_path / "out", export_onnx=False)  # the generated code compiles
