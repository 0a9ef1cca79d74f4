"""Untrusted files: corrupt/truncated models and external data escaping the model folder."""

from __future__ import annotations

import os

import numpy as np
import pytest
from dslc_runtime import Model, ModelError
from rt_models import build_external


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda b: b[: len(b) // 2], id="truncated-half"),
        pytest.param(lambda b: b[:-3], id="truncated-end"),
        pytest.param(lambda b: b"", id="empty"),
        pytest.param(lambda b: b"\xff" * 64, id="garbage"),
        pytest.param(lambda b: b"hello, this is not a model", id="text"),
    ],
)
def test_corrupt_file_gives_model_error(tmp_path, models, mangle):
    path = tmp_path / "bad.onnx"
    path.write_bytes(mangle(models.classifier.read_bytes()))
    with pytest.raises(ModelError) as info:
        Model.load(path, providers="cpu")
    assert str(path) in str(info.value)
    assert "Traceback" not in str(info.value)


def test_onnxruntime_load_errors_are_wrapped(tmp_path, models):
    # Valid protobuf framing but an unsupported opset: onnxruntime itself refuses it.
    data = models.pair.read_bytes().replace(b"\x10\x11", b"\x10\x7f")  # opset 17 -> 127
    path = tmp_path / "future.onnx"
    path.write_bytes(data)
    with pytest.raises(ModelError, match="onnxruntime cannot load") as info:
        Model.load(path, providers="cpu")
    message = str(info.value)
    assert "Opset 127" in message
    assert "onnxruntime_src" not in message and "[ONNXRuntimeError]" not in message


def test_external_data_inside_folder_loads(tmp_path):
    np.arange(4, dtype=np.float32).tofile(tmp_path / "weights.bin")
    path = build_external(tmp_path, "ok", "weights.bin")
    out = Model.load(path, providers="cpu")(x=np.ones(4, np.float32))
    np.testing.assert_allclose(out["y"], [1, 2, 3, 4])


@pytest.mark.parametrize("location", ["../secret.bin", "sub/../../secret.bin", "..\\secret.bin"])
def test_external_data_dotdot_refused(tmp_path, location):
    np.zeros(4, np.float32).tofile(tmp_path / "secret.bin")
    folder = tmp_path / "model"
    folder.mkdir()
    path = build_external(folder, "evil", location)
    with pytest.raises(ModelError, match="refusing to load.*outside the model's folder"):
        Model.load(path, providers="cpu")


def test_external_data_absolute_refused(tmp_path):
    secret = tmp_path / "secret.bin"
    np.zeros(4, np.float32).tofile(secret)
    folder = tmp_path / "model"
    folder.mkdir()
    for location in (str(secret), "/etc/passwd"):
        path = build_external(folder, "abs", location)
        with pytest.raises(ModelError, match="absolute paths and '..' are not allowed"):
            Model.load(path, providers="cpu")


@pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")
def test_external_data_symlink_escape_refused(tmp_path):
    np.zeros(4, np.float32).tofile(tmp_path / "secret.bin")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.bin").symlink_to(tmp_path / "secret.bin")
    path = build_external(folder, "link", "weights.bin")
    with pytest.raises(ModelError, match="resolves to .* outside the model's folder"):
        Model.load(path, providers="cpu")


def test_external_data_missing_file(tmp_path):
    path = build_external(tmp_path, "missing", "nowhere.bin")
    with pytest.raises(ModelError, match="external data file 'nowhere.bin' .* is missing"):
        Model.load(path, providers="cpu")
