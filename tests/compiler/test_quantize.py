"""`dslc build --quantize int8`: a second graph with 8-bit weights, verified against PyTorch, in the manifest."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx

from dslc.build import INT8_TOLERANCE, build
from tests.conftest import ROOT, SPECS


def test_int8_graph_is_smaller_verified_and_listed(tmp_path):
    result = build(SPECS / "cnn.model", tmp_path / "out", quantize="int8")
    (report,) = result.models
    q = report.quantized
    assert q is not None and q.bytes < 0.4 * q.fp32_bytes  # 8-bit weights: about a quarter of the file
    assert 0 < q.max_abs_diff <= INT8_TOLERANCE
    graph = onnx.load(tmp_path / "out" / q.onnx)
    assert any(n.op_type == "MatMulInteger" for n in graph.graph.node)
    assert {p.key for p in graph.metadata_props} >= {"dslc.model", "dslc.inputs", "dslc.outputs"}
    entry = json.loads((tmp_path / "out" / "manifest.json").read_text())["models"][0]
    assert entry["int8"]["onnx"] == "cnn.int8.onnx" and entry["onnx"] == "cnn.onnx"


def test_quantize_needs_verification():
    result = subprocess.run(
        [sys.executable, "-m", "dslc.cli", "build", str(SPECS / "mlp.model"), "--quantize", "int8", "--no-verify"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert "--quantize writes a second, verified ONNX file" in result.stderr and "Traceback" not in result.stderr
