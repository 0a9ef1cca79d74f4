"""`dslc build --precision fp16` and `--quantize int8`: a second graph, verified against PyTorch, in the manifest."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dslc.build import VARIANTS, build
from dslc.onnx_precision import PrecisionError, to_float16
from tests.conftest import ROOT, SPECS


def test_int8_graph_is_smaller_verified_and_listed(tmp_path):
    result = build(SPECS / "cnn.model", tmp_path / "out", variants=("int8",))
    (report,) = result.models
    (q,) = report.variants
    assert q.kind == "int8" and q.bytes < 0.4 * q.fp32_bytes  # 8-bit weights: about a quarter of the file
    assert 0 < q.max_abs_diff <= VARIANTS["int8"].tolerance
    graph = onnx.load(tmp_path / "out" / q.onnx)
    assert any(n.op_type == "MatMulInteger" for n in graph.graph.node)
    assert {p.key for p in graph.metadata_props} >= {"dslc.model", "dslc.inputs", "dslc.outputs"}
    entry = json.loads((tmp_path / "out" / "manifest.json").read_text())["models"][0]
    assert entry["int8"]["onnx"] == "cnn.int8.onnx" and entry["onnx"] == "cnn.onnx"


def test_fp16_graph_computes_in_float16_behind_float32_inputs_and_outputs(tmp_path):
    result = build(SPECS / "cnn.model", tmp_path / "out", variants=("fp16", "int8"))
    (report,) = result.models
    half, _ = report.variants
    assert half.kind == "fp16" and half.onnx == "cnn.fp16.onnx"
    assert 0.45 < half.bytes / half.fp32_bytes < 0.55  # two bytes a weight instead of four
    assert 0 < half.max_abs_diff <= VARIANTS["fp16"].tolerance
    graph = onnx.load(tmp_path / "out" / half.onnx)
    floats = {t.data_type for t in graph.graph.initializer} - {TensorProto.INT64}  # shapes stay integers
    assert floats == {TensorProto.FLOAT16}
    ports = [*graph.graph.input, *graph.graph.output]
    assert {p.type.tensor_type.elem_type for p in ports} == {TensorProto.FLOAT}  # applications feed float32
    assert {p.key for p in graph.metadata_props} >= {"dslc.model", "dslc.inputs", "dslc.outputs"}
    onnx.checker.check_model(graph, full_check=True)
    entry = json.loads((tmp_path / "out" / "manifest.json").read_text())["models"][0]
    assert entry["fp16"]["onnx"] == "cnn.fp16.onnx" and entry["int8"]["onnx"] == "cnn.int8.onnx"


def test_fp16_keeps_float32_where_onnxruntime_needs_it(write_spec, tmp_path):
    """Resize's scales are float32 by the standard; a GRU has no float16 kernel on the CPU; a float16 Transpose
    into a MatMul crashes onnxruntime 1.31's CPU fusion. Each builds and verifies."""
    spec = write_spec("""
        model m {
            input x: float32[batch, 2, 4, 4]
            input s: float32[batch, time, 3]
            output up = x -> Upsample(scale_factor=2)
            output tail = s -> GRU(5) -> Linear(2)
            output turned = transpose(s, 1, 2) @ s
        }
    """)
    result = build(spec, tmp_path / "out", variants=("fp16",))
    graph = onnx.load(tmp_path / "out" / result.models[0].variants[0].onnx)
    cast_to = {n.output[0]: n.attribute[0].i for n in graph.graph.node if n.op_type == "Cast"}
    for node in graph.graph.node:
        if node.op_type == "GRU":
            assert all(cast_to.get(name) == TensorProto.FLOAT for name in node.input[:3])
        if node.op_type == "Resize":
            assert cast_to.get(node.input[2]) == TensorProto.FLOAT


def test_a_weight_beyond_float16s_range_is_refused():
    weight = numpy_helper.from_array(np.array([[1e6]], np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
        [weight],
    )
    with pytest.raises(PrecisionError, match="'w' holds 1e\\+06, beyond float16's largest value"):
        to_float16(helper.make_model(graph))


@pytest.mark.parametrize("option", [["--quantize", "int8"], ["--precision", "fp16"]])
def test_a_second_graph_needs_verification(option):
    result = subprocess.run(
        [sys.executable, "-m", "dslc.cli", "build", str(SPECS / "mlp.model"), *option, "--no-verify"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert f"{option[0]} writes a second, verified ONNX file" in result.stderr and "Traceback" not in result.stderr
