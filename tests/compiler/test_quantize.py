"""`dslc build --precision fp16|bf16` and `--quantize int8`: a second graph, verified against PyTorch, in the
manifest."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dslc.build import VARIANTS, build
from dslc.errors import DslcError
from dslc.onnx_precision import PrecisionError, to_float16
from dslc.onnx_reference import ReferenceSession
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
    assert not [note for note in q.notes if "not smaller" in note]


def test_a_variant_not_smaller_than_float32_says_why(tmp_path):
    """mlp has 61 parameters: the Casts of its fp16 graph and the scales of its int8 graph outweigh them."""
    result = build(SPECS / "mlp.model", tmp_path / "out", variants=("fp16", "int8"))
    for variant in result.models[0].variants:
        assert variant.bytes >= variant.fp32_bytes
        assert variant.notes == [
            "not smaller than the float32 file: with 61 parameters, the nodes the conversion adds outweigh what the "
            "weights save"
        ]
        assert variant.summary(tmp_path).endswith(variant.notes[0])


def test_an_int8_graph_with_nothing_to_quantize_says_so(write_spec, tmp_path):
    spec = write_spec("""
        model m {
            input x: float32[batch, 2, 8, 8]
            output y = x -> Conv2d(4, 3, padding=1) -> ReLU
        }
    """)
    (variant,) = build(spec, tmp_path / "out", variants=("int8",)).models[0].variants
    assert variant.notes == [
        "nothing to quantize: no matrix product or embedding holds weights (convolutions stay float32)"
    ]


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
    assert result.models[0].variants[0].notes == [
        "its recurrent layers (GRU) compute in float32, having no 16-bit kernels",
        "not smaller than the float32 file: with 162 parameters, the nodes the conversion adds outweigh what the "
        "weights save",
    ]
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


def test_bf16_graph_computes_in_bfloat16_and_is_verified_in_the_reference_implementation(tmp_path):
    from dslc_runtime import Model, ModelError

    result = build(SPECS / "cnn.model", tmp_path / "out", variants=("bf16",))
    (half,) = result.models[0].variants
    assert (
        half.kind == "bf16"
        and half.onnx == "cnn.bf16.onnx"
        and half.verified_by == ("onnx's reference implementation",)
    )
    assert 0.45 < half.bytes / half.fp32_bytes < 0.55
    assert 0 < half.max_abs_diff <= VARIANTS["bf16"].tolerance
    graph = onnx.load(tmp_path / "out" / half.onnx)
    assert {t.data_type for t in graph.graph.initializer} - {TensorProto.INT64} == {TensorProto.BFLOAT16}
    assert {p.type.tensor_type.elem_type for p in [*graph.graph.input, *graph.graph.output]} == {TensorProto.FLOAT}
    assert {p.key: p.value for p in graph.metadata_props}["dslc.precision"] == "bfloat16"
    onnx.checker.check_model(graph, full_check=True)
    entry = json.loads((tmp_path / "out" / "manifest.json").read_text())["models"][0]
    assert entry["bf16"]["onnx"] == "cnn.bf16.onnx" and len(entry["bf16"]["onnx_sha256"]) == 64
    # onnxruntime's CPU provider has no bfloat16 kernels: the runtime says so, and what runs the graph
    with pytest.raises(ModelError, match="computes in bfloat16, which onnxruntime's CPU provider has no kernels"):
        Model.load(tmp_path / "out" / half.onnx, providers="cpu")
    from dslc_runtime import ProviderError, providers
    from dslc_runtime.cli import info_cli

    shown = io.StringIO()
    info_cli(tmp_path / "out", variant="bf16", providers="cpu", stream=shown)  # described from the file
    lines = shown.getvalue().splitlines()
    assert lines[1] == "provider: none on this machine" and "computes in bfloat16" in lines[2]
    assert "    image: float32[batch, 1, 28, 28]" in lines and "    logits: float32[batch, 10]" in lines
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    manifest["models"][0]["inputs"][0]["shape"] = ["batch", 3, 28, 28]
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="input 'image' dim 1 is 3 in the manifest"):  # not the CPU's missing kernels
        info_cli(tmp_path / "out", variant="bf16", providers="cpu", stream=io.StringIO())

    if providers.provider_problem(providers.CUDA) is not None:  # no GPU: the advice is not to fall back to the CPU
        with pytest.raises(ProviderError) as caught:
            Model.load(tmp_path / "out" / half.onnx, providers="cuda")
        assert "falling back to the CPU would not run it" in str(caught.value)
        assert "providers='auto'" not in str(caught.value)


def test_the_reference_implementation_agrees_with_onnxruntime_on_float32(tmp_path):
    result = build(SPECS / "cnn.model", tmp_path / "out")
    path = tmp_path / "out" / result.models[0].onnx
    image = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    import onnxruntime as ort

    want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"image": image})[0]
    (got,) = ReferenceSession(path).run(["logits"], {"image": image})
    assert got.shape == want.shape == (3, 10)
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("kind", ["fp16", "bf16"])
def test_a_model_16_bits_cannot_hold_is_refused(write_spec, tmp_path, kind):
    """Near 1000 float16's values are 0.5 apart, bfloat16's 4: x + 1000 - 1000 loses x, and the build says so.
    onnxruntime's CPU provider computes that float16 Add and Sub in float32; the reference implementation rounds."""
    spec = write_spec("""
        model m {
            input x: float32[batch, 4]
            output y = (x + 1000.0) - 1000.0
        }
    """)
    with pytest.raises(DslcError) as caught:
        build(spec, tmp_path / "out", variants=(kind,))
    message = str(caught.value)
    tolerance = {"fp16": "1%", "bf16": "5%"}[kind]
    assert f"the {kind} graph of 'm' is not within {tolerance} of PyTorch in onnx's reference implementation" in message
    assert "drop --precision" in message
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.onnx"))


