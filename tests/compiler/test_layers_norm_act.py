"""Activations (ReLU6, Hardswish, Hardsigmoid, Mish, Softplus, SiLU, ELU, LeakyReLU), PReLU and the normalisations
(GroupNorm, InstanceNorm1d/2d, LayerNorm without bias, RMSNorm): shape rules and their refusals, generated code equal to
torch.nn's modules with the same weights, and ONNX graphs that onnxruntime runs as PyTorch does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from dslc.build import build, load_generated, write_python
from dslc.checker import check_file
from dslc.errors import DslcError
from dslc.export_onnx import state_arrays
from dslc.lower_onnx import lower


@dataclass(frozen=True)
class Case:
    layer: str  # as the spec writes it
    input: str  # the spec's input type
    shape: tuple[int, ...]  # a concrete input of that type
    reference: Callable[[], nn.Module]
    onnx_op: str  # a node the lowering writes

    def __str__(self) -> str:
        return self.layer


CASES = [
    Case("ReLU6", "float32[batch, 4, 5]", (3, 4, 5), nn.ReLU6, "Clip"),
    Case("Hardswish", "float32[batch, 4, 5]", (3, 4, 5), nn.Hardswish, "HardSwish"),
    Case("Hardsigmoid", "float32[batch, 4, 5]", (3, 4, 5), nn.Hardsigmoid, "HardSigmoid"),
    Case("Mish", "float32[batch, 4, 5]", (3, 4, 5), nn.Mish, "Mish"),
    Case("SiLU", "float32[batch, 4, 5]", (3, 4, 5), nn.SiLU, "Sigmoid"),
    Case("ELU(alpha=0.5)", "float32[batch, 4, 5]", (3, 4, 5), lambda: nn.ELU(alpha=0.5), "Elu"),
    Case("LeakyReLU(0.2)", "float32[batch, 4, 5]", (3, 4, 5), lambda: nn.LeakyReLU(0.2), "LeakyRelu"),
    Case("Softplus", "float32[batch, 4, 5]", (3, 4, 5), nn.Softplus, "Softplus"),
    Case("Softplus(beta=0.5)", "float32[batch, 4, 5]", (3, 4, 5), lambda: nn.Softplus(beta=0.5), "Div"),
    Case(
        "Softplus(beta=2.0, threshold=1.0)",
        "float32[batch, 4, 5]",
        (3, 4, 5),
        lambda: nn.Softplus(beta=2.0, threshold=1.0),
        "Where",
    ),
    Case("PReLU", "float32[batch, 4, 3, 3]", (2, 4, 3, 3), nn.PReLU, "PRelu"),
    Case("PReLU(4, init=0.1)", "float32[batch, 4, 5]", (3, 4, 5), lambda: nn.PReLU(4, init=0.1), "PRelu"),
    Case("GroupNorm(2)", "float32[batch, 4, h, w]", (2, 4, 3, 5), lambda: nn.GroupNorm(2, 4), "InstanceNormalization"),
    Case(
        "GroupNorm(4, eps=1e-3, affine=false)",
        "float32[batch, 4, 6]",
        (2, 4, 6),
        lambda: nn.GroupNorm(4, 4, eps=1e-3, affine=False),
        "InstanceNormalization",
    ),
    Case("InstanceNorm1d", "float32[batch, 4, time]", (2, 4, 7), lambda: nn.InstanceNorm1d(4), "InstanceNormalization"),
    Case(
        "InstanceNorm2d(affine=true, eps=1e-3)",
        "float32[batch, 4, 5, 5]",
        (2, 4, 5, 5),
        lambda: nn.InstanceNorm2d(4, affine=True, eps=1e-3),
        "InstanceNormalization",
    ),
    Case(
        "InstanceNorm2d(affine=true, track_running_stats=true)",
        "float32[batch, 4, 5, 5]",
        (2, 4, 5, 5),
        lambda: nn.InstanceNorm2d(4, affine=True, track_running_stats=True),
        "BatchNormalization",
    ),
    Case("LayerNorm", "float32[batch, 5, 6]", (3, 5, 6), lambda: nn.LayerNorm(6), "LayerNormalization"),
    Case(
        "LayerNorm(bias=false)",
        "float32[batch, 5, 6]",
        (3, 5, 6),
        lambda: nn.LayerNorm(6, bias=False),
        "LayerNormalization",
    ),
    Case("RMSNorm", "float32[batch, 5, 6]", (3, 5, 6), lambda: nn.RMSNorm(6), "RMSNormalization"),
    Case(
        "RMSNorm(dims=2, eps=1e-6)",
        "float32[batch, 5, 6]",
        (3, 5, 6),
        lambda: nn.RMSNorm((5, 6), eps=1e-6),
        "RMSNormalization",
    ),
    Case(
        "RMSNorm(elementwise_affine=false)",
        "float32[batch, 5, 6]",
        (3, 5, 6),
        lambda: nn.RMSNorm(6, elementwise_affine=False),
        "RMSNormalization",
    ),
]


CASE = {case.layer: case for case in CASES}


def _spec(case: Case) -> str:
    """The layer twice: named (its nn.Module) and unnamed (inline code for an activation, a numbered module else)."""
    return (
        f"model m {{\n    input x: {case.input}\n    output named = x -> layer: {case.layer}\n"
        f"    output inline = x -> {case.layer}\n}}\n"
    )


def _randomize(module: nn.Module) -> nn.Module:
    """Weights and running statistics away from their initial ones and zeros, so that each one counts."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                fill = torch.rand_like(tensor) + 0.5 if name.endswith("running_var") else torch.randn_like(tensor)
                tensor.copy_(fill)
    return module


