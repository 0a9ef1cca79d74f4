"""ONNX export and verification: checker-clean files, real dynamic axes, metadata, parity."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from dslc.build import build, load_generated
from dslc.lower_onnx import IR_VERSION
from dslc.lower_onnx import OPSET as LOWERED_OPSET
from tests.conftest import SPECS

SMALL_SPECS = ["mlp", "cnn", "rnn", "bilstm_classifier", "autoencoder", "transformer_encoder"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("built")
    return {stem: (build(SPECS / f"{stem}.model", out / stem), out / stem) for stem in SMALL_SPECS}


@pytest.mark.parametrize("stem", SMALL_SPECS)
def test_onnx_is_valid_and_described(built, stem):
    result, out = built[stem]
    for report in result.models:
        model = onnx.load(out / report.onnx)
        onnx.checker.check_model(model, full_check=True)
        assert model.ir_version <= IR_VERSION  # opset 23's, which the runtime's onnxruntime reads
        assert model.opset_import[0].version in (17, LOWERED_OPSET)  # traced, or lowered from the IR
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["dslc.spec_sha256"] == result.program.sha256
        assert meta["dslc.model"] == report.name
        module = result.program.model(report.name)
        assert [i["name"] for i in json.loads(meta["dslc.inputs"])] == [p.name for p in module.inputs]
        assert [i.name for i in model.graph.input] == [p.name for p in module.inputs]
        assert [o.name for o in model.graph.output] == [p.name for p in module.outputs]
        assert report.verified and report.max_abs_diff <= 1e-5
        assert report.params == module.param_count and not report.notes  # the graph uses every parameter


@pytest.mark.parametrize("stem", SMALL_SPECS)
def test_dynamic_axes_really_are_dynamic(built, stem):
    """Run at batch and sequence sizes the export never saw, against PyTorch."""
    result, out = built[stem]
    generated = load_generated(result.python_path)
    for report in result.models:
        module_ir = result.program.model(report.name)
        model = onnx.load(out / report.onnx)
        symbolic = {d.dim_param for i in model.graph.input for d in i.type.tensor_type.shape.dim if d.dim_param}
        declared = {str(d) for p in module_ir.inputs for d in p.type.shape if not isinstance(d, int)}
        assert symbolic == declared
        torch.manual_seed(0)
        torch_model = generated.MODELS[report.name]().eval()
        session = ort.InferenceSession(str(out / report.onnx), providers=["CPUExecutionProvider"])
        for batch, length in ((2, 5), (9, 31)):
            feeds = {}
            for port in module_ir.inputs:
                shape = [
                    batch if str(d) == "batch" else length if not isinstance(d, int) else d for d in port.type.shape
                ]
                if port.type.is_float:
                    feeds[port.name] = np.random.default_rng(batch).standard_normal(shape).astype(np.float32)
                else:
                    feeds[port.name] = np.random.default_rng(batch).integers(0, 10, shape).astype(np.int64)
            got = session.run(None, feeds)
            with torch.no_grad():
                want = torch_model(*[torch.from_numpy(feeds[p.name]) for p in module_ir.inputs])
            want = want if isinstance(want, tuple) else (want,)
            for w, g in zip(want, got):
                assert w.shape == g.shape
                np.testing.assert_allclose(g, w.numpy(), atol=1e-5, rtol=0)


def test_manifest(built):
    result, out = built["cnn"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["spec_sha256"] == result.program.sha256
    entry = manifest["models"][0]
    assert entry["onnx"] == "cnn.onnx" and entry["verified"] is True
    assert entry["inputs"][0] == {"name": "image", "dtype": "float32", "shape": ["batch", 1, 28, 28], "doc": ""}


def test_failed_verification_writes_nothing(tmp_path, monkeypatch):
    """A build whose ONNX does not match PyTorch fails and leaves no files behind."""
    import dslc.verify

    monkeypatch.setattr(dslc.verify, "TOLERANCE", -1.0)
    out = tmp_path / "out"
    with pytest.raises(Exception, match="verification"):
        build(SPECS / "mlp.model", out)
    assert not out.exists()  # the folder it created goes too


def test_labels_and_vocab_reach_the_metadata(tmp_path):
    labels = [str(d) for d in range(10)]
    result = build(SPECS / "cnn.model", tmp_path / "cnn", labels=labels, vocab=["<pad>", "a"])
    meta = {p.key: p.value for p in onnx.load(tmp_path / "cnn" / "cnn.onnx").metadata_props}
    assert json.loads(meta["dslc.labels"]) == labels and json.loads(meta["dslc.vocab"]) == ["<pad>", "a"]
    manifest = json.loads((tmp_path / "cnn" / "manifest.json").read_text())
    assert manifest["models"][0]["labels"] == labels
    assert result.models[0].verified


def test_build_is_byte_identical(tmp_path):
    a = build(SPECS / "mlp.model", tmp_path / "a", export_onnx=False)
    b = build(SPECS / "mlp.model", tmp_path / "b", export_onnx=False)
    assert a.python_path.read_bytes() == b.python_path.read_bytes()


def test_vanilla_rnns_lower_to_scans_that_match_pytorch(write_spec, tmp_path):
    """RNN is lowered as one Scan a layer and direction (onnxruntime's RNN op is twice PyTorch's time at batch 32):
    stacked, bidirectional, relu, without bias, from an initial state, each of the four returns; all verified at
    two batch sizes and time lengths, and no RNN op or unused weight is left in the graph."""
    spec = write_spec("""
        model seq {
            input x: float32[batch, time, 5]
            input h0: float32[4, batch, 6]
            output y = x -> RNN(6, layers=2, bidirectional=true)
            output last = x -> RNN(3, nonlinearity="relu", bias=false, returns="last")
            output state = (x, h0) -> RNN(6, layers=2, bidirectional=true, returns="state")
            all_steps, final = x -> RNN(4, layers=3, returns="all")
            output steps = all_steps
            output h_n = final
        }
    """)
    result = build(spec, tmp_path / "seq")
    assert result.models[0].verified
    graph = onnx.load(tmp_path / "seq" / "seq.onnx").graph
    ops = [n.op_type for n in graph.node]
    assert "RNN" not in ops and ops.count("Scan") == 4 + 1 + 4 + 3
    read = {name for n in graph.node for name in n.input}
    assert all(i.name in read for i in graph.initializer)  # ONNX-layout W/R/B are not written beside the Scans
    session = ort.InferenceSession(str(tmp_path / "seq" / "seq.onnx"), providers=["CPUExecutionProvider"])
    shapes = [
        o.shape
        for o in session.run(None, {"x": np.zeros((2, 9, 5), np.float32), "h0": np.zeros((4, 2, 6), np.float32)})
    ]
    assert shapes == [(2, 9, 12), (2, 3), (4, 2, 6), (2, 9, 4), (3, 2, 4)]


def test_gru_and_bidirectional_time_axis(write_spec, tmp_path):
    """Known exporter traps: GRU linear_before_reset and bidirectional time frozen at export length."""
    spec = write_spec("""
        model seq {
            input x: float32[batch, time, 5]
            h = x -> GRU(6, layers=2, bidirectional=true)
            last = x -> LSTM(4, bidirectional=true, returns="last")
            output y = h
            output z = last
        }
    """)
    result = build(spec, tmp_path / "seq")
    assert result.models[0].verified
    session = ort.InferenceSession(str(tmp_path / "seq" / "seq.onnx"), providers=["CPUExecutionProvider"])
    y, z = session.run(None, {"x": np.zeros((4, 37, 5), np.float32)})
    assert y.shape == (4, 37, 12) and z.shape == (4, 8)
