"""The convolution, pooling, padding and resizing layers of dslc/layers/conv.py: each op's shape rule (and a
located refusal), its generated PyTorch against torch.nn's own layer with the same weights, and its ONNX lowering
built and run in onnxruntime against that layer."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.nn import functional

from dslc.build import build, load_generated
from dslc.checker import check_file
from dslc.errors import DslcError
from dslc.export_onnx import state_arrays
from dslc.layers import REGISTRY
from dslc.layers.base import ShapeError
from dslc.layers.conv import pool_out
from dslc.lower_onnx import IR_VERSION, OPSET, lower
from dslc.onnx_graph import Graph, Value
from dslc.params import bind
from dslc.shapes import TensorType


@dataclass(frozen=True)
class Case:
    id: str
    input: str  # the input's type
    layer: str  # what the output computes from `x`
    output: str  # the output type the checker infers
    reference: Callable[[], tuple[nn.Module, Callable[[nn.Module, torch.Tensor], torch.Tensor]]]
    shape: tuple[int, ...]  # a concrete input for the comparisons

    def spec(self) -> str:
        return f"model m {{\n    input x: {self.input}\n    output y = {self.layer}\n}}\n"


def _plain(layer: nn.Module):
    return lambda: (layer, lambda m, x: m(x))


def _causal():
    conv = nn.Conv1d(4, 6, 3, dilation=2)
    return conv, lambda m, x: m(functional.pad(x, (4, 0)))


CASES = [
    Case(
        "conv3d",
        "float32[batch, 2, 5, 6, 7]",
        "x -> Conv3d(4, 3, stride=2, padding=1)",
        "float32[batch, 4, 3, 3, 4]",
        _plain(nn.Conv3d(2, 4, 3, stride=2, padding=1)),
        (2, 2, 5, 6, 7),
    ),
    Case(
        "conv_transpose1d",
        "float32[batch, 3, time]",
        "x -> ConvTranspose1d(4, 4, stride=2, padding=1, output_padding=1)",
        "float32[batch, 4, 2*time + 1]",
        _plain(nn.ConvTranspose1d(3, 4, 4, stride=2, padding=1, output_padding=1)),
        (2, 3, 9),
    ),
    Case(
        "conv_transpose3d",
        "float32[batch, 2, 3, 4, 5]",
        "x -> ConvTranspose3d(3, (2, 3, 3), stride=2)",
        "float32[batch, 3, 6, 9, 11]",
        _plain(nn.ConvTranspose3d(2, 3, (2, 3, 3), stride=2)),
        (2, 2, 3, 4, 5),
    ),
    Case(
        "conv1d_causal",
        "float32[batch, 4, time]",
        'x -> Conv1d(6, 3, dilation=2, padding="causal")',
        "float32[batch, 6, time]",
        _causal,
        (2, 4, 11),
    ),
    # floor((96 - 3) / 2) + 1 = 47; ceil_mode rounds up to 48
    Case(
        "maxpool2d_ceil",
        "float32[batch, 3, 96, 96]",
        "x -> MaxPool2d(3, stride=2, ceil_mode=true)",
        "float32[batch, 3, 48, 48]",
        _plain(nn.MaxPool2d(3, stride=2, ceil_mode=True)),
        (2, 3, 96, 96),
    ),
    # 5 -> ceil(5 / 3) + 1 = 3 windows, but the third would start at 6 >= 5 + 1: PyTorch drops it
    Case(
        "maxpool1d_ceil_last_window",
        "float32[batch, 2, 5]",
        "x -> MaxPool1d(2, stride=3, padding=1, ceil_mode=true)",
        "float32[batch, 2, 2]",
        _plain(nn.MaxPool1d(2, stride=3, padding=1, ceil_mode=True)),
        (2, 2, 5),
    ),
    Case(
        "avgpool1d_ceil",
        "float32[batch, 2, 8]",
        "x -> AvgPool1d(3, stride=2, padding=1, ceil_mode=true)",
        "float32[batch, 2, 5]",
        _plain(nn.AvgPool1d(3, stride=2, padding=1, ceil_mode=True)),
        (2, 2, 8),
    ),
    Case(
        "avgpool2d_ceil_without_pad",
        "float32[batch, 2, 9, 10]",
        "x -> AvgPool2d(4, stride=3, padding=2, ceil_mode=true, count_include_pad=false)",
        "float32[batch, 2, 4, 4]",
        _plain(nn.AvgPool2d(4, stride=3, padding=2, ceil_mode=True, count_include_pad=False)),
        (2, 2, 9, 10),
    ),
    # h: ceil_mode's last window runs past h (not counted); 5: its third window would start in the padding (dropped)
    Case(
        "avgpool2d_ceil_symbolic_and_dropped",
        "float32[batch, 2, h, 5]",
        "x -> AvgPool2d((3, 2), stride=(2, 3), padding=(0, 1), ceil_mode=true)",
        "float32[batch, 2, ((h - 2) // 2) + 1, 2]",
        _plain(nn.AvgPool2d((3, 2), stride=(2, 3), padding=(0, 1), ceil_mode=True)),
        (2, 2, 8, 5),
    ),
    Case(
        "maxpool2d_ceil_symbolic",
        "float32[batch, 3, h, w]",
        "x -> MaxPool2d(3, stride=2, ceil_mode=true)",
        "float32[batch, 3, ((h - 2) // 2) + 1, ((w - 2) // 2) + 1]",
        _plain(nn.MaxPool2d(3, stride=2, ceil_mode=True)),
        (2, 3, 13, 10),
    ),
    Case(
        "adaptive_maxpool2d_uneven",
        "float32[batch, 3, 10, 7]",
        "x -> AdaptiveMaxPool2d((3, 4))",
        "float32[batch, 3, 3, 4]",
        _plain(nn.AdaptiveMaxPool2d((3, 4))),
        (2, 3, 10, 7),
    ),
    Case(
        "adaptive_maxpool2d_even",
        "float32[batch, 3, 12, 8]",
        "x -> AdaptiveMaxPool2d(4)",
        "float32[batch, 3, 4, 4]",
        _plain(nn.AdaptiveMaxPool2d(4)),
        (2, 3, 12, 8),
    ),
    Case(  # bins computed from the sizes at run time
        "adaptive_maxpool2d_symbolic",
        "float32[batch, 3, h, w]",
        "x -> AdaptiveMaxPool2d((3, 4))",
        "float32[batch, 3, 3, 4]",
        _plain(nn.AdaptiveMaxPool2d((3, 4))),
        (2, 3, 10, 2),  # w smaller than its 4 bins: they overlap, as PyTorch's do
    ),
    Case(
        "adaptive_avgpool2d_symbolic_and_fixed",
        "float32[batch, 3, h, 9]",
        "x -> AdaptiveAvgPool2d((7, 4))",
        "float32[batch, 3, 7, 4]",
        _plain(nn.AdaptiveAvgPool2d((7, 4))),
        (2, 3, 11, 9),
    ),
    Case(
        "adaptive_avgpool1d_symbolic",
        "float32[batch, 3, time]",
        "x -> AdaptiveAvgPool1d(5)",
        "float32[batch, 3, 5]",
        _plain(nn.AdaptiveAvgPool1d(5)),
        (2, 3, 13),
    ),
    Case(
        "adaptive_maxpool1d_symbolic",
        "float32[batch, 3, time]",
        "x -> AdaptiveMaxPool1d(3)",
        "float32[batch, 3, 3]",
        _plain(nn.AdaptiveMaxPool1d(3)),
        (2, 3, 8),
    ),
    Case(
        "adaptive_maxpool1d_global",
        "float32[batch, 3, time]",
        "x -> AdaptiveMaxPool1d(1)",
        "float32[batch, 3, 1]",
        _plain(nn.AdaptiveMaxPool1d(1)),
        (2, 3, 9),
    ),
    Case(
        "zeropad1d",
        "float32[batch, 3, time]",
        "x -> ZeroPad1d(2)",
        "float32[batch, 3, time + 4]",
        _plain(nn.ZeroPad1d(2)),
        (2, 3, 6),
    ),
    Case(
        "zeropad2d",
        "float32[batch, 3, h, w]",
        "x -> ZeroPad2d((1, 2, 0, 3))",
        "float32[batch, 3, h + 3, w + 3]",
        _plain(nn.ZeroPad2d((1, 2, 0, 3))),
        (2, 3, 5, 4),
    ),
    Case(
        "constantpad1d",
        "float32[batch, 3, 6]",
        "x -> ConstantPad1d((2, 1), 0.5)",
        "float32[batch, 3, 9]",
        _plain(nn.ConstantPad1d((2, 1), 0.5)),
        (2, 3, 6),
    ),
    Case(
        "constantpad2d",
        "float32[3, 5, 4]",
        "x -> ConstantPad2d(1, -1.5)",
        "float32[3, 7, 6]",
        _plain(nn.ConstantPad2d(1, -1.5)),
        (3, 5, 4),
    ),
    Case(
        "reflectionpad1d",
        "float32[batch, 2, 5]",
        "x -> ReflectionPad1d((4, 1))",
        "float32[batch, 2, 10]",
        _plain(nn.ReflectionPad1d((4, 1))),
        (2, 2, 5),
    ),
    Case(
        "reflectionpad2d",
        "float32[batch, 2, h, w]",
        "x -> ReflectionPad2d((1, 2, 2, 0))",
        "float32[batch, 2, h + 2, w + 3]",
        _plain(nn.ReflectionPad2d((1, 2, 2, 0))),
        (2, 2, 5, 6),
    ),
    Case(
        "replicationpad1d",
        "float32[batch, 2, time]",
        "x -> ReplicationPad1d(3)",
        "float32[batch, 2, time + 6]",
        _plain(nn.ReplicationPad1d(3)),
        (2, 2, 4),
    ),
    Case(
        "replicationpad2d",
        "float32[batch, 2, 4, 5]",
        "x -> ReplicationPad2d((0, 1, 2, 3))",
        "float32[batch, 2, 9, 6]",
        _plain(nn.ReplicationPad2d((0, 1, 2, 3))),
        (2, 2, 4, 5),
    ),
    Case(
        "upsample_nearest_symbolic",
        "float32[batch, 3, h, w]",
        "x -> Upsample(scale_factor=2)",
        "float32[batch, 3, 2*h, 2*w]",
        _plain(nn.Upsample(scale_factor=2)),
        (2, 3, 5, 7),
    ),
    Case(
        "upsample_bilinear_size",
        "float32[batch, 3, 5, 7]",
        'x -> Upsample(size=(8, 11), mode="bilinear")',
        "float32[batch, 3, 8, 11]",
        _plain(nn.Upsample(size=(8, 11), mode="bilinear")),
        (2, 3, 5, 7),
    ),
    Case(
        "upsample_bilinear_align_corners_symbolic",
        "float32[batch, 3, h, w]",
        'x -> Upsample(scale_factor=2, mode="bilinear", align_corners=true)',
        "float32[batch, 3, 2*h, 2*w]",
        _plain(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)),
        (2, 3, 4, 6),
    ),
    Case(
        "upsample_linear_fraction",
        "float32[batch, 3, time]",
        'x -> Upsample(scale_factor=1.5, mode="linear")',
        "float32[batch, 3, (3*time // 2)]",
        _plain(nn.Upsample(scale_factor=1.5, mode="linear")),
        (2, 3, 7),
    ),
    Case(
        "interpolate_nearest_half",
        "float32[batch, 3, 8, 6]",
        "interpolate(x, scale_factor=0.5)",
        "float32[batch, 3, 4, 3]",
        _plain(nn.Upsample(scale_factor=0.5)),
        (2, 3, 8, 6),
    ),
    Case(
        "interpolate_bilinear_per_axis",
        "float32[batch, 3, h, w]",
        'interpolate(x, scale_factor=(2, 3), mode="bilinear")',
        "float32[batch, 3, 2*h, 3*w]",
        _plain(nn.Upsample(scale_factor=(2, 3), mode="bilinear")),
        (2, 3, 4, 5),
    ),
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """built(case) -> (generated model, ONNX session, ONNX model, generated file): one dslc build (export and
    verification included)."""
    cache: dict[str, tuple[nn.Module, ort.InferenceSession, onnx.ModelProto, Path]] = {}

    def get(case: Case):
        if case.id not in cache:
            root = tmp_path_factory.mktemp(case.id)
            (root / "t.model").write_text(case.spec(), encoding="utf-8")
            result = build(root / "t.model", root / "out")  # exports and verifies the ONNX against PyTorch
            assert [r.verified for r in result.models] == [True]
            net = load_generated(result.python_path).MODELS["m"]().eval()
            model = lower(result.program, result.program.exported[0], state_arrays(net))  # with net's weights
            session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            cache[case.id] = net, session, model, result.python_path
        return cache[case.id]

    return get


def _reference(case: Case, net: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """torch.nn's layer holding the generated module's weights (a strict load: the same state-dict keys)."""
    layer, call = case.reference()
    layer.load_state_dict({key.split(".", 1)[1]: value for key, value in net.state_dict().items()}, strict=True)
    return lambda x: call(layer.eval(), x)


def _input(case: Case) -> torch.Tensor:
    return torch.randn(case.shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_shape_rule(write_spec, case):
    (output,) = check_file(write_spec(case.spec())).model("m").outputs
    assert str(output.type) == case.output


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_generated_pytorch_matches_torch_nn(built, case):
    net, *_ = built(case)
    x = _input(case)
    with torch.no_grad():
        want, got = _reference(case, net)(x), net(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_onnx_matches_torch_nn(built, case):
    net, session, *_ = built(case)
    x = _input(case)
    with torch.no_grad():
        want = _reference(case, net)(x).numpy()
    (got,) = session.run(None, {"x": x.numpy()})
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _refused(write_spec, input_type: str, layer: str) -> str:
    with pytest.raises(DslcError) as info:
        check_file(write_spec(f"model m {{\n    input x: {input_type}\n    output y = {layer}\n}}\n"))
    (diag,) = info.value.diagnostics
    assert diag.loc.line == 3
    return diag.message + (f" [{diag.hint}]" if diag.hint else "")


@pytest.mark.parametrize(
    ("input_type", "layer", "message"),
    [
        ("float32[batch, 3, 8, 8]", "x -> Conv3d(4, 3)", "Conv3d expects [batch, channels, depth, height, width]"),
        ("float32[batch, 3, 8]", "x -> ConvTranspose1d(4, 3, stride=2, output_padding=2)", "smaller than the stride"),
        ("float32[batch, 3, 4, 4, 4]", "x -> ConvTranspose3d(4, 0)", "kernel must be a positive integer"),
        ("float32[batch, 3, 8, 8]", 'x -> Conv2d(4, 3, padding="causal")', "an integer, 'same', 'valid', got"),
        ("float32[batch, 3, 8]", 'x -> Conv1d(4, 3, padding="causl")', "'same', 'valid', 'causal', got \"causl\""),
        (
            "float32[batch, 3, h, w]",
            "x -> MaxPool2d(2, stride=3, ceil_mode=true)",
            "MaxPool2d: ceil_mode with the symbolic size 'h' needs stride <= kernel - padding, got stride 3, kernel 2, "
            "padding 0 [give the input a fixed size, or use ceil_mode=false]",
        ),
        ("float32[batch, 2, 1]", "x -> AvgPool1d(3, stride=1, ceil_mode=true)", "input size 1 is smaller than"),
        (
            "float32[batch, 3, 4, 6]",
            "x -> ReflectionPad2d(4)",
            "ReflectionPad2d: reflection padding must be smaller than the input size, got padding 4 for size 4 "
            "(dimension 2)",
        ),
        ("float32[batch, 3, 4, 6]", "x -> ZeroPad2d((1, 2, 3))", "one integer or (left, right, top, bottom)"),
        ("float32[batch, 3, 6]", "x -> ReplicationPad1d(-1)", "padding must be a non-negative integer"),
        ("int64[batch, 3, 6]", "x -> ConstantPad1d(1, 0.5)", "an int64 tensor cannot be padded with 0.5"),
        ("float32[batch, 3, 6]", "x -> Upsample(size=8, scale_factor=2)", "give exactly one of size and scale_factor"),
        ("float32[batch, 3, 6, 6]", "x -> Upsample(scale_factor=2, align_corners=true)", "not 'nearest'"),
        ("float32[batch, 3, 6]", 'x -> Upsample(scale_factor=2, mode="bilinear")', "expects [batch, channels, height"),
        ("float32[batch, 3, t]", "interpolate(x, scale_factor=1.1)", "is not a multiple of 1/64"),
        ("float32[batch, 3, 1]", "interpolate(x, scale_factor=0.5)", "resizes size 1 to 0"),
    ],
)
def test_refused_at_the_layer(write_spec, input_type, layer, message):
    assert message in _refused(write_spec, input_type, layer)


def test_pooling_output_sizes_follow_pytorch_with_and_without_ceil_mode():
    for size, kernel, stride, padding, ceil_mode in itertools.product(
        range(1, 12), (1, 2, 3, 4), (1, 2, 3, 5), (0, 1, 2), (False, True)
    ):
        if 2 * padding > kernel:
            continue
        pool = nn.MaxPool1d(kernel, stride, padding, ceil_mode=ceil_mode)
        try:
            want = pool(torch.zeros(1, 1, size)).shape[-1]
        except RuntimeError:
            want = None
        try:
            got = pool_out(size, kernel, stride, padding, ceil_mode)
        except ShapeError:
            got = None
        assert got == want, (size, kernel, stride, padding, ceil_mode)
    assert (pool_out(96, 3, 2, 0, False), pool_out(96, 3, 2, 0, True)) == (47, 48)  # case maxpool2d_ceil (97: 48, 48)


def test_causal_convolution_reads_no_future_input(built):
    net, session, *_ = built(next(c for c in CASES if c.id == "conv1d_causal"))
    x = torch.randn(1, 4, 12)
    later = x.clone()
    later[..., 7:] = torch.randn(1, 4, 5)
    with torch.no_grad():
        torch.testing.assert_close(net(x)[..., :7], net(later)[..., :7])
    (a,), (b,) = session.run(None, {"x": x.numpy()}), session.run(None, {"x": later.numpy()})
    np.testing.assert_array_equal(a[..., :7], b[..., :7])
    assert list(net.state_dict()) == ["conv1.weight", "conv1.bias"]  # a plain Conv1d's keys


def test_ceil_mode_and_resize_lower_to_their_onnx_attributes(built):
    def attributes(case_id: str, op_type: str) -> dict:
        _, _, model, _ = built(next(c for c in CASES if c.id == case_id))
        (node,) = [n for n in model.graph.node if n.op_type == op_type]
        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    assert attributes("maxpool2d_ceil", "MaxPool")["ceil_mode"] == 1
    assert attributes("avgpool2d_ceil_without_pad", "AveragePool")["count_include_pad"] == 0
    assert attributes("reflectionpad2d", "Pad")["mode"] == b"reflect"
    assert attributes("replicationpad1d", "Pad")["mode"] == b"edge"
    nearest = attributes("upsample_nearest_symbolic", "Resize")
    assert (nearest["coordinate_transformation_mode"], nearest["nearest_mode"]) == (b"asymmetric", b"floor")
    assert attributes("upsample_bilinear_size", "Resize")["coordinate_transformation_mode"] == b"half_pixel"
    corners = attributes("upsample_bilinear_align_corners_symbolic", "Resize")
    assert corners["coordinate_transformation_mode"] == b"align_corners"


def test_symbolic_sizes_resize_at_run_time(built):
    _, session, *_ = built(next(c for c in CASES if c.id == "upsample_bilinear_align_corners_symbolic"))
    layer = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
    for shape in ((1, 3, 3, 9), (4, 3, 10, 2)):
        x = torch.randn(shape)
        (got,) = session.run(None, {"x": x.numpy()})
        np.testing.assert_allclose(got, layer(x).numpy(), rtol=1e-5, atol=1e-5)


def test_generated_code_is_what_a_person_writes(built):
    import inspect

    def source(case_id: str) -> str:
        net, *_ = built(next(c for c in CASES if c.id == case_id))
        return inspect.getsource(type(net))

    assert "self.conv1 = nn.Conv1d(4, 6, 3, dilation=2)" in source("conv1d_causal")
    assert "self.conv1(F.pad(x, (4, 0)))" in source("conv1d_causal")
    assert "F.max_pool2d(x, 3, stride=2, ceil_mode=True)" in source("maxpool2d_ceil")
    assert 'F.pad(x, (1, 2, 2, 0), mode="reflect")' in source("reflectionpad2d")
    assert 'self.upsample1 = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)' in source(
        "upsample_bilinear_align_corners_symbolic"
    )
    assert 'F.interpolate(x, scale_factor=(2, 3), mode="bilinear")' in source("interpolate_bilinear_per_axis")


def _lowered(op_name: str, x: np.ndarray, **kwargs) -> np.ndarray:
    """One op's ONNX lowering on a fixed-size input, under strict shape inference, run in onnxruntime."""
    op = REGISTRY[op_name]
    x_type = TensorType("float32", x.shape)
    inferred = op.infer(bind(op.params, [], kwargs, op_name), [x_type])
    g = Graph()
    (y,) = op.onnx(g, [Value("x", x_type)], inferred.outputs, inferred.init, "")
    graph = onnx.helper.make_graph(
        g.nodes,
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x.shape)],
        [onnx.helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT, inferred.outputs[0].shape)],
        list(g.initializers.values()),
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_ceil_mode_pooling_lowers_as_pytorch_pools_at_every_size():
    rng = np.random.default_rng(0)
    for size, kernel, stride, padding in itertools.product(range(1, 10), (1, 2, 3, 4), (1, 2, 3, 5), (0, 1, 2)):
        if 2 * padding > kernel:
            continue
        x = rng.standard_normal((1, 2, size)).astype(np.float32)
        window = {"kernel": kernel, "stride": stride, "padding": padding, "ceil_mode": True}
        for op_name, extra in (
            ("MaxPool1d", {}),
            ("AvgPool1d", {"count_include_pad": True}),
            ("AvgPool1d", {"count_include_pad": False}),
        ):
            torch_op = nn.MaxPool1d if op_name == "MaxPool1d" else nn.AvgPool1d
            try:
                want = torch_op(kernel, stride, padding, ceil_mode=True, **extra)(torch.from_numpy(x)).numpy()
            except RuntimeError:
                continue  # the shape rule refuses these (test_pooling_output_sizes_follow_pytorch...)
            got = _lowered(op_name, x, **window, **extra)
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=f"{op_name} {size} {window} {extra}")