@pytest.mark.parametrize("case", CASES, ids=str)
def test_shape_rule_keeps_the_type(write_spec, case):
    module = check_file(write_spec(_spec(case))).model("m")
    assert [str(p.type) for p in module.outputs] == [case.input, case.input]
    assert module.param_count == 2 * sum(p.numel() for p in case.reference().parameters())


@pytest.mark.parametrize(
    ("input", "layer", "message"),
    [
        ("int64[batch, 4]", "ReLU6", "ReLU6 expects a floating-point tensor, got int64"),
        ("int64[batch, 4]", "Hardswish", "Hardswish expects a floating-point tensor"),
        ("int64[batch, 4]", "Hardsigmoid", "Hardsigmoid expects a floating-point tensor"),
        ("int64[batch, 4]", "Mish", "Mish expects a floating-point tensor"),
        ("int64[batch, 4]", "SiLU", "SiLU expects a floating-point tensor"),
        ("float32[batch, 4]", "Softplus(beta=0.0)", "Softplus: beta must be positive, got 0.0"),
        ("float32[batch, 4, 5]", "PReLU(3)", "PReLU: num_parameters=3 must be 1 or the channel count 4"),
        ("float32[batch, 4, 5]", "GroupNorm(3)", "GroupNorm: 4 channels do not split into 3 groups"),
        ("float32[batch, 4]", "GroupNorm(4)", "GroupNorm(4): each group of [batch, 4] holds one value per sample"),
        ("float32[batch, c, 5]", "GroupNorm(2)", "GroupNorm needs a fixed channel count (dimension 1)"),
        (
            "float32[batch, 4, 5, 5]",
            "InstanceNorm1d",
            "InstanceNorm1d expects [batch, C, L], got [batch, 4, 5, 5]",
        ),
        ("float32[batch, 4, 5]", "InstanceNorm2d", "InstanceNorm2d expects [batch, C, H, W]"),
        ("float32[batch, 4, 1, 1]", "InstanceNorm2d", "InstanceNorm2d normalises over positions"),
        ("float32[batch, 6]", "LayerNorm(dims=3, bias=false)", "LayerNorm: dims=3 is out of range"),
        (
            "float32[batch, time]",
            "RMSNorm",
            "RMSNorm needs a fixed normalised size, but it is the symbolic size 'time'",
        ),
    ],
)
def test_refusals_point_at_the_layer(write_spec, input, layer, message):
    text = f"model m {{\n    input x: {input}\n    output y = x -> {layer}\n}}\n"
    with pytest.raises(DslcError) as info:
        check_file(write_spec(text))
    (diagnostic,) = info.value.diagnostics
    assert message in diagnostic.message
    assert (diagnostic.loc.line, diagnostic.loc.col) == (3, text.splitlines()[2].index(layer) + 1)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_generated_code_matches_torch_nn(tmp_path, write_spec, case):
    write_python(write_spec(_spec(case)), tmp_path / "t.py")
    net = load_generated(tmp_path / "t.py").MODELS["m"]().eval()
    reference = _randomize(case.reference()).eval()
    assert type(net.layer) is type(reference)
    for module in net.children():  # the named layer and, for a stateful op, the numbered one
        module.load_state_dict(reference.state_dict(), strict=True)  # PyTorch's keys and shapes
    x = torch.randn(*case.shape)
    want = reference(x)
    for got in net(x):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_onnx_builds_and_matches_pytorch(tmp_path, write_spec, case):
    spec = write_spec(_spec(case))
    write_python(spec, tmp_path / "t.py")
    weights = _randomize(load_generated(tmp_path / "t.py").MODELS["m"]()).state_dict()
    result = build(spec, tmp_path / "out", state_dicts={"m": weights})  # verifies against PyTorch, or raises
    (report,) = result.models
    assert report.verified and report.max_abs_diff < 1e-4
    graph = onnx.load(tmp_path / "out" / report.onnx).graph
    assert case.onnx_op in {n.op_type for n in graph.node}
    assert "GroupNormalization" not in {n.op_type for n in graph.node}  # onnx infers no type for it (onnx#7157)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_rmsnorm_without_eps_lowers_with_float32_epsilon_as_torch(tmp_path, write_spec):
    result = build(write_spec(_spec(CASE["RMSNorm"])), tmp_path / "out", export_onnx=False)
    net = load_generated(result.python_path).MODELS["m"]().eval()
    session = _session(lower(result.program, result.program.exported[0], state_arrays(net)))
    x = torch.full((2, 5, 6), 1e-4)  # mean square 1e-8: an eps of 1e-5 or 1e-6 would dominate it
    want = nn.RMSNorm(6)(x).detach().numpy()
    for got in session.run(None, {"x": x.numpy()}):
        np.testing.assert_allclose(got, want, rtol=1e-5)


