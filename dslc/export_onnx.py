"""A model's ONNX file: the graph lowered from the IR (dslc.lower_onnx) with the module's weights, dslc's
metadata, the full ONNX check; and the example inputs export and verification use.

Example sizes are chosen > 1 and distinct per symbolic dimension, so a graph that froze a size shows
up in verification. Integer inputs that feed an op taking ids (an Embedding, one_hot: `Op.id_limit`), directly
or through blocks, groups and repeats, get ids from 0 to the limit - 1, both ends included, so verification sees
every valid id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch

from dslc import __version__, ir
from dslc.fileio import name_text
from dslc.id_flow import int_input_bounds
from dslc.ir import example_sizes, symbol_names  # noqa: F401 - part of this module's interface
from dslc.onnx_files import save
from dslc.shapes import Sym

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
    unused: dict[str, int] = field(default_factory=dict)  # layer -> parameters no output depends on


def concrete_shape(shape, sizes: dict[str, int]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else d.evaluate(sizes) for d in shape)


def example_inputs(
    module: ir.ModuleIR, sizes: dict[str, int], seed: int = 0, program: ir.ProgramIR | None = None
) -> tuple[torch.Tensor, ...]:
    """Random inputs at `sizes`. An integer input feeding an op taking ids holds ids below its limit,
    other integer inputs 0 and 1; the first element is 0 and the last the largest valid id (the only
    element, of a one-element input), so the whole range is exercised, not what the draw happens to hit."""
    generator = torch.Generator().manual_seed(seed)
    bounds = int_input_bounds(module, program)
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
            ids = torch.randint(0, high, shape, generator=generator, dtype=dtype)
            flat = ids.view(-1)
            if flat.numel():
                flat[-1] = high - 1
            if flat.numel() > 1:
                flat[0] = 0
            tensors.append(ids)
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
        "dslc.spec": name_text(program.path),
        "dslc.spec_sha256": program.sha256,
        "dslc.model": module.spec_name,
        "dslc.inputs": json.dumps([port_json(p) for p in module.inputs]),
        "dslc.outputs": json.dumps([port_json(p) for p in module.outputs]),
    }
    largest = ir.largest_sizes(module)
    if largest:
        props["dslc.max_sizes"] = json.dumps(largest)
    labels = program.labels.get(module.spec_name)
    if labels:
        props["dslc.labels"] = json.dumps(labels, ensure_ascii=False)
    if program.vocab:
        props["dslc.vocab"] = json.dumps(program.vocab, ensure_ascii=False)
    return props


class ExportError(Exception):
    """The model cannot be written as ONNX; the message says why, on one line."""


def export(torch_module: torch.nn.Module, program: ir.ProgramIR, module: ir.ModuleIR, path: Path) -> ExportResult:
    """Write the model's graph, lowered from the IR with `torch_module`'s weights, to `path` (written whole; the
    caller stages it and renames after verification). Raises ExportError when an op has no ONNX form."""
    from dslc.lower_onnx import lower, lowerable
    from dslc.onnx_graph import NotLowerableError

    missing = lowerable(program, module)
    if missing is not None:
        raise ExportError(f"{missing} has no ONNX lowering")
    arrays, read = state_arrays(torch_module), set()
    try:
        model = lower(program, module, arrays, read)
    except NotLowerableError as exc:
        raise ExportError(str(exc)) from exc
    result = _finish(model, program, module, path)
    for key, parameter in torch_module.named_parameters():  # one name per tensor: tied weights count once
        if id(arrays[key]) not in read:
            layer = key.rpartition(".")[0] or key
            result.unused[layer] = result.unused.get(layer, 0) + parameter.numel()
    return result


def state_arrays(torch_module: torch.nn.Module) -> dict[str, Any]:
    """The state dict as numpy arrays; keys that share a tensor (tied weights) share one array."""
    by_storage: dict[tuple[int, tuple[int, ...]], Any] = {}
    arrays = {}
    for key, tensor in torch_module.state_dict().items():
        identity = (tensor.data_ptr(), tuple(tensor.shape))
        if identity not in by_storage:
            by_storage[identity] = tensor.detach().cpu().numpy()
        arrays[key] = by_storage[identity]
    return arrays


def _finish(model: onnx.ModelProto, program: ir.ProgramIR, module: ir.ModuleIR, path: Path) -> ExportResult:
    """dslc's metadata, the file and its full check; the node count is what runs (no Constant nodes exist)."""
    model.producer_name, model.producer_version = "dslc", __version__
    model.doc_string = module.doc or ""
    del model.metadata_props[:]
    for key, value in metadata(program, module).items():
        model.metadata_props.add(key=key, value=value)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    save(model, path)  # with the full check; a large model's weights go to a file beside it
    return ExportResult(path, len(model.graph.node), opset, model.ir_version)
