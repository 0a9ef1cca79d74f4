"""Fixtures for the dslc_runtime tests: small real ONNX models built with onnx.helper."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("onnx")
# Make the helper module importable whatever pytest import mode the repository uses.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rt_models import (
    build_classifier,
    build_copy_decoder_step,
    build_copy_encoder,
    build_counting_lm,
    build_generator,
    build_pair,
)


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("models")
    return SimpleNamespace(
        root=root,
        classifier=build_classifier(root / "classifier.onnx"),
        pair=build_pair(root / "pair.onnx"),
        generator=build_generator(root / "generator.onnx"),
        encoder=build_copy_encoder(root / "encoder.onnx"),
        decoder_step=build_copy_decoder_step(root / "decoder_step.onnx"),
        lm=build_counting_lm(root / "lm.onnx"),
    )


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dslc-style build directory with two models and a manifest."""
    root = tmp_path_factory.mktemp("build")
    build_classifier(root / "cnn.onnx")
    build_generator(root / "generator.onnx")
    manifest = {
        "dslc_version": "0.1.0",
        "spec": "demo.model",
        "spec_sha256": "0" * 64,
        "models": [
            {
                "name": "cnn",
                "onnx": "cnn.onnx",
                "inputs": [
                    {
                        "name": "image",
                        "dtype": "float32",
                        "shape": ["batch", 1, 4, 4],
                        "doc": "from manifest",
                    }
                ],
                "outputs": [
                    {
                        "name": "logits",
                        "dtype": "float32",
                        "shape": ["batch", 3],
                        "doc": "",
                    }
                ],
            },
            {"name": "generator", "onnx": "generator.onnx"},  # no ports listed: metadata gives docs
        ],
    }
    for entry in manifest["models"]:
        entry["onnx_sha256"] = hashlib.sha256((root / entry["onnx"]).read_bytes()).hexdigest()
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root
