"""resnet18.model, mobilenet_v2.model, squeezenet.model and vgg.model are torchvision's; bert_classifier.model, vit.model, gpt2.model and
llama.model are HuggingFace's (BertForSequenceClassification, ViTForImageClassification, GPT2LMHeadModel,
LlamaForCausalLM): same parameter and buffer names and shapes, same logits.

The fixtures were written by tests/fixtures/make_reference_fixtures.py from torchvision 0.29.1 and
transformers (BERT-Tiny config) with the deterministic weights of tests/fixtures/reference_weights.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dslc.build import build, load_generated
from dslc.export_onnx import export
from dslc.verify import session

from .conftest import FIXTURES, SPECS_DIR, reference_image, reference_state_dict, reference_tokens


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


@pytest.fixture(scope="module")
def mobilenet(built):
    return built("mobilenet_v2")


def test_mobilenet_v2_names_shapes_and_count(mobilenet):
    reference = fixture("mobilenet_v2_torchvision.json")
    model = mobilenet.model("mobilenet_v2")
    assert state_layout(model) == reference["state_dict"]  # features.1.conv.0.0.weight, ..., classifier.1.bias
    assert list(model.state_dict()) == list(reference["state_dict"])  # same order
    assert sum(p.numel() for p in model.parameters()) == reference["parameter_count"] == 3_504_872
    assert mobilenet.result.models[0].params == 3_504_872


def test_mobilenet_v2_torchvision_state_dict_gives_torchvision_logits(mobilenet, tmp_path):
    reference = fixture("mobilenet_v2_torchvision.json")
    model = mobilenet.model("mobilenet_v2")
    model.load_state_dict(reference_state_dict(model), strict=True)
    image = reference_image()
    with torch.no_grad():
        logits = model(torch.from_numpy(image)).numpy()
    expected = np.array(reference["logits"], dtype=np.float32)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5 * max(1.0, scale))
    program = mobilenet.result.program
    path = tmp_path / "mobilenet_v2.onnx"
    export(model, program, program.model("mobilenet_v2"), path)
    (onnx_logits,) = session(path).run(["logits"], {"image": image})
    np.testing.assert_allclose(onnx_logits, expected, rtol=0, atol=1e-5 * max(1.0, scale))


def test_squeezenet_torchvision_state_dict_gives_torchvision_logits(built, tmp_path):
    """squeezenet1_1's names, shapes and count, its logits in PyTorch and in the ONNX graph."""
    reference = fixture("squeezenet_torchvision.json")
    b = built("squeezenet")
    model = b.model("squeezenet")
    assert state_layout(model) == reference["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == reference["parameter_count"] == 1_235_496
    model.load_state_dict(reference_state_dict(model), strict=True)
    image = reference_image()
    with torch.no_grad():
        logits = model(torch.from_numpy(image)).numpy()
    expected = np.array(reference["logits"], dtype=np.float32)
    scale = max(1.0, np.abs(expected).max())
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5 * scale)
    program = b.result.program
    path = tmp_path / "squeezenet.onnx"
    export(model, program, program.model("squeezenet"), path)
    (onnx_logits,) = session(path).run(["logits"], {"image": image})
    np.testing.assert_allclose(onnx_logits, expected, rtol=0, atol=1e-5 * scale)


@pytest.fixture(scope="module")
def vit(built):
    return built("vit")


def test_vit_names_and_shapes_match_huggingface(vit):
    reference = fixture("vit_hf.json")
    model = vit.model("vit")
    assert state_layout(model) == reference["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == reference["parameter_count"]
    assert reference["state_dict"]["vit.embeddings.cls_token"]["shape"] == [1, 1, 64]


def test_vit_huggingface_weights_give_huggingface_logits(vit):
    """The build exported vit with the reference weights: PyTorch and ONNX match HF."""
    expected = np.array(fixture("vit_hf.json")["logits"], dtype=np.float32)
    image = reference_image(size=32)
    model = vit.model("vit")  # holds the reference weights
    with torch.no_grad():
        logits = model(torch.from_numpy(image)).numpy()
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5)
    (onnx_logits,) = session(vit.onnx("vit")).run(["logits"], {"pixel_values": image})
    np.testing.assert_allclose(onnx_logits, expected, rtol=1e-4, atol=1e-5)  # onnxruntime's fused kernels: ~3e-5


# ---------------------------------------------------------------- causal language models


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def causal_lm(request, built):
    return request.param, built(request.param)


def test_causal_lm_names_shapes_and_count_match_huggingface(causal_lm):
    name, b = causal_lm
    reference = fixture(f"{name}_hf.json")
    model = b.model(name)
    assert state_layout(model) == reference["state_dict"]  # the tied lm_head.weight included, in GPT-2's order too
    assert sum(p.numel() for p in model.parameters()) == reference["parameter_count"]