@pytest.mark.parametrize("option", [["--quantize", "int8"], ["--precision", "fp16"], ["--precision", "bf16"]])
def test_a_second_graph_needs_verification(option):
    result = subprocess.run(
        [sys.executable, "-m", "dslc.cli", "build", str(SPECS / "mlp.model"), *option, "--no-verify"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert f"{option[0]} writes a second, verified ONNX file" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("op_type", ["GlobalAveragePool", "MatMul"])
def test_the_reference_session_accumulates_16_bit_ops_in_float32(op_type):
    """As GPU kernels do: a bfloat16 mean of 169 values, or a product over 169 terms, rounded once; numpy's own
    bfloat16 mean rounds at every step (the reference implementation as it comes: over 1% off)."""
    import ml_dtypes
    from onnx.reference import ReferenceEvaluator

    values = np.random.default_rng(0).uniform(1, 3, (1, 4, 13, 13)).astype(ml_dtypes.bfloat16)
    inputs = (
        {"x": values} if op_type == "GlobalAveragePool" else {"x": values.reshape(4, 169), "w": values.reshape(169, 4)}
    )
    bf16 = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.BFLOAT16, shape)  # noqa: E731
    node = helper.make_node(op_type, list(inputs), ["y"])
    graph = helper.make_graph([node], "g", [bf16(k, list(v.shape)) for k, v in inputs.items()], [bf16("y", None)])
    path = Path(tempfile.mkdtemp()) / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]), path)
    wide = {k: v.astype(np.float64) for k, v in inputs.items()}
    exact = wide["x"].mean(axis=(2, 3), keepdims=True) if op_type == "GlobalAveragePool" else wide["x"] @ wide["w"]
    (got,) = ReferenceSession(path).run(None, inputs)
    assert got.dtype == ml_dtypes.bfloat16  # computed wide, rounded back
    assert np.abs(got.astype(np.float64) / exact - 1).max() <= 2**-8  # one rounding of 8 significant bits
    if op_type == "GlobalAveragePool":
        (plain,) = ReferenceEvaluator(str(path)).run(None, inputs)
        assert np.abs(plain.astype(np.float64) / exact - 1).max() > 0.01


def test_precision_repeats_for_both_graphs(tmp_path):
    args = ["build", str(SPECS / "mlp.model"), "-o", str(tmp_path / "out")]
    args += ["--precision", "bf16", "--precision", "fp16", "--precision", "bf16"]
    result = subprocess.run([sys.executable, "-m", "dslc.cli", *args], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    written = [
        line.split(":")[0].removeprefix("wrote ")
        for line in result.stdout.splitlines()
        if ": bf16" in line or ": fp16" in line
    ]
    assert [Path(w).name for w in written] == ["mlp.bf16.onnx", "mlp.fp16.onnx"]  # each once, in the flags' order
    entry = json.loads((tmp_path / "out" / "manifest.json").read_text())["models"][0]
    assert {"fp16", "bf16"} <= set(entry)
