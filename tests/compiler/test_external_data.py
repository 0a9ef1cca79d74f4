"""Models over protobuf's 2 GiB keep their weights in `<model>.onnx.data` beside the graph (dslc.onnx_files). The
threshold is lowered here so that small specs take the large-model path end to end: build, verification, the fp16 and
int8 graphs, the KV-cache graphs, and the runtime."""

from __future__ import annotations

import hashlib
import json
import stat

import numpy as np
import onnx
import pytest

from dslc import onnx_files
from dslc.build import build
from tests.conftest import SPECS


@pytest.fixture
def large(monkeypatch):
    """Every model counts as large: weights over SMALL_TENSOR_BYTES go to external data."""
    monkeypatch.setattr(onnx_files, "EXTERNAL_DATA_BYTES", 0)
    monkeypatch.setattr(onnx_files, "INFER_WITHOUT_WEIGHTS_BYTES", 0)  # and shape inference reads no weight values


def _external(path) -> set[str]:
    model = onnx.load(path, load_external_data=False)
    return {t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}


def test_a_large_model_writes_its_weights_beside_the_graph_and_verifies(tmp_path, large):
    out = tmp_path / "out"
    result = build(SPECS / "cnn.model", out, variants=("fp16", "int8"))
    (report,) = result.models
    assert report.verified and report.max_abs_diff < 1e-4
    assert (out / "cnn.onnx.data").stat().st_size > 421_642 * 4 * 0.99  # the float32 weights, in the data file
    assert (out / "cnn.onnx").stat().st_size < 20_000  # the graph without them
    assert _external(out / "cnn.onnx")  # the convolution and linear weights
    for graph in ("cnn.onnx", "cnn.fp16.onnx", "cnn.int8.onnx"):  # each data file has its graph's (the umask's) mode
        assert stat.S_IMODE((out / f"{graph}.data").stat().st_mode) == stat.S_IMODE((out / graph).stat().st_mode)
    half, quantized = report.variants
    assert (out / "cnn.fp16.onnx.data").exists() and _external(out / "cnn.fp16.onnx")
    assert 0.45 < half.bytes / half.fp32_bytes < 0.55  # sizes count the data files
    assert quantized.bytes < 0.4 * quantized.fp32_bytes
    assert not list(out.glob(".dslc-build-*"))  # staging removed, its data files published
    entry = json.loads((out / "manifest.json").read_text())["models"][0]
    assert entry["onnx"] == "cnn.onnx" and entry["onnx_data"] == "cnn.onnx.data"
    assert entry["onnx_data_sha256"] == hashlib.sha256((out / "cnn.onnx.data").read_bytes()).hexdigest()
    assert entry["fp16"]["onnx_data"] == "cnn.fp16.onnx.data"


def test_the_runtime_refuses_a_changed_weights_file(tmp_path, large):
    from dslc_runtime import Model, ModelError

    build(SPECS / "cnn.model", tmp_path / "out", verify_onnx=False)
    Model.load(tmp_path / "out")  # through the manifest, both checksums match
    data = tmp_path / "out" / "cnn.onnx.data"
    weights = bytearray(data.read_bytes())
    weights[len(weights) // 2] ^= 1  # one bit of one weight: the graph file alone cannot show it
    data.write_bytes(bytes(weights))
    with pytest.raises(ModelError, match="cnn.onnx.data: sha256 is .* modified or corrupted"):
        Model.load(tmp_path / "out")


def test_the_runtime_loads_a_large_model_and_gives_the_same_output(tmp_path, large):
    from dslc_runtime import Model

    small = build(SPECS / "cnn.model", tmp_path / "small", verify_onnx=False)
    onnx_files.EXTERNAL_DATA_BYTES = 1 << 30
    build(SPECS / "cnn.model", tmp_path / "inline", verify_onnx=False)
    assert not (tmp_path / "inline" / "cnn.onnx.data").exists() and (tmp_path / "small" / "cnn.onnx.data").exists()
    image = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    large_out = Model.load(tmp_path / "small" / small.models[0].onnx).run({"image": image})
    inline_out = Model.load(tmp_path / "inline" / "cnn.onnx").run({"image": image})
    np.testing.assert_array_equal(next(iter(large_out.values())), next(iter(inline_out.values())))


def test_a_large_decoder_writes_its_cache_graphs_with_external_data(tmp_path, large):
    result = build(
        SPECS / "gpt2.model", tmp_path / "out", ["layers=1", "width=32", "heads=2", "vocab=64", "positions=32"]
    )
    (report,) = result.models
    assert report.decoder is not None, report.notes
    for kind in ("prefill", "decode_step"):
        path = tmp_path / "out" / f"gpt2.{kind}.onnx"
        assert path.with_name(path.name + ".data").exists() and _external(path)


def test_shape_inference_of_a_large_model_reads_no_weight_values(large):
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)
    inferred = onnx_files.infer_shapes(model)
    assert [d.dim_param or d.dim_value for d in inferred.graph.output[0].type.tensor_type.shape.dim] == ["batch", 64]
    assert inferred.graph.initializer[0].raw_data == weight.raw_data  # the weights themselves untouched