def test_generated_code_is_ruff_clean(built):
    paths = [str(built(case)[3]) for case in CASES]
    for check in (["check", "--select", "E,F,W,I", "--ignore", "E501"], ["format", "--check", "--line-length", "120"]):
        result = subprocess.run([sys.executable, "-m", "ruff", *check, *paths], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


def test_conv_init_draws_weights_as_torchvision_does(write_spec):
    """init= chooses the weight's distribution (bias zero); PyTorch's default otherwise."""
    import math

    from dslc.build import load_generated, write_python

    spec = write_spec(
        """
        model net {
            input x: float32[batch, 64, 8, 8]
            a = x -> he: Conv2d(256, kernel=3, init="kaiming_uniform")
            output y = a -> small: Conv2d(512, kernel=1, init="normal", init_std=0.05) -> plain: Conv2d(8, kernel=1)
        }
        """
    )
    write_python(spec, spec.with_suffix(".py"))
    torch.manual_seed(0)
    net = load_generated(spec.with_suffix(".py")).MODELS["net"]()
    fan_in = 64 * 9
    assert abs(net.he.weight.std().item() - math.sqrt(2 / fan_in)) < 0.1 * math.sqrt(2 / fan_in)
    assert abs(net.small.weight.std().item() - 0.05) < 0.005
    assert not net.he.bias.any() and not net.small.bias.any()
    assert net.plain.bias.any()  # PyTorch's default: a uniform bias
