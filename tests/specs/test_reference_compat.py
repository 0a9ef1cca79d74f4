"""resnet18.model is torchvision's resnet18 and bert_classifier.model is HuggingFace's
BertForSequenceClassification: same parameter and buffer names and shapes, same logits.

The fixtures were written by tests/fixtures/make_reference_fixtures.py from torchvision 0.29.1 and
transformers (BERT-Tiny config) with the deterministic weights of tests/fixtures/reference_weights.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dslc.export_onnx import export
from dslc.verify import session

from .conftest import FIXTURES, reference_image, reference_state_dict, reference_tokens


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def state_layout(model: torch.nn.Module) -> dict:
    return {
        k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")} for k, v in model.state_dict().items()
    }


@pytest.fixture(scope="module")
def resnet(built):
    return built("resnet18")


def test_resnet18_names_shapes_and_count(resnet):
    reference = fixture("resnet18_torchvision.json")
    model = resnet.model("resnet18")
    assert {k: list(p.shape) for k, p in model.named_parameters()} == reference["parameters"]
    assert state_layout(model) == reference["state_dict"]  # buffers too: running stats, num_batches_tracked
    assert list(model.state_dict()) == list(reference["state_dict"])  # same order
    assert sum(p.numel() for p in model.parameters()) == reference["parameter_count"] == 11_689_512
    assert resnet.result.models[0].params == 11_689_512


def test_resnet18_torchvision_state_dict_gives_torchvision_logits(resnet, tmp_path):
    reference = fixture("resnet18_torchvision.json")
    model = resnet.model("resnet18")
    model.load_state_dict(reference_state_dict(model), strict=True)
    image = reference_image()
    with torch.no_grad():
        logits = model(torch.from_numpy(image)).numpy()
    expected = np.array(reference["logits"], dtype=np.float32)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    # and the ONNX graph exported with those weights
    program = resnet.result.program
    path = tmp_path / "resnet18.onnx"
    export(model, program, program.model("resnet18"), path)
    (onnx_logits,) = session(path).run(["logits"], {"image": image})
    np.testing.assert_allclose(onnx_logits, expected, rtol=1e-4, atol=1e-4)
    assert (onnx_logits.argmax(-1) == expected.argmax(-1)).all()


@pytest.fixture(scope="module")
def bert(built):
    return built("bert_classifier")


def test_bert_names_and_shapes_match_huggingface(bert):
    reference = fixture("bert_classifier_hf.json")
    model = bert.model("bert_classifier")
    assert {k: list(p.shape) for k, p in model.named_parameters()} == reference["parameters"]
    assert state_layout(model) == reference["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == reference["parameter_count"]
    assert "bert.encoder.layer.1.attention.self.query.weight" in reference["state_dict"]


def test_bert_huggingface_weights_give_huggingface_logits(bert):
    """The build exported bert_classifier with the reference weights: PyTorch and ONNX match HF."""
    expected = np.array(fixture("bert_classifier_hf.json")["logits"], dtype=np.float32)
    feeds = reference_tokens()
    model = bert.model("bert_classifier")  # holds the reference weights
    with torch.no_grad():
        logits = model(*(torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask", "token_type_ids")))
    np.testing.assert_allclose(logits.numpy(), expected, rtol=1e-4, atol=1e-5)
    (onnx_logits,) = session(bert.onnx("bert_classifier")).run(["logits"], feeds)
    np.testing.assert_allclose(onnx_logits, expected, rtol=1e-4, atol=1e-5)
