"""Builders of small real ONNX models (onnx.helper) for the dslc_runtime tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]
LABELS = ["cat", "dog", "bird"]
VOCAB = ["<pad>", "<bos>", "<eos>", "a", "b", "c", "d", "e", "f", "g"]
BOS, EOS = 1, 2


def save_model(
    path: Path,
    nodes: list,
    inputs: list,
    outputs: list,
    initializers: list | None = None,
    meta: dict[str, str] | None = None,
) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializers or [])
    model = helper.make_model(graph, opset_imports=OPSET, ir_version=8)
    if meta:
        helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def vi(name: str, elem: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def dslc_meta(name: str, inputs: list[dict], outputs: list[dict], **extra: object) -> dict[str, str]:
    meta = {
        "dslc.version": "0.1.0",
        "dslc.spec_sha256": "0" * 64,
        "dslc.model": name,
        "dslc.inputs": json.dumps(inputs),
        "dslc.outputs": json.dumps(outputs),
    }
    meta.update({f"dslc.{k}": json.dumps(v) for k, v in extra.items()})
    return meta


def build_classifier(path: Path) -> Path:
    """image: float32[batch, 1, 4, 4] -> logits: float32[batch, 3] (labels cat/dog/bird)."""
    w = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    ins = [
        {
            "name": "image",
            "dtype": "float32",
            "shape": ["batch", 1, 4, 4],
            "doc": "a tiny image",
        }
    ]
    outs = [
        {
            "name": "logits",
            "dtype": "float32",
            "shape": ["batch", 3],
            "doc": "class scores",
        }
    ]
    return save_model(
        path,
        [
            helper.make_node("Flatten", ["image"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        ],
        [vi("image", TensorProto.FLOAT, ["batch", 1, 4, 4])],
        [vi("logits", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(w, "w")],
        dslc_meta("classifier", ins, outs, labels=LABELS),
    )


def build_pair(path: Path) -> Path:
    """a, b: float32[batch, n], scale: float32[1] -> out = (a + b) * scale: float32[batch, n]."""
    return save_model(
        path,
        [
            helper.make_node("Add", ["a", "b"], ["s"]),
            helper.make_node("Mul", ["s", "scale"], ["out"]),
        ],
        [
            vi("a", TensorProto.FLOAT, ["batch", "n"]),
            vi("b", TensorProto.FLOAT, ["batch", "n"]),
            vi("scale", TensorProto.FLOAT, [1]),
        ],
        [vi("out", TensorProto.FLOAT, ["batch", "n"])],
    )


def build_generator(path: Path) -> Path:
    """z: float32[batch, 8] -> image: float32[batch, 6] (tanh(z @ W))."""
    w = np.random.default_rng(1).normal(size=(8, 6)).astype(np.float32)
    ins = [{"name": "z", "dtype": "float32", "shape": ["batch", 8], "doc": "noise"}]
    outs = [{"name": "image", "dtype": "float32", "shape": ["batch", 6], "doc": ""}]
    return save_model(
        path,
        [
            helper.make_node("MatMul", ["z", "w"], ["h"]),
            helper.make_node("Tanh", ["h"], ["image"]),
        ],
        [vi("z", TensorProto.FLOAT, ["batch", 8])],
        [vi("image", TensorProto.FLOAT, ["batch", 6])],
        [numpy_helper.from_array(w, "w")],
        dslc_meta("generator", ins, outs),
    )


def build_copy_encoder(path: Path) -> Path:
    """src: int64[batch, time] -> memory = src, state = zeros int64[batch, 1]."""
    return save_model(
        path,
        [
            helper.make_node("Identity", ["src"], ["memory"]),
            helper.make_node("Slice", ["src", "zero", "one", "one"], ["first"]),
            helper.make_node("Mul", ["first", "zero"], ["state"]),
        ],
        [vi("src", TensorProto.INT64, ["batch", "time"])],
        [
            vi("memory", TensorProto.INT64, ["batch", "time"]),
            vi("state", TensorProto.INT64, ["batch", 1]),
        ],
        [
            numpy_helper.from_array(np.array([0], np.int64), "zero"),
            numpy_helper.from_array(np.array([1], np.int64), "one"),
        ],
    )


def build_copy_decoder_step(path: Path, vocab: int = len(VOCAB)) -> Path:
    """Copy task step: logits = one_hot(memory[b, state[b]]), new_state = state + 1.

    Inputs: token int64[batch] (previous token, unused by the maths), memory int64[batch, time],
    state int64[batch, 1]. Outputs: logits float32[batch, vocab], new_state int64[batch, 1].
    """
    return save_model(
        path,
        [
            helper.make_node("GatherElements", ["memory", "state"], ["picked"], axis=1),
            helper.make_node("Squeeze", ["picked", "axis1"], ["picked1"]),
            helper.make_node("OneHot", ["picked1", "depth", "onoff"], ["logits"], axis=-1),
            helper.make_node("Add", ["state", "one"], ["new_state"]),
            helper.make_node("Identity", ["token"], ["echo"]),
        ],
        [
            vi("token", TensorProto.INT64, ["batch"]),
            vi("memory", TensorProto.INT64, ["batch", "time"]),
            vi("state", TensorProto.INT64, ["batch", 1]),
        ],
        [
            vi("logits", TensorProto.FLOAT, ["batch", vocab]),
            vi("new_state", TensorProto.INT64, ["batch", 1]),
            vi("echo", TensorProto.INT64, ["batch"]),
        ],
        [
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
            numpy_helper.from_array(np.array(vocab, np.int64), "depth"),
            numpy_helper.from_array(np.array([0.0, 1.0], np.float32), "onoff"),
            numpy_helper.from_array(np.array([[1]], np.int64), "one"),
        ],
    )


def build_counting_lm(path: Path, vocab: int = len(VOCAB)) -> Path:
    """tokens: int64[batch, time] -> logits: float32[batch, time, vocab] = one_hot((t + 1) % V)."""
    return save_model(
        path,
        [
            helper.make_node("Add", ["tokens", "one"], ["t1"]),
            helper.make_node("Mod", ["t1", "depth"], ["nxt"]),
            helper.make_node("OneHot", ["nxt", "depth", "onoff"], ["logits"], axis=-1),
        ],
        [vi("tokens", TensorProto.INT64, ["batch", "time"])],
        [vi("logits", TensorProto.FLOAT, ["batch", "time", vocab])],
        [
            numpy_helper.from_array(np.array(1, np.int64), "one"),
            numpy_helper.from_array(np.array(vocab, np.int64), "depth"),
            numpy_helper.from_array(np.array([0.0, 1.0], np.float32), "onoff"),
        ],
        {"dslc.vocab": json.dumps(VOCAB)},
    )


def build_external(folder: Path, name: str, location: str) -> Path:
    """y = x + W where W (float32[4]) is stored as external data at ``location``."""
    tensor = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[4])
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "W"], ["y"])],
        name,
        [vi("x", TensorProto.FLOAT, [4])],
        [vi("y", TensorProto.FLOAT, [4])],
        [tensor],
    )
    model = helper.make_model(graph, opset_imports=OPSET, ir_version=8)
    path = folder / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())
    return path
