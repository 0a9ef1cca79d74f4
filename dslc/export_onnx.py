"""PyTorch module -> ONNX graph with named dynamic axes and dslc metadata.

The TorchScript-based exporter (`dynamo=False`) is used on purpose: with torch 2.13 the dynamo
exporter freezes the time dimension of bidirectional LSTM/GRU outputs at the example length, while
the TorchScript exporter writes real ONNX RNN ops with dynamic sequence length. Example sizes are
chosen > 1 and distinct per symbolic dimension so that no dimension gets specialised.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch

from dslc import __version__, ir
from dslc.ir import example_sizes, symbol_names  # noqa: F401 - part of this module's interface
from dslc.shapes import Sym

OPSET = 17
# onnxruntime 1.20+ reads IR version 10; never write newer than what the pinned runtime accepts.
MAX_IR_VERSION = 10
TORCH_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


@dataclass
class ExportResult:
    path: Path
    nodes: int
    opset: int
    ir_version: int


def concrete_shape(shape, sizes: dict[str, int]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else d.evaluate(sizes) for d in shape)


def int_input_bounds(module: ir.ModuleIR) -> dict[str, int]:
    """For integer inputs feeding an Embedding, the vocabulary size (valid ids are below it)."""
    bounds: dict[str, int] = {}

    def visit(e: Any) -> None:
        if isinstance(e, ir.OpCall) and e.op == "Embedding":
            for x in e.inputs:
                if isinstance(x, ir.Var):
                    bounds[x.name] = min(bounds.get(x.name, 1 << 30), e.init["num_embeddings"])
        for x in ir.operands(e) if e is not None else ():
            visit(x)

    for stmt in module.body:
        visit(getattr(stmt, "value", None) or getattr(stmt, "first", None))
    return bounds


def example_inputs(module: ir.ModuleIR, sizes: dict[str, int], seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    bounds = int_input_bounds(module)
    tensors = []
    for port in module.inputs:
        shape = concrete_shape(port.type.shape, sizes)
        dtype = TORCH_DTYPES[port.type.dtype]
        if port.type.dtype == "bool":
            tensors.append(torch.rand(shape, generator=generator) > 0.5)
        elif port.type.is_float:
            tensors.append(torch.randn(shape, generator=generator).to(dtype))
        else:
            high = bounds.get(port.name, 2)
            tensors.append(torch.randint(0, high, shape, generator=generator, dtype=dtype))
    return tuple(tensors)


def dynamic_axes(module: ir.ModuleIR) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for port in [*module.inputs, *module.outputs]:
        named = {i: str(d).replace(" ", "") for i, d in enumerate(port.type.shape) if isinstance(d, Sym)}
        if named:
            axes[port.name] = named
    return axes


def port_json(port: ir.Port) -> dict[str, Any]:
    return {
        "name": port.name,
        "dtype": port.type.dtype,
        "shape": [d if isinstance(d, int) else str(d).replace(" ", "") for d in port.type.shape],
        "doc": port.doc,
    }


def metadata(program: ir.ProgramIR, module: ir.ModuleIR) -> dict[str, str]:
    props = {
        "dslc.version": __version__,
        "dslc.spec": Path(program.path).name,
        "dslc.spec_sha256": program.sha256,
        "dslc.model": module.spec_name,
        "dslc.inputs": json.dumps([port_json(p) for p in module.inputs]),
        "dslc.outputs": json.dumps([port_json(p) for p in module.outputs]),
    }
    labels = program.labels.get(module.spec_name)
    if labels:
        props["dslc.labels"] = json.dumps(labels, ensure_ascii=False)
    if program.vocab:
        props["dslc.vocab"] = json.dumps(program.vocab, ensure_ascii=False)
    return props


ONNX_DTYPES = {
    "float32": onnx.TensorProto.FLOAT,
    "float64": onnx.TensorProto.DOUBLE,
    "float16": onnx.TensorProto.FLOAT16,
    "bfloat16": onnx.TensorProto.BFLOAT16,
    "int64": onnx.TensorProto.INT64,
    "int32": onnx.TensorProto.INT32,
    "int8": onnx.TensorProto.INT8,
    "uint8": onnx.TensorProto.UINT8,
    "bool": onnx.TensorProto.BOOL,
}


def _keep_declared_inputs(model: onnx.ModelProto, module: ir.ModuleIR) -> None:
    """The tracer drops inputs the graph never reads; the model's signature keeps every declared one."""
    present = {i.name: i for i in model.graph.input}
    ordered = []
    for port in module.inputs:
        if port.name in present:
            ordered.append(present.pop(port.name))
        else:
            shape = [d if isinstance(d, int) else str(d).replace(" ", "") for d in port.type.shape]
            ordered.append(onnx.helper.make_tensor_value_info(port.name, ONNX_DTYPES[port.type.dtype], shape))
    del model.graph.input[:]
    model.graph.input.extend(ordered + list(present.values()))


def export(torch_module: torch.nn.Module, program: ir.ProgramIR, module: ir.ModuleIR, path: Path) -> ExportResult:
    """Export to `path` (written whole; the caller stages it and renames after verification)."""
    torch_module.eval()
    args = example_inputs(module, example_sizes(module))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            torch_module,
            args,
            buffer,
            input_names=[p.name for p in module.inputs],
            output_names=[p.name for p in module.outputs],
            dynamic_axes=dynamic_axes(module),
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load_from_string(buffer.getvalue())
    _keep_declared_inputs(model, module)
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    model.producer_name, model.producer_version = "dslc", __version__
    model.doc_string = module.doc or ""
    del model.metadata_props[:]
    for key, value in metadata(program, module).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    path.write_bytes(model.SerializeToString())
    return ExportResult(path, len(model.graph.node), OPSET, model.ir_version)
