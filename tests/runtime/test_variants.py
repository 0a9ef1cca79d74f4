"""`Model.load(build, variant=...)`: a model's fp16/bf16/int8 graph found through the manifest, its sha256 checked."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from dslc_runtime import Model, ModelError

from dslc.build import build
from tests.conftest import ROOT, SPECS


@pytest.fixture(scope="module")
def variants_build(tmp_path_factory):
    """cnn with its float16 and int8 graphs (no bf16)."""
    out = tmp_path_factory.mktemp("variants") / "cnn"
    build(SPECS / "cnn.model", out, variants=("fp16", "int8"))
    return out


@pytest.fixture
def folder(variants_build, tmp_path):
    """A copy of the build each test may damage."""
    return shutil.copytree(variants_build, tmp_path / "cnn")


def test_a_variant_loads_the_graph_the_manifest_names_and_runs(folder):
    image = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    full = Model.load(folder, providers="cpu").run(image=image)["logits"]
    for kind in ("fp16", "int8"):
        model = Model.load(folder, variant=kind, providers="cpu")
        assert model.path.name == f"cnn.{kind}.onnx" and model.input_names == ["image"] and model.variant == kind
        assert f"'cnn' ({kind})" in repr(model)
        np.testing.assert_allclose(model.run(image=image)["logits"], full, atol=0.05)


def test_a_modified_variant_is_refused(folder):
    with open(folder / "cnn.int8.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelError, match="cnn.int8.onnx: sha256 is .* modified or corrupted after the build"):
        Model.load(folder, variant="int8", providers="cpu")


def test_a_variant_not_built_names_those_built_and_the_option(folder):
    with pytest.raises(ModelError) as caught:
        Model.load(folder, variant="bf16", providers="cpu")
    assert "has no bf16 graph (variants built: fp16, int8)" in str(caught.value)
    assert "dslc build ... --precision bf16" in str(caught.value)


def test_a_variant_needs_a_manifest(folder):
    with pytest.raises(
        ModelError, match="the fp16 variant is found through a build.s manifest.json, which this path is not"
    ):
        Model.load(folder / "cnn.onnx", variant="fp16", providers="cpu")
    with pytest.raises(ValueError, match="variant must be one of fp16, bf16, int8"):
        Model.load(folder, variant="fp8", providers="cpu")


def test_a_variant_outside_the_build_directory_is_refused(folder, tmp_path):
    manifest = json.loads((folder / "manifest.json").read_text())
    shutil.copy(folder / "cnn.fp16.onnx", tmp_path / "elsewhere.onnx")
    manifest["models"][0]["fp16"] = {"onnx": "../elsewhere.onnx"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="outside the build directory"):
        Model.load(folder, variant="fp16", providers="cpu")


def test_a_manifest_naming_a_graph_of_another_precision_is_refused(folder):
    """Checksums show the file is the one the manifest names, not that it is the kind the entry says."""
    manifest = json.loads((folder / "manifest.json").read_text())
    entry = manifest["models"][0]
    fp16, fp32 = dict(entry["fp16"]), {"onnx": entry["onnx"], "onnx_sha256": entry["onnx_sha256"]}
    entry["fp16"], entry["onnx"], entry["onnx_sha256"] = fp32, fp16["onnx"], fp16["onnx_sha256"]  # swapped
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="its fp16 graph cnn.onnx computes in float32, not float16"):
        Model.load(folder, variant="fp16", providers="cpu")
    with pytest.raises(ModelError, match="its graph cnn.fp16.onnx computes in float16, not float32"):
        Model.load(folder, providers="cpu")


def test_dslc_run_takes_a_variant(folder, tmp_path):
    np.save(tmp_path / "image.npy", np.zeros((1, 1, 28, 28), np.float32))
    run = [sys.executable, "-m", "dslc.cli", "run", str(folder), "-i", f"image={tmp_path / 'image.npy'}"]
    result = subprocess.run([*run, "--variant", "int8"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "cnn (int8) on CPUExecutionProvider" in result.stdout and "logits: float32[1, 10]" in result.stdout
    result = subprocess.run([*run, "--variant", "fp16", "--generate"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode != 0 and "generation uses its KV-cache graphs" in result.stderr
    assert "Traceback" not in result.stderr
