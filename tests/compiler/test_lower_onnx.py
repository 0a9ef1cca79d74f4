"""Pass 6, the ONNX back-end: graphs lowered from the IR run in onnxruntime and match the generated PyTorch module;
the lowering imports no torch; graphs are no larger than the traced exporter's."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from dslc.build import build, load_generated
from dslc.export_onnx import state_arrays
from dslc.lower_onnx import OPSET, lower, lowerable
from tests.conftest import ROOT, SPECS

# Compute nodes (measured) of `dslc build` before the native lowering (torch.onnx's TorchScript exporter, opset 17), of the
# model named like the spec (gan: both models).
TRACED_NODES = {"cnn": 11, "resnet18": 49, "bert_classifier": 143, "vae": 18, "mlp": 3, "gan": 18, "autoencoder": 13}


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _compute_nodes(model: onnx.ModelProto) -> int:
    return sum(1 for n in model.graph.node if n.op_type not in ("Constant", "Identity"))


@pytest.fixture(scope="module")
def lowered(tmp_path_factory):
    out = tmp_path_factory.mktemp("lowered")
    graphs = {}
    for stem in TRACED_NODES:
        result = build(SPECS / f"{stem}.model", out / stem, export_onnx=False)
        generated = load_generated(result.python_path)
        for module in result.program.exported:
            torch.manual_seed(0)
            net = generated.MODELS[module.spec_name]().eval()
            graphs[(stem, module.spec_name)] = (
                result.program,
                module,
                net,
                lower(result.program, module, state_arrays(net)),
            )
    return graphs


def test_shipped_specs_without_recurrences_or_attention_lower(lowered):
    for program, module, _, model in lowered.values():
        assert lowerable(program, module) is None
        onnx.checker.check_model(model, full_check=True)
        assert model.opset_import[0].version == OPSET
        assert [i.name for i in model.graph.input] == [p.name for p in module.inputs]
        assert [o.name for o in model.graph.output] == [p.name for p in module.outputs]


def test_lowered_graphs_are_no_larger_than_traced_ones(lowered):
    per_spec = {stem: _compute_nodes(lowered[(stem, stem)][-1]) for stem in TRACED_NODES if (stem, stem) in lowered}
    per_spec["gan"] = sum(_compute_nodes(lowered[("gan", name)][-1]) for name in ("generator", "discriminator"))
    for stem, nodes in per_spec.items():
        assert nodes <= TRACED_NODES[stem], (stem, nodes)
    assert per_spec["bert_classifier"] <= 0.6 * TRACED_NODES["bert_classifier"]  # LayerNormalization, Gelu, no Dropout


def test_batch_norm_folds_into_the_convolution(lowered):
    *_, model = lowered[("resnet18", "resnet18")]
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)


def test_the_lowering_imports_no_torch():
    code = "import sys, dslc.lower_onnx, dslc.onnx_graph; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def _lower_spec(tmp_path, text: str):
    spec = tmp_path / "t.model"
    spec.write_text(text)
    result = build(spec, tmp_path / "out", export_onnx=False)
    module = result.program.exported[0]
    net = load_generated(result.python_path).MODELS[module.spec_name]().eval()
    return net, _session(lower(result.program, module, state_arrays(net)))


def test_floor_division_and_modulo_follow_python_on_negative_integers(tmp_path):
    net, session = _lower_spec(
        tmp_path, "model m {\n    input x: int64[batch, 4]\n    output q = x // 3\n    output r = x % 3\n}\n"
    )
    x = np.array([[-7, -6, 5, 0], [7, -1, 2, -3]], dtype=np.int64)
    q, r = session.run(None, {"x": x})
    np.testing.assert_array_equal(q, x // 3)
    np.testing.assert_array_equal(r, x % 3)


def test_float_modulo_takes_the_divisors_sign_as_pytorch(tmp_path):
    """`%` of floats is torch.remainder (Python's: the divisor's sign), not C's fmod; by 0 it is NaN."""
    net, session = _lower_spec(
        tmp_path, "model m {\n    input x: float32[batch, 4]\n    input y: float32[batch, 4]\n    output r = x % y\n}\n"
    )
    x = np.array([[-2.5, 2.5, -2.5, 3.0], [-0.0, 1.0, -4.0, 5.0]], dtype=np.float32)
    y = np.array([[1.0, -1.0, -1.0, 1.5], [2.0, 0.0, 2.0, -np.inf]], dtype=np.float32)
    (r,) = session.run(None, {"x": x, "y": y})
    want = net(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    np.testing.assert_array_equal(r, want)  # NaN where both are NaN
    assert r[0, 0] == 0.5 and r[0, 1] == -0.5 and np.isnan(r[1, 1]) and r[1, 3] == -np.inf


def test_indexing_slices_integers_and_new_axes(tmp_path):
    net, session = _lower_spec(
        tmp_path,
        "model m {\n    input x: float32[batch, 6, 5]\n    output a = x[:, 1:4, ::2]\n    output b = x[..., 0]\n"
        "    output c = x[:, none, -1]\n}\n",
    )
    x = torch.randn(3, 6, 5)
    for want, got in zip(net(x), session.run(None, {"x": x.numpy()})):
        np.testing.assert_allclose(want.detach().numpy(), got, rtol=0, atol=0)


def test_tied_weights_are_stored_once():
    shared = torch.nn.Linear(4, 4)
    model = torch.nn.Module()
    model.first, model.second = shared, shared
    arrays = state_arrays(model)
    assert arrays["first.weight"] is arrays["second.weight"]


def test_new_axes_after_an_integer_index_land_where_the_result_has_them(tmp_path):
    net, session = _lower_spec(
        tmp_path,
        "model m {\n    input x: float32[batch, 6, 5]\n    output a = x[0, none]\n    output b = x[:, 2, none, 1:3]\n}\n",
    )
    x = torch.randn(3, 6, 5)
    for want, got in zip(net(x), session.run(None, {"x": x.numpy()})):
        np.testing.assert_array_equal(want.detach().numpy(), got)
