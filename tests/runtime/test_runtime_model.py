"""Model loading, signatures, running, validation, batching, manifests and providers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from dslc_runtime import InputError, Model, ModelError, ProviderError
from dslc_runtime import providers as prov


def test_signature_and_metadata(models):
    m = Model.load(models.classifier, providers="cpu")
    (inp,) = m.signature.inputs
    (out,) = m.signature.outputs
    assert (inp.name, inp.dtype, inp.shape) == ("image", "float32", ("batch", 1, 4, 4))
    assert (out.name, out.dtype, out.shape) == ("logits", "float32", ("batch", 3))
    assert inp.doc == "a tiny image"
    assert str(m.signature) == "(image: float32[batch, 1, 4, 4]) -> (logits: float32[batch, 3])"
    assert m.labels == ["cat", "dog", "bird"]
    assert m.vocab is None
    assert m.name == "classifier"
    assert m.metadata["dslc.version"] == "0.1.0"
    assert m.provider == "CPUExecutionProvider"
    assert m.signature.to_json()["inputs"][0]["shape"] == ["batch", 1, 4, 4]


def test_model_without_metadata_uses_graph_info(models):
    m = Model.load(models.pair, providers="cpu")
    assert m.metadata == {}
    assert m.labels is None
    assert [str(s) for s in m.signature.inputs] == [
        "a: float32[batch, n]",
        "b: float32[batch, n]",
        "scale: float32[1]",
    ]


@pytest.mark.parametrize("batch", [1, 3, 17])
def test_dynamic_batch(models, batch):
    m = Model.load(models.classifier, providers="cpu")
    x = np.random.default_rng(batch).normal(size=(batch, 1, 4, 4)).astype(np.float32)
    out = m(image=x)
    assert list(out) == ["logits"]
    assert out["logits"].shape == (batch, 3)
    assert np.allclose(out["logits"], m.run({"image": x})["logits"])


def test_run_accepts_lists_and_kwargs(models):
    m = Model.load(models.pair, providers="cpu")
    out = m.run({"a": [[1.0, 2.0]], "b": np.ones((1, 2), np.float32)}, scale=[2.0])
    np.testing.assert_allclose(out["out"], [[4.0, 6.0]])


def _error(m: Model, **inputs) -> str:
    with pytest.raises(InputError) as info:
        m.run(inputs)
    text = str(info.value)
    assert "expected signature:" in text
    assert "a: float32[batch, n]" in text
    return text


def test_validation_messages(models):
    m = Model.load(models.pair, providers="cpu")
    a = np.zeros((2, 3), np.float32)
    scale = np.ones(1, np.float32)
    assert "unknown input(s): c" in _error(m, a=a, b=a, scale=scale, c=a)
    assert "missing input(s): b" in _error(m, a=a, scale=scale)
    assert "b: dtype float64 but the model expects float32" in _error(m, a=a, b=a.astype(np.float64), scale=scale)
    assert "a: rank 3" in _error(m, a=a[None], b=a, scale=scale)
    assert "scale: dim 0 is 2 but the model expects 1" in _error(m, a=a, b=a, scale=np.ones(2, np.float32))
    text = _error(m, a=a, b=np.zeros((2, 4), np.float32), scale=scale)
    assert "b: dim 1 ('n') is 4 but a has 'n' = 3" in text
    text = _error(m, a=a, b=np.zeros((5, 3), np.float32), scale=scale)
    assert "b: dim 0 ('batch') is 5 but a has 'batch' = 2" in text
    assert "got:\n  a: float32[2, 3], b: float32[5, 3], scale: float32[1]" in text


def test_input_error_is_value_error(models):
    m = Model.load(models.pair, providers="cpu")
    with pytest.raises(ValueError):
        m.validate({})


def test_run_batched_matches_single_run(models):
    m = Model.load(models.pair, providers="cpu")
    rng = np.random.default_rng(0)
    a = rng.normal(size=(7, 5)).astype(np.float32)
    b = rng.normal(size=(7, 5)).astype(np.float32)
    scale = np.array([3.0], np.float32)
    whole = m.run({"a": a, "b": b, "scale": scale})["out"]
    for size in (1, 2, 7, 100):
        got = m.run_batched({"a": a, "b": b, "scale": scale}, batch_size=size)["out"]
        np.testing.assert_allclose(got, whole)
    with pytest.raises(ValueError):
        m.run_batched({"a": a, "b": b, "scale": scale}, batch_size=0)


def test_manifest_loading(build_dir):
    with pytest.raises(ModelError, match=r"describes 2 models \(cnn, generator\)"):
        Model.load(build_dir, providers="cpu")
    cnn = Model.load(build_dir, model="cnn", providers="cpu")
    assert cnn.signature.inputs[0].doc == "from manifest"
    assert cnn.manifest is not None and cnn.manifest["spec"] == "demo.model"
    gen = Model.load(build_dir / "manifest.json", model="generator", providers="cpu")
    assert gen.input_names == ["z"]
    assert gen.signature.inputs[0].doc == "noise"  # manifest lists none: falls back to metadata
    with pytest.raises(ModelError, match="no model 'nope'.*available: cnn, generator"):
        Model.load(build_dir, model="nope", providers="cpu")


def test_manifest_single_model_and_escape(tmp_path, models):
    (tmp_path / "only.onnx").write_bytes(models.generator.read_bytes())
    manifest = {"models": [{"name": "only", "onnx": "only.onnx"}]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="model 'only' gives no onnx_sha256 for 'only.onnx'"):
        Model.load(tmp_path, providers="cpu")  # a graph the manifest cannot vouch for is not opened
    manifest["models"][0]["onnx_sha256"] = hashlib.sha256(models.generator.read_bytes()).hexdigest()
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert Model.load(tmp_path, providers="cpu").input_names == ["z"]

    evil = tmp_path / "evil"
    evil.mkdir()
    manifest["models"][0]["onnx"] = "../only.onnx"
    (evil / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="outside the build directory"):
        Model.load(evil, providers="cpu")
    (evil / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError, match="invalid manifest"):
        Model.load(evil, providers="cpu")


def test_directory_without_manifest(tmp_path, models):
    (tmp_path / "m.onnx").write_bytes(models.generator.read_bytes())
    assert Model.load(tmp_path, providers="cpu").name == "generator"
    with pytest.raises(ModelError, match="model not found"):
        Model.load(tmp_path / "missing.onnx")


def test_torch_tensors_via_dlpack(models):
    torch = pytest.importorskip("torch")
    m = Model.load(models.classifier, providers="cpu")
    x = torch.randn(2, 1, 4, 4, requires_grad=True)
    out = m(image=x)
    assert isinstance(out["logits"], torch.Tensor)
    expected = m(image=x.detach().numpy())["logits"]
    np.testing.assert_allclose(out["logits"].numpy(), expected)
    with pytest.raises(InputError, match="dtype float64"):
        m(image=x.double())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # legacy exporter deprecation notice
def test_torch_exported_cnn_matches_eager(tmp_path):
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 10),
    ).eval()
    path = tmp_path / "cnn.onnx"
    torch.onnx.export(
        net,
        (torch.zeros(1, 1, 28, 28),),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    m = Model.load(path, providers="cpu")
    assert m.signature.inputs[0].shape == ("batch", 1, 28, 28)
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        expected = net(x).numpy()
    np.testing.assert_allclose(m(image=x.numpy())["logits"], expected, rtol=1e-4, atol=1e-5)


def test_optimized_graph_cache(tmp_path, models):
    cache = tmp_path / "cache"
    x = np.ones((2, 1, 4, 4), np.float32)
    first = Model.load(models.classifier, providers="cpu", cache_dir=cache)
    files = list(cache.glob("*.onnx"))
    assert len(files) == 1 and files[0].name.startswith("classifier-")
    second = Model.load(models.classifier, providers="cpu", cache_dir=cache)
    assert list(cache.glob("*.onnx")) == files
    assert second.labels == first.labels  # metadata read from the original file
    np.testing.assert_allclose(first(image=x)["logits"], second(image=x)["logits"], rtol=1e-6)


def test_provider_selection_cpu_and_auto(models):
    assert Model.load(models.classifier, providers="cpu").providers == ["CPUExecutionProvider"]
    auto = Model.load(models.classifier, providers="auto")
    assert auto.provider in ("CPUExecutionProvider", "CUDAExecutionProvider")
    if auto.provider == "CPUExecutionProvider" and "CUDAExecutionProvider" in prov.ort.get_available_providers():
        # the fallback is reported: on every run where a GPU is present, by `info` only where none is
        reported = auto.notes if prov._gpu_problem(0) is None else [auto.cpu_only or ""]
        assert any("CPU" in note for note in reported)
        assert prov._gpu_problem(0) is None or not auto.notes
    with pytest.raises(ProviderError, match="unknown execution provider 'foo'"):
        Model.load(models.classifier, providers="foo")


@pytest.mark.parametrize("request_", ["cuda", "tensorrt", ["CUDAExecutionProvider"]])
def test_explicit_gpu_provider_raises_when_unusable(models, request_):
    primary = prov.TENSORRT if request_ == "tensorrt" else prov.CUDA
    if prov.provider_problem(primary) is None:
        pytest.skip(f"{primary} is usable on this machine")
    with pytest.raises(ProviderError, match="requested explicitly but is not usable"):
        Model.load(models.classifier, providers=request_)


def test_repr(models):
    m = Model.load(models.classifier, providers="cpu")
    assert "classifier" in repr(m) and "CPUExecutionProvider" in repr(m)


def test_path_types(models):
    assert Model.load(str(models.classifier), providers="cpu").path == Path(models.classifier)


def test_fast_path_check(models):
    m = Model.load(models.pair, providers="cpu")
    a = np.zeros((2, 3), np.float32)
    scale = np.ones(1, np.float32)
    assert m._fast_check({"a": a, "b": a, "scale": scale})
    assert not m._fast_check({"a": a, "b": a[:, :2], "scale": scale})  # 'n' differs
    assert not m._fast_check({"a": a, "b": a[:1], "scale": scale})  # 'batch' differs
    assert not m._fast_check({"a": a, "b": a, "scale": np.ones(2, np.float32)})
    assert not m._fast_check({"a": a, "b": a.astype(np.float64), "scale": scale})
    assert not m._fast_check({"a": a, "b": a.tolist(), "scale": scale})
    assert not m._fast_check({"a": a, "b": a, "c": scale})


def test_ortvalue_inputs_use_iobinding(models):
    ort = pytest.importorskip("onnxruntime")
    m = Model.load(models.classifier, providers="cpu")
    x = np.random.default_rng(3).normal(size=(2, 1, 4, 4)).astype(np.float32)
    out = m(image=ort.OrtValue.ortvalue_from_numpy(x))
    assert isinstance(out["logits"], ort.OrtValue)
    np.testing.assert_allclose(out["logits"].numpy(), m(image=x)["logits"], rtol=1e-6)
    with pytest.raises(InputError, match="dtype int64"):
        m(image=ort.OrtValue.ortvalue_from_numpy(x.astype(np.int64)))