def test_gpt2_lm_head_is_the_token_embedding(built):
    """One tensor under two names: in the module, its parameter count, and the ONNX graph's initializers."""
    import onnx

    b = built("gpt2")
    model = b.model("gpt2")
    assert model.lm_head.weight is model.transformer.wte.weight
    state = model.state_dict()
    assert state["lm_head.weight"].data_ptr() == state["transformer.wte.weight"].data_ptr()
    graph = onnx.load(b.onnx("gpt2")).graph
    tables = [t for t in graph.initializer if list(t.dims) in ([256, 128], [128, 256])]
    assert len(tables) == 2  # wte (shared with lm_head) and wpe, which is [positions, width] = [256, 128]


def test_causal_lm_huggingface_weights_give_huggingface_logits(causal_lm):
    """The build exported the model with the reference weights: PyTorch, ONNX and the KV-cache graphs match HF."""
    name, b = causal_lm
    expected = np.array(fixture(f"{name}_hf.json")["logits"], dtype=np.float32)
    ids = reference_tokens(batch=2, time=11, vocab=256)["input_ids"]
    model = b.model(name)
    with torch.no_grad():
        logits = model(torch.from_numpy(ids)).numpy()
    # float32 over realistic weights: gpt2's logits reach 13.6, and CPUs with other vector units round differently
    # (1.2e-4 seen on one machine, under 1e-4 on another)
    atol = max(1e-4, 2e-5 * np.abs(expected).max())
    np.testing.assert_allclose(logits, expected, rtol=0, atol=atol)
    (onnx_logits,) = session(b.onnx(name)).run(["logits"], {"input_ids": ids})
    np.testing.assert_allclose(onnx_logits, expected, rtol=0, atol=atol)
    prefill, step = session(b.out / f"{name}.prefill.onnx"), session(b.out / f"{name}.decode_step.onnx")
    outputs = [o.name for o in prefill.get_outputs()]
    first = dict(zip(outputs, prefill.run(outputs, {"input_ids": ids[:, :6]})))
    np.testing.assert_allclose(first["logits"], expected[:, :6], rtol=0, atol=atol)
    past = {k.replace("present.", "past_key_values."): v for k, v in first.items() if k.startswith("present.")}
    outputs = [o.name for o in step.get_outputs()]
    rest = dict(zip(outputs, step.run(outputs, {"input_ids": ids[:, 6:], **past})))
    np.testing.assert_allclose(rest["logits"], expected[:, 6:], rtol=0, atol=atol)


@pytest.mark.slow  # 138M parameters: a minute and 5 GB
def test_vgg16_bn_torchvision_state_dict_gives_torchvision_logits(tmp_path):
    """vgg16_bn's Sequential indices (pools and ReLUs counted), its logits at 64 px in PyTorch and ONNX: the features
    end at 2x2, which the adaptive pool spreads over 7x7 (TorchScript's exporter refused such sizes)."""
    reference = fixture("vgg_torchvision.json")
    result = build(SPECS_DIR / "vgg.model", tmp_path / "vgg", ["image_size=64"], verify_onnx=False)
    model = load_generated(result.python_path).MODELS["vgg"]().eval()
    assert state_layout(model) == reference["state_dict"]  # features.0, features.1, features.3, ..., classifier.6
    assert list(model.state_dict()) == list(reference["state_dict"])
    assert sum(p.numel() for p in model.parameters()) == reference["parameter_count"] == 138_365_992
    state = reference_state_dict(model)
    # running statistics measured on the image (the formula's would drown the input's signal; see the fixture maker)
    state.update({k: torch.tensor(v) for k, v in reference["batch_norm_statistics"].items()})
    model.load_state_dict(state, strict=True)
    image = reference_image(size=64)
    with torch.no_grad():
        features = model.features(torch.from_numpy(image)).numpy()
        logits = model(torch.from_numpy(image)).numpy()
    # thirteen convolutions, each normalised by statistics of two images: float32 differences of ~1e-4 between
    # torch builds; a swapped pair of channels in any layer moves the features by 0.4 or more
    expected_features = np.array(reference["features"], dtype=np.float32)
    np.testing.assert_allclose(features, expected_features, rtol=0, atol=2e-4 * np.abs(expected_features).max())
    expected = np.array(reference["logits"], dtype=np.float32)
    scale = max(1.0, np.abs(expected).max())
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5 * scale)
    program = result.program
    path = tmp_path / "vgg.onnx"
    export(model, program, program.model("vgg"), path)
    (onnx_logits,) = session(path).run(["logits"], {"image": image})
    np.testing.assert_allclose(onnx_logits, expected, rtol=0, atol=1e-5 * scale)
