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
from dslc.ir import example_sizes, symbol_names  # noqa: F401 - part of this module's interface
from dslc.layers import REGISTRY
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


# Ops whose output holds the values of their (integer) inputs, rearranged: ids stay ids through them.
VALUE_OPS = frozenset(
    {
        "concat",
        "cat",
        "stack",
        "split",
        "chunk",
        "unsqueeze",
        "squeeze",
        "reshape",
        "Reshape",
        "permute",
        "Permute",
        "transpose",
        "flatten",
        "Flatten",
        "Identity",
    }
)

Taint = frozenset  # of input positions whose values an expression may hold


class _Bounds:
    """Which inputs of each module feed an op taking ids (an Embedding, one_hot), and which inputs' values reach
    each output.

    Values are followed through assignments, value-preserving ops (VALUE_OPS, indexing, tuples) and
    into blocks, named groups and repeats; arithmetic and other ops make new values (`positions(ids)`
    feeds a position Embedding with positions, not with the ids)."""

    def __init__(self, program: ir.ProgramIR | None):
        self.program = program
        self.summaries: dict[int, tuple[dict[int, int], list[Taint]]] = {}  # by id() of the ModuleIR

    def summary(self, module: ir.ModuleIR) -> tuple[dict[int, int], list[Taint]]:
        """(input position -> smallest vocabulary it feeds, per output the inputs its values may hold)."""
        key = id(module)
        if key not in self.summaries:
            self.summaries[key] = ({}, [Taint() for _ in module.outputs])  # blocks do not recurse; never loop
            self.summaries[key] = self._walk(module)
        return self.summaries[key]

    def _walk(self, module: ir.ModuleIR) -> tuple[dict[int, int], list[Taint]]:
        bounds: dict[int, int] = {}
        env: dict[str, Taint] = {p.name: Taint({i}) for i, p in enumerate(module.inputs)}
        subs = {s.attr: s for s in module.submodules}

        def bound(taint: Taint, vocab: int) -> None:
            for i in taint:
                bounds[i] = min(bounds.get(i, vocab), vocab)

        def call(callee: ir.ModuleIR, args: list[Taint]) -> list[Taint]:
            callee_bounds, passes = self.summary(callee)
            for i, vocab in callee_bounds.items():
                if i < len(args):
                    bound(args[i], vocab)
            return [Taint().union(*(args[i] for i in p if i < len(args))) for p in passes]

        def layer(sub: ir.Submodule, args: list[Taint], outputs: int) -> list[Taint]:
            """Run the taints through a submodule: an op, a block, or a group / repeat (chained children)."""
            if sub.kind == "op":
                return op(sub.op, sub.init, args, outputs)
            if sub.kind == "block":
                if self.program is None:
                    return [Taint()] * outputs
                return call(self.program.module(sub.block), args)
            current = args
            for child in sub.children:
                current = layer(child, current, outputs) + args[1:]  # a repeat passes its extra inputs to every copy
            return current[:outputs]

        def op(name: str, init: dict[str, Any], args: list[Taint], outputs: int) -> list[Taint]:
            limit = REGISTRY[name].id_limit
            if limit is not None and args:
                bound(args[0], limit(init))
            if name in VALUE_OPS:
                return [Taint().union(*args)] * outputs
            return [Taint()] * outputs

        def target(path: str) -> ir.Submodule | None:
            return subs.get(path.removeprefix("self."))

        def taint(e: ir.Expr) -> list[Taint]:
            outputs = max(1, len(e.types))
            if isinstance(e, ir.Var):
                return [env.get(e.name, Taint())] * outputs
            if isinstance(e, ir.OpCall):
                return op(e.op, e.init, [taint(x)[0] for x in e.inputs], outputs)
            if isinstance(e, ir.ModuleCall):
                sub = target(e.module)
                args = [taint(x)[0] for x in e.inputs]
                return layer(sub, args, outputs) if sub else [Taint()] * outputs
            if isinstance(e, ir.GetItem):
                values = taint(e.value)
                return [values[e.index] if e.index < len(values) else Taint()]
            if isinstance(e, ir.Index):
                return taint(e.value)[:1]
            if isinstance(e, ir.TupleExpr):
                return [t for x in e.items for t in taint(x)]
            for x in ir.operands(e):  # arithmetic: new values, but Embeddings may sit inside
                taint(x)
            return [Taint()] * outputs

        for stmt in module.statements():
            if isinstance(stmt, ir.Assign):
                values = taint(stmt.value)
                if len(values) != len(stmt.targets):
                    values = [Taint().union(*values)] * len(stmt.targets)
                env.update(zip(stmt.targets, values))
            elif isinstance(stmt, ir.RepeatLoop):
                sub = target(stmt.module)
                args = [taint(stmt.first)[0], *(taint(x)[0] for x in stmt.extra)]
                env[stmt.target] = layer(sub, args, 1)[0] if sub else Taint()
        return bounds, [env.get(p.name, Taint()) for p in module.outputs]


def int_input_bounds(module: ir.ModuleIR, program: ir.ProgramIR | None = None) -> dict[str, int]:
    """For inputs feeding an op that takes ids (`Op.id_limit`), the smallest limit they feed (valid ids are below it).
    Blocks are looked up in `program`; without it only the module's own layers count."""
    bounds, _ = _Bounds(program).summary(module)
    return {module.inputs[i].name: vocab for i, vocab in bounds.items()}


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
