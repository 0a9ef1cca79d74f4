"""Input preprocessing that travels with a trained model.

A data set that standardises a field (`csv(..., standardize=true)`, `image_folder(..., standardize=true)`) or that
scales pixels (`raw_pixels=true`) records, in `Data.preprocess`, the transform from the raw values an application
has to what the model trained on: `(raw - subtract) / divide`, with statistics from the training split only. The
export prepends that transform to the ONNX graph of every exported model whose input is fed by the field (a `Sub`
and a `Div` on the graph input, which keeps its name, dtype and shape), records it in the ONNX metadata
(`dslc.preprocess`), the manifest and config.json, and verifies the written graph against the PyTorch model behind
the same transform (`Raw`), so verification still compares like with like.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from dslc import ir
from dslc.fileio import write_atomic
from dslc.onnx_files import save

Transform = dict[str, Any]  # {"subtract": number or nested list, "divide": ..., "raw": what the input holds}


def model_inputs(module: ir.ModuleIR, preprocess: dict[str, Transform]) -> dict[str, Transform]:
    """The model's float inputs named like a preprocessed field whose transform broadcasts over their sizes."""
    found = {}
    outputs = {p.name for p in module.outputs}
    for port in module.inputs:
        transform = preprocess.get(port.name)
        if transform is None or not port.type.is_float or port.name in outputs:
            continue
        dims = port.type.shape[1:]  # the batch axis is never transformed
        shapes = [np.shape(transform["subtract"]), np.shape(transform["divide"])]
        if all(len(s) <= len(dims) and all(n == 1 or n == d for n, d in zip(s[::-1], dims[::-1])) for s in shapes):
            found[port.name] = transform
    return found


def _constant(value: Any) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


def prepend(path: Path, inputs: dict[str, Transform]) -> int:
    """Rewrite the ONNX file at `path` so that each input in `inputs` goes through `(raw - subtract) / divide`
    before the graph reads it; returns the graph's node count."""
    model = onnx.load(path)
    graph = model.graph
    nodes, initializers = [], []
    for name, transform in inputs.items():
        dtype = next(i.type.tensor_type.elem_type for i in graph.input if i.name == name)
        normalized = f"dslc_preprocess_{name}"
        for node in graph.node:
            node.input[:] = [normalized if x == name else x for x in node.input]
        np_type = helper.tensor_dtype_to_np_dtype(dtype)
        sub = numpy_helper.from_array(_constant(transform["subtract"]).astype(np_type), f"{normalized}_subtract")
        div = numpy_helper.from_array(_constant(transform["divide"]).astype(np_type), f"{normalized}_divide")
        initializers += [sub, div]
        nodes += [
            helper.make_node("Sub", [name, sub.name], [f"{normalized}_centered"], name=f"{normalized}_sub"),
            helper.make_node("Div", [f"{normalized}_centered", div.name], [normalized], name=f"{normalized}_div"),
        ]
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *rest])  # first: the nodes stay topologically sorted
    graph.initializer.extend(initializers)
    meta = {k.key: k.value for k in model.metadata_props}
    meta["dslc.preprocess"] = json.dumps(inputs, ensure_ascii=False)
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    nodes = len(graph.node)
    save(model, path)  # the build's staging file (with the full check): renamed into place after verification
    return nodes


class Raw(nn.Module):
    """`model` behind the same transforms as its ONNX graph: verification feeds both the same raw inputs."""

    def __init__(self, model: nn.Module, module: ir.ModuleIR, inputs: dict[str, Transform]):
        super().__init__()
        self.model, self.names = model, [p.name for p in module.inputs]
        self.transforms = {
            name: (torch.from_numpy(_constant(t["subtract"])), torch.from_numpy(_constant(t["divide"])))
            for name, t in inputs.items()
        }

    def forward(self, *xs: torch.Tensor) -> Any:
        args = []
        for name, x in zip(self.names, xs):
            if name in self.transforms:
                subtract, divide = self.transforms[name]
                x = (x - subtract.to(x.dtype)) / divide.to(x.dtype)
            args.append(x)
        return self.model(*args)


def record_in_config(out: Path, preprocess: dict[str, Transform]) -> None:
    """config.json of the run folder gets the data set's transforms (what an application must know of its inputs)."""
    path = out / "config.json"
    if not preprocess or not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    config["preprocess"] = preprocess
    write_atomic(path, json.dumps(config, indent=2) + "\n")
