"""Tensor functions of dslc/layers/tensor_ops.py: shape rules and located refusals, the generated PyTorch equal to
the torch functions themselves, and native ONNX graphs that onnxruntime runs as PyTorch does."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch.nn import functional

from dslc.build import build, load_generated
from dslc.checker import check_file
from dslc.errors import DslcError

HEADER = """model m {
    input x: float32[batch, time, 6]
    input mask: bool[batch, 1, 6]
    input ids: int64[batch, time]
"""
TENSOR_OPS = ("cumsum", "cumprod", "flip", "roll", "pad", "gather", "one_hot", "masked_fill", "topk")


def _spec(write_spec, body: str):
    return write_spec(HEADER + "".join(f"    {line}\n" for line in body.split("\n")) + "}\n")


@pytest.mark.parametrize(
    ("body", "types"),
    [
        ("output y = cumsum(x, dim=time)", ["float32[batch, time, 6]"]),
        ("output y = cumsum(mask, dim=-1)", ["int64[batch, 1, 6]"]),
        ("output y = cumprod(ids, dim=1)", ["int64[batch, time]"]),
        ("output y = flip(x, 1, 2)", ["float32[batch, time, 6]"]),
        ("output y = roll(x, (1, -2), dims=(time, 2))", ["float32[batch, time, 6]"]),
        ("output y = pad(x, (1, 2, 0, 3))", ["float32[batch, time + 3, 9]"]),
        ('output y = pad(x, (2, 2), mode="reflect")', ["float32[batch, time, 10]"]),
        ("v, i = topk(x, 2)\noutput y = gather(x, i, dim=-1)", ["float32[batch, time, 2]"]),
        ("output y = one_hot(ids, 5)", ["int64[batch, time, 5]"]),
        ("output y = float(one_hot(ids, 5))", ["float32[batch, time, 5]"]),
        ("output y = masked_fill(x, mask, -1e9)", ["float32[batch, time, 6]"]),
        (
            "v, i = topk(x, 3, largest=false)\noutput a = v\noutput b = i",
            ["float32[batch, time, 3]", "int64[batch, time, 3]"],
        ),
        ("v, i = topk(ids, 1, dim=time)\noutput a = v\noutput b = i", ["int64[batch, 1]", "int64[batch, 1]"]),
    ],
)
def test_shape_rules(write_spec, body, types):
    module = check_file(_spec(write_spec, body)).model("m")
    assert [str(port.type) for port in module.outputs] == types


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("output y = cumsum(x, dim=3)", "cumsum: dimension 3 is out of range for [batch, time, 6]"),
        ("output y = cumprod(x, dim=-4)", "cumprod: dimension -4 is out of range"),
        ("output y = flip(x, 1, -2)", "flip: a dimension is given twice in (1, -2)"),
        ("output y = roll(x, (1, 2), dims=1)", "roll: 2 shift(s) for 1 dimension(s)"),
        ("output y = pad(x, (1, 1, 1))", "pad takes (before, after) pairs, last dimension first"),
        ("output y = pad(x, (1, -1))", "pad: sizes must be non-negative"),
        ('output y = pad(x, (6, 0), mode="reflect")', "dimension 2 of [batch, time, 6] is 6 and the padding 6"),
        (
            'output y = pad(ids, (1, 1, 1, 1), mode="reflect")',
            "reflect padding of 2 dimension(s) needs a tensor of rank",
        ),
        ('output y = pad(x, (1, 1), mode="replicate", value=1)', "a value fills constant padding only"),
        ("output y = pad(ids, (1, 1), value=0.5)", "the tensor is int64, so the value must be a whole number"),
        ("output y = gather(x, ids, dim=1)", "gather: the index must have the input's rank"),
        ("output y = gather(x, x, dim=1)", "gather: the index must be int64, got float32"),
        ("v, i = topk(x, 2)\noutput y = gather(x[:, 0:2], i, dim=-1)", "dimension 1 is time in the index"),
        ("output y = one_hot(x, 3)", "one_hot takes int64 class ids, got float32"),
        ("output y = one_hot(ids, 0)", "num_classes must be a positive integer"),
        ("output y = masked_fill(x, ids, 0.0)", "masked_fill: the mask must be bool, got int64"),
        ("output y = masked_fill(x[:, 0], mask, 0.0)", "the mask [batch, 1, 6] does not broadcast to the input"),
        ("output y = masked_fill(mask, mask, 2)", "the tensor is bool, so the value must be 0 or 1"),
        ("v, i = topk(x, 7)\noutput y = v", "topk: k is 7, but dimension 2 of [batch, time, 6] has only 6 elements"),
        ("v, i = topk(mask, 1)\noutput y = v", "topk: bool tensors have no order to rank"),
    ],
)
def test_refusals_are_located(write_spec, body, message):
    with pytest.raises(DslcError) as info:
        check_file(_spec(write_spec, body))
    (diagnostic,) = info.value.diagnostics
    assert message in diagnostic.message
    loc = diagnostic.loc
    line = (HEADER + "".join(f"    {line}\n" for line in body.split("\n"))).splitlines()[loc.line - 1]
    assert line[loc.col - 1 : loc.end_col - 1].startswith(TENSOR_OPS)  # the error points at the refused call


# ---------------------------------------------------------------- PyTorch parity

PARITY_SPEC = """model m {
    input x: float32[batch, time, 6]
    input mask: bool[batch, 1, 6]
    input ids: int64[batch, time]
    output running_sum = cumsum(x, dim=time)
    output running_product = cumprod(x, dim=-1)
    output id_product = cumprod(ids, dim=1)
    output flipped = flip(x, 1, 2)
    output rolled = roll(x, (1, -2), dims=(time, 2))
    output padded = pad(x, (1, 2, 0, 3), value=-1.5)
    output reflected = pad(x, (2, 1), mode="reflect")
    output replicated = pad(x, (0, 2), mode="replicate")
    top, top_ids = topk(x, 3, largest=false)
    output values = top
    output indices = top_ids
    output gathered = gather(x, top_ids, dim=-1)
    output codes = one_hot(ids, 5)
    output filled = masked_fill(x, mask, -1e9)
}
"""

PARITY = {
    "running_sum": lambda x, mask, ids: torch.cumsum(x, dim=1),
    "running_product": lambda x, mask, ids: torch.cumprod(x, dim=-1),
    "id_product": lambda x, mask, ids: torch.cumprod(ids, dim=1),
    "flipped": lambda x, mask, ids: torch.flip(x, dims=(1, 2)),
    "rolled": lambda x, mask, ids: torch.roll(x, shifts=(1, -2), dims=(1, 2)),
    "padded": lambda x, mask, ids: functional.pad(x, (1, 2, 0, 3), value=-1.5),
    "reflected": lambda x, mask, ids: functional.pad(x, (2, 1), mode="reflect"),
    "replicated": lambda x, mask, ids: functional.pad(x, (0, 2), mode="replicate"),
    "values": lambda x, mask, ids: torch.topk(x, 3, largest=False).values,
    "indices": lambda x, mask, ids: torch.topk(x, 3, largest=False).indices,
    "gathered": lambda x, mask, ids: torch.gather(x, -1, torch.topk(x, 3, largest=False).indices),
    "codes": lambda x, mask, ids: functional.one_hot(ids, 5),
    "filled": lambda x, mask, ids: x.masked_fill(mask, -1e9),
}


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    folder = tmp_path_factory.mktemp("parity")
    (folder / "ops.model").write_text(PARITY_SPEC)
    result = build(folder / "ops.model", folder / "out", export_onnx=False)
    module = result.program.model("m")
    net = load_generated(result.python_path).MODELS["m"]().eval()
    torch.manual_seed(0)
    inputs = (torch.randn(2, 5, 6), torch.rand(2, 1, 6) > 0.5, torch.randint(0, 5, (2, 5)))
    with torch.no_grad():
        outputs = dict(zip((p.name for p in module.outputs), net(*inputs)))
    return result.python_path, inputs, outputs


@pytest.mark.parametrize("name", sorted(PARITY))
def test_generated_code_equals_the_torch_function(parity, name):
    _, inputs, outputs = parity
    want = PARITY[name](*inputs)
    assert outputs[name].dtype == want.dtype
    assert torch.equal(outputs[name], want)


def test_generated_code_reads_as_written_by_hand(parity):
    path, _, _ = parity
    text = path.read_text()
    for line in (
        "running_sum = torch.cumsum(x, dim=1)",
        "flipped = x.flip(1, -1)",
        "rolled = torch.roll(x, (1, -2), dims=(1, -1))",
        'reflected = F.pad(x, (2, 1), mode="reflect")',
        "top, top_ids = torch.topk(x, 3, largest=False)",
        "gathered = torch.gather(x, -1, top_ids)",
        "codes = F.one_hot(ids, 5)",
        "filled = x.masked_fill(mask, -1000000000.0)",
    ):
        assert line in text
    for check in (["check", "--select", "E,F,W,I", "--ignore", "E501"], ["format", "--check", "--line-length", "200"]):
        result = subprocess.run([sys.executable, "-m", "ruff", *check, str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- ONNX


@pytest.mark.parametrize(
    ("body", "onnx_op"),
    [
        ("output y = cumsum(x, dim=time)\noutput z = cumsum(mask, dim=-1)", "CumSum"),
        ("output y = cumprod(x, dim=time)\noutput z = cumprod(ids, dim=-1)", "Scan"),
        ("output y = flip(x, dims=(time, 2))", "Slice"),
        ("output y = roll(x, (3, -2), dims=(time, 2))", "Gather"),
        ('output y = pad(x, (1, 2, 0, 3), value=-1.5)\noutput z = pad(x, (2, 2), mode="reflect")', "Pad"),
        ('output y = pad(ids, (1, 1), mode="replicate")', "Pad"),
        ("v, i = topk(x, 2)\noutput y = gather(x, i, dim=-1)", "GatherElements"),
        ("output y = float(one_hot(ids, 3))", "OneHot"),
        ("output y = masked_fill(x, mask, -1e9)", "Where"),
        ("v, i = topk(x, 4, dim=-1, largest=false)\noutput a = v\noutput b = i", "TopK"),
    ],
)
def test_onnx_lowering_verifies_against_pytorch(write_spec, tmp_path, body, onnx_op):
    result = build(_spec(write_spec, body), tmp_path / "out")
    (report,) = result.models
    assert report.verified
    graph = onnx.load(tmp_path / "out" / report.onnx).graph
    assert onnx_op in {node.op_type for node in graph.node}


def _session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_onnx_cumprod_is_exact_through_zeros_and_signs(write_spec, tmp_path):
    """exp(cumsum(log|x|)) would lose both: the Scan multiplies as PyTorch does."""
    spec = write_spec(
        "model m {\n    input x: float32[batch, time]\n    input n: int64[batch, time]\n"
        "    output y = cumprod(x, dim=time)\n    output z = cumprod(n, dim=-1)\n}\n"
    )
    result = build(spec, tmp_path / "out")
    x = torch.tensor([[-2.0, 0.5, 0.0, -3.0, 4.0], [1.5, -1.0, -1.0, 2.0, -0.25]])
    n = torch.tensor([[-3, 2, 0, 5, 7], [2**20, 2**20, -3, 1, 1]])
    y, z = _session(tmp_path / "out" / result.models[0].onnx).run(None, {"x": x.numpy(), "n": n.numpy()})
    np.testing.assert_array_equal(y, torch.cumprod(x, dim=1).numpy())
    np.testing.assert_array_equal(z, torch.cumprod(n, dim=-1).numpy())


def test_onnx_roll_and_flip_follow_the_run_time_length(write_spec, tmp_path):
    spec = write_spec(
        "model m {\n    input x: float32[batch, time]\n"
        "    output r = roll(x, -7, dims=time)\n    output f = flip(x, dims=time)\n}\n"
    )
    result = build(spec, tmp_path / "out")
    session = _session(tmp_path / "out" / result.models[0].onnx)
    for length in (1, 3, 7, 10):
        x = torch.randn(2, length)
        r, f = session.run(None, {"x": x.numpy()})
        np.testing.assert_array_equal(r, torch.roll(x, -7, dims=1).numpy())
        np.testing.assert_array_equal(f, torch.flip(x, dims=(1,)).numpy())


DTYPES_SPEC = """model m {
    input h: float16[batch, 6]
    input b: bool[batch, 6]
    input n: int32[batch, 6]
    output filled_half = masked_fill(h, b, -60000)
    output padded_mask = pad(b, (1, 1))
    output set_mask = masked_fill(b, flip(b, -1), 1)
    output cleared_mask = masked_fill(b, flip(b, -1), 0)
    output sums = cumsum(n, dim=-1)
    output products = cumprod(b, dim=-1)
    output rolled = roll(n, 2, dims=-1)
}
"""


def test_onnx_lowering_of_bool_int32_and_float16_tensors(tmp_path):
    """Integers and bools accumulate in int64 (a Cast first); a bool masked_fill is Or / And (no bool Where in
    onnxruntime)."""
    spec = tmp_path / "dtypes.model"
    spec.write_text(DTYPES_SPEC)
    result = build(spec, tmp_path / "out")
    module = result.program.model("m")
    assert [str(p.type.dtype) for p in module.outputs] == ["float16", "bool", "bool", "bool", "int64", "int64", "int32"]
    assert result.models[0].verified


def test_fill_values_must_fit_the_dtype(write_spec):
    spec = write_spec("model m {\n    input h: float16[batch, 6]\n    output y = masked_fill(h, h > 0.0, -1e9)\n}\n")
    with pytest.raises(DslcError) as info:
        check_file(spec)
    assert "masked_fill: -1000000000.0 does not fit in float16 (-65504 to 65504)" in info.value.render()