def test_softplus_below_its_threshold_and_in_its_linear_part(tmp_path, write_spec):
    result = build(write_spec(_spec(CASE["Softplus(beta=2.0, threshold=1.0)"])), tmp_path / "out", export_onnx=False)
    net = load_generated(result.python_path).MODELS["m"]().eval()
    session = _session(lower(result.program, result.program.exported[0], state_arrays(net)))
    x = torch.tensor([-30.0, -1.0, 0.0, 0.4, 0.49, 0.51, 0.6, 3.0, 50.0, 1e3] * 2).reshape(1, 4, 5)  # linear above 0.5
    want = nn.Softplus(beta=2.0, threshold=1.0)(x).numpy()
    for got in session.run(None, {"x": x.numpy()}):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


GROUPED = """
model m {
    input x: float32[batch, 3, 8, 8]
    output y = x -> features: (Conv2d(8, kernel=3) -> ReLU6 -> PReLU(8) -> GroupNorm(4)) -> act: ReLU6
}
"""


def test_named_and_grouped_uses_have_pytorchs_modules_and_keys(tmp_path, write_spec):
    result = build(write_spec(GROUPED), tmp_path / "out")  # exported and verified
    assert result.models[0].verified
    net = load_generated(result.python_path).MODELS["m"]().eval()
    features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU6(), nn.PReLU(8), nn.GroupNorm(4, 8))
    assert isinstance(net.act, nn.ReLU6)
    assert [type(m) for m in net.features] == [type(m) for m in features]
    assert list(net.state_dict()) == [f"features.{k}" for k in features.state_dict()]
    features.load_state_dict(_randomize(net).features.state_dict(), strict=True)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(net(x), nn.functional.relu6(features(x)), rtol=0, atol=0)
