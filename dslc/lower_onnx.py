"""Pass 6, the ONNX back-end: a checked model's IR -> an ONNX graph, written from the registry's lowerings.

No tracing and no torch: the IR knows every value's type and every layer's arguments, and each op's
registry entry knows its ONNX form (`Op.onnx`). The weights come as numpy arrays keyed like the
generated module's state_dict (`layer1.0.conv1.weight`); an array two keys share (tied weights) is
stored once. Blocks, named groups and repeats are inlined: onnxruntime's fusions (Gemm, LayerNorm,
attention) match across them, and ONNX local functions cannot hold initializers. Symbolic sizes are
named dynamic axes (`batch`); every value gets its inferred shape in value_info, checked by ONNX's
strict shape inference.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import onnx
from onnx import helper

from dslc import ir
from dslc import onnx_passes as passes
from dslc.layers import REGISTRY
from dslc.onnx_files import infer_shapes
from dslc.onnx_graph import ONNX_DTYPES, Graph, NotLowerableError, Value
from dslc.shapes import TensorType

OPSET = 23  # Attention and RMSNormalization (23), Gelu (20), LayerNormalization (17)
IR_VERSION = 11  # opset 23's
_BINARY = {"+": "Add", "-": "Sub", "*": "Mul", "/": "Div", "**": "Pow", "@": "MatMul", "%": "Mod"}
_COMPARE = {"==": "Equal", "<": "Less", "<=": "LessOrEqual", ">": "Greater", ">=": "GreaterOrEqual"}


def lowerable(program: ir.ProgramIR, module: ir.ModuleIR) -> str | None:
    """None when every op and expression of the model (its blocks included) has an ONNX lowering, else
    what has none."""
    return next((op for op, _ in ops_used(program, module) if REGISTRY[op].onnx is None), None)


def ops_used(program: ir.ProgramIR, module: ir.ModuleIR) -> Iterator[tuple[str, dict[str, Any]]]:
    """(op, init) of every layer and inline function of the model, its blocks included."""
    for mod in _modules(program, module):
        for sub in _all_submodules(mod.submodules):
            if sub.kind == "op":
                yield sub.op, sub.init
        for stmt in mod.statements():
            for value in ir.values(stmt):
                for e in ir.subexpressions(value):
                    if isinstance(e, ir.OpCall):
                        yield e.op, e.init


def lower(
    program: ir.ProgramIR, module: ir.ModuleIR, weights: dict[str, np.ndarray], read: set[int] | None = None
) -> onnx.ModelProto:
    """The model as an ONNX ModelProto (without dslc's metadata; dslc.export_onnx adds it). `read` gets the ids of
    the arrays of `weights` the graph uses."""
    graph = lowered_graph(program, module, Graph(weights=weights, read=set() if read is None else read))
    onnx_graph = helper.make_graph(
        graph.nodes,
        module.spec_name,
        [value_info(p.name, p.type) for p in module.inputs],
        [value_info(p.name, p.type) for p in module.outputs],
        list(graph.initializers.values()),
    )
    model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    return infer_shapes(model)


def lowered_graph(program: ir.ProgramIR, module: ir.ModuleIR, graph: Graph) -> Graph:
    """The model's nodes and initializers in `graph`, its outputs under their own names."""
    graph.used |= {p.name for p in [*module.inputs, *module.outputs]}  # fresh names never take a port's
    inputs = _typed(graph, [Value(p.name, p.type) for p in module.inputs])
    graph.inputs = [p.name for p in module.inputs]
    outputs = _Lowering(program, graph).module(module, "", inputs)
    _name_outputs(graph, module.outputs, outputs)
    keep = {p.name for p in module.outputs} | _cached_outputs(graph)
    passes.drop_dead_nodes(graph, keep)  # first, so that the weights the graph uses are known before folding
    graph.record_live_weights()
    _fold_batchnorm(graph, keep)
    passes.fuse_written_attention(graph, keep)
    _fold_transposes(graph, keep)
    passes.fold_position_tables(graph, keep)
    passes.fold_shape_slices(graph, keep)
    passes.fold_sibling_matmuls(graph, keep)
    passes.fold_add_chains(graph, keep)
    passes.drop_dead_nodes(graph, keep)
    return graph


def _cached_outputs(graph: Graph) -> set[str]:
    """The present.N.key/.value values of a decoder's KV-cache graphs, outputs that no node reads."""
    if graph.cache is None:
        return set()
    from dslc.decoding import PRESENT

    return {PRESENT.format(layer.index, kind) for layer in graph.cache.layers for kind in ("key", "value")}


def _name_outputs(graph: Graph, ports: list[ir.Port], values: list[Value]) -> None:
    """Give each output's value the output's name: the node computing it writes it directly; an output that is
    an input, or the value of another output too, is an Identity."""
    producers = {out: node for node in graph.nodes for out in node.output}
    renamed: dict[str, str] = {}
    for port, value in zip(ports, values):
        node = producers.get(value.name)
        if node is None or value.name in renamed:
            graph.node("Identity", [renamed.get(value.name, value.name)], [port.name])
            continue
        renamed[value.name] = port.name
    for node in graph.nodes:
        node.output[:] = [renamed.get(n, n) for n in node.output]
        node.input[:] = [renamed.get(n, n) for n in node.input]
    for old, new in renamed.items():
        if old in graph.types:
            graph.types[new] = graph.types[old]


def _fold_batchnorm(graph: Graph, outputs: set[str]) -> None:
    """Conv -> BatchNormalization (inference) becomes one Conv with scaled weights, as PyTorch's exporter and
    onnxruntime do; the Conv's output must feed nothing else (and not be a graph output)."""
    from onnx import numpy_helper

    consumers: dict[str, int] = {}
    for node in graph.nodes:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    producers = {out: node for node in graph.nodes for out in node.output}
    init = graph.initializers
    kept = []
    for node in graph.nodes:
        conv = producers.get(node.input[0]) if node.op_type == "BatchNormalization" else None
        if conv is None or conv.op_type != "Conv" or consumers.get(conv.output[0]) != 1 or conv.output[0] in outputs:
            kept.append(node)
            continue
        if not all(n in init for n in [*node.input[1:], *conv.input[1:]]):
            kept.append(node)
            continue
        scale, shift, mean, var = (numpy_helper.to_array(init[n]) for n in node.input[1:])
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        factor = scale / np.sqrt(var + eps)
        weight = numpy_helper.to_array(init[conv.input[1]])
        bias = numpy_helper.to_array(init[conv.input[2]]) if len(conv.input) > 2 else np.zeros_like(mean)
        folded_weight = graph.constant(weight * factor.reshape(-1, *[1] * (weight.ndim - 1)), "float32", conv.input[1])
        folded_bias = graph.constant((bias - mean) * factor + shift, "float32", f"{conv.input[1]}_bias")
        conv.input[:] = [conv.input[0], folded_weight, folded_bias]
        conv.output[:] = [node.output[0]]
    graph.nodes[:] = kept
    used = {n for node in graph.nodes for n in node.input}
    for name in [n for n in init if n not in used]:
        del init[name]


def _fold_transposes(graph: Graph, outputs: set[str]) -> None:
    """Transpose -> Transpose becomes one Transpose with the composed permutation (attention's keys: split into
    heads, then turned for the scores), where the first feeds nothing else."""
    consumers: dict[str, int] = {}
    for node in graph.nodes:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    producers = {out: node for node in graph.nodes for out in node.output}
    removed = set()
    for node in graph.nodes:
        inner = producers.get(node.input[0]) if node.op_type == "Transpose" else None
        if inner is None or inner.op_type != "Transpose" or consumers.get(inner.output[0]) != 1:
            continue
        if inner.output[0] in outputs or id(inner) in removed:
            continue
        first = list(next(a.ints for a in inner.attribute if a.name == "perm"))
        second = list(next(a.ints for a in node.attribute if a.name == "perm"))
        node.input[0] = inner.input[0]
        del node.attribute[:]
        node.attribute.append(helper.make_attribute("perm", [first[i] for i in second]))
        removed.add(id(inner))
    graph.nodes[:] = [n for n in graph.nodes if id(n) not in removed]


class _Lowering:
    def __init__(self, program: ir.ProgramIR, graph: Graph) -> None:
        self.program = program
        self.graph = graph

    def module(self, module: ir.ModuleIR, prefix: str, inputs: list[Value]) -> list[Value]:
        """Inline one module (a model, or a block at `prefix` in the state dict) on `inputs`."""
        env: dict[str, Value] = {p.name: v for p, v in zip(module.inputs, inputs)}
        subs = {s.attr: s for s in module.submodules}
        scope = _Scope(self, env, subs, prefix)
        for stmt in module.statements():
            scope.statement(stmt)
        return [env[p.name] for p in module.outputs]

    def submodule(self, sub: ir.Submodule, prefix: str, inputs: list[Value], types: list[TensorType]) -> list[Value]:
        """A layer, a block, or a container of them (a named group runs its children in turn)."""
        key = f"{prefix}{sub.attr}."
        if sub.kind == "op":
            if not types:  # a container's inner layer: its output types from its shape rule
                types = REGISTRY[sub.op].infer(sub.args, [v.type for v in inputs]).outputs
            return self.op(sub.op, inputs, types, sub.init, key)
        if sub.kind == "block":
            return self.module(self.program.module(sub.block), key, inputs)
        current = inputs
        for i, child in enumerate(sub.children):
            current = self.submodule(_renamed(child, str(i)), key, current, types if i == len(sub.children) - 1 else [])
        return current

    def op(
        self, name: str, inputs: list[Value], types: list[TensorType], init: dict[str, Any], key: str
    ) -> list[Value]:
        lowering = REGISTRY[name].onnx
        if lowering is None:
            raise NotLowerableError(f"{name} has no ONNX lowering yet")
        names = lowering(self.graph, inputs, types, init, key)
        return _typed(self.graph, [Value(n, t) for n, t in zip(names, types)])


class _Scope:
    """One module's statements: its values by name and its submodules by attribute."""

    def __init__(self, lowering: _Lowering, env: dict[str, Value], subs: dict[str, ir.Submodule], prefix: str):
        self.lowering, self.graph, self.env, self.subs, self.prefix = lowering, lowering.graph, env, subs, prefix

    def statement(self, stmt: ir.Stmt) -> None:
        if isinstance(stmt, ir.Assign):
            values = self.expr(stmt.value)
            for target, value in zip(stmt.targets, values):
                self.env[target] = value
        elif isinstance(stmt, ir.RepeatLoop):
            current = self.expr(stmt.first)
            extra = [v for e in stmt.extra for v in self.expr(e)]
            sub = self.subs[stmt.module]
            types = current[0].type
            for i, child in enumerate(sub.children):
                current = self.lowering.submodule(
                    _renamed(child, str(i)), f"{self.prefix}{sub.attr}.", [*current, *extra], [types]
                )
            self.env[stmt.target] = current[0]

    def expr(self, e: ir.Expr) -> list[Value]:
        return _typed(self.graph, self._expr(e))

    def _expr(self, e: ir.Expr) -> list[Value]:
        g = self.graph
        if isinstance(e, ir.Var):
            return [self.env[e.name]]
        if isinstance(e, ir.Scalar):
            return [Value(g.constant(e.value, e.type.dtype), e.type)]
        if isinstance(e, ir.ParamRef):
            return [Value(g.weight(f"{self.prefix}{e.attr}"), e.type)]
        if isinstance(e, ir.OpCall):
            inputs = [v for x in e.inputs for v in self.expr(x)]
            if e.module is not None:
                return self.lowering.submodule(self.subs[e.module], self.prefix, inputs, e.types)
            return self.lowering.op(e.op, inputs, e.types, e.init, "")
        if isinstance(e, ir.ModuleCall):
            inputs = [v for x in e.inputs for v in self.expr(x)]
            return self.lowering.submodule(self.subs[e.module], self.prefix, inputs, e.types)
        if isinstance(e, ir.BinOp):
            return [self.binop(e)]
        if isinstance(e, ir.UnaryOp):
            (x,) = self.expr(e.operand)
            return [Value(g.one("Neg", [x.name]), e.type)]
        if isinstance(e, ir.GetItem):
            return [self.expr(e.value)[e.index]]
        if isinstance(e, ir.TupleExpr):
            return [v for x in e.items for v in self.expr(x)]
        if isinstance(e, ir.Index):
            (x,) = self.expr(e.value)
            return [Value(index(g, x, e.items, e.type), e.type)]
        raise NotLowerableError(f"no ONNX lowering for {type(e).__name__}")

    def binop(self, e: ir.BinOp) -> Value:
        g = self.graph
        (a,) = self.expr(e.left)
        (b,) = self.expr(e.right)
        operand_dtype = a.type.dtype if not isinstance(e.left, ir.Scalar) else b.type.dtype
        if e.op not in ("@",) and e.op not in _COMPARE and e.op not in ("==", "!="):
            operand_dtype = e.type.dtype  # arithmetic: both sides in the result's dtype (int / int is float)
        a, b = (cast(g, v, operand_dtype) for v in (a, b))
        if e.op == "//":
            return Value(floor_divide(g, a, b), e.type)
        if e.op == "!=":
            return Value(g.one("Not", [g.one("Equal", [a.name, b.name])]), e.type)
        op_type = _BINARY.get(e.op) or _COMPARE.get(e.op)
        if op_type is None:
            raise NotLowerableError(f"no ONNX lowering for '{e.op}'")
        if e.op == "%":  # Python's modulo takes the divisor's sign: ONNX Mod with fmod=0 for ints
            return Value(remainder(g, a, b) if a.type.is_float else g.one("Mod", [a.name, b.name], fmod=0), e.type)
        return Value(g.one(op_type, [a.name, b.name]), e.type)


# ---------------------------------------------------------------- shared lowerings


def cast(g: Graph, v: Value, dtype: str) -> Value:
    if v.type.dtype == dtype:
        return v
    return Value(g.one("Cast", [v.name], to=ONNX_DTYPES[dtype]), v.type.with_dtype(dtype))


def floor_divide(g: Graph, a: Value, b: Value) -> str:
    """Python's `//`: ONNX Div truncates integers toward zero, so subtract one where the signs differ and
    the division is not exact; floats take Floor(a / b)."""
    if a.type.is_float:
        return g.one("Floor", [g.one("Div", [a.name, b.name])])
    quotient = g.one("Div", [a.name, b.name])
    remainder = g.one("Sub", [a.name, g.one("Mul", [quotient, b.name])])
    zero = g.constant(0, a.type.dtype)
    inexact = g.one("Not", [g.one("Equal", [remainder, zero])])
    signs_differ = g.one("Xor", [g.one("Less", [a.name, zero]), g.one("Less", [b.name, zero])])
    adjust = g.one("Cast", [g.one("And", [inexact, signs_differ])], to=ONNX_DTYPES[a.type.dtype])
    return g.one("Sub", [quotient, adjust])


def remainder(g: Graph, a: Value, b: Value) -> str:
    """Python's `%` of floats, as torch.remainder computes it: C's fmod (ONNX Mod fmod=1, the dividend's sign),
    plus the divisor where the two signs differ and the remainder is not 0. By 0 it is NaN, as in PyTorch."""
    mod = g.one("Mod", [a.name, b.name], fmod=1)
    zero = g.constant(0.0, a.type.dtype)
    signs_differ = g.one("Xor", [g.one("Less", [mod, zero]), g.one("Less", [b.name, zero])])
    adjust = g.one("And", [g.one("Not", [g.one("Equal", [mod, zero])]), signs_differ])
    return g.one("Where", [adjust, g.one("Add", [mod, b.name]), mod])


def index(g: Graph, x: Value, items: list[Any], out: TensorType) -> str:
    """`x[...]` with integers, slices, `...` and None (new axes): Slice, then Gather for integers (which
    drop their axis), then Unsqueeze for the new axes at their places in the result."""
    from dslc.tensor_rules import expand_index

    starts, ends, axes, steps, picks, new_axes = [], [], [], [], [], []
    axis = kept = 0  # the input's dimension, and the result's dimensions so far
    for item in expand_index(items, x.type.rank):
        if item is None:
            new_axes.append(kept)
            kept += 1
            continue
        if isinstance(item, ir.SliceItem):
            if (item.start, item.stop, item.step) != (None, None, None):
                starts.append(item.start if item.start is not None else 0)
                ends.append(item.stop if item.stop is not None else 2**63 - 1)
                axes.append(axis)
                steps.append(item.step or 1)
            kept += 1
        else:
            picks.append((axis, int(item)))
        axis += 1
    name = x.name
    if axes:
        name = g.one("Slice", [name, g.ints(starts), g.ints(ends), g.ints(axes), g.ints(steps)])
    for removed, (axis, i) in enumerate(picks):
        name = g.one("Gather", [name, g.constant(i, "int64", "index")], axis=axis - removed)
    if new_axes:
        name = g.one("Unsqueeze", [name, g.ints(new_axes)])
    return name


def _typed(g: Graph, values: list[Value]) -> list[Value]:
    """Record the checker's types of values (the graph passes read the shapes of the values they rewrite)."""
    for v in values:
        g.types.setdefault(v.name, v.type)
    return values


def _renamed(sub: ir.Submodule, attr: str) -> ir.Submodule:
    """A container's child, keyed by its position as nn.Sequential and nn.ModuleList key it."""
    return replace(sub, attr=attr)


def value_info(name: str, ttype: TensorType) -> onnx.ValueInfoProto:
    shape = [d if isinstance(d, int) else str(d).replace(" ", "") for d in ttype.shape]
    return helper.make_tensor_value_info(name, ONNX_DTYPES[ttype.dtype], shape)


def _modules(program: ir.ProgramIR, module: ir.ModuleIR) -> Iterator[ir.ModuleIR]:
    seen, stack = set(), [module]
    while stack:
        mod = stack.pop()
        if id(mod) in seen:
            continue
        seen.add(id(mod))
        yield mod
        stack += [program.module(s.block) for s in _all_submodules(mod.submodules) if s.kind == "block"]


def _all_submodules(subs: list[ir.Submodule]) -> Iterator[ir.Submodule]:
    stack = list(subs)
    while stack:
        sub = stack.pop()
        yield sub
        stack.extend(sub.children)


def reshape(g: Graph, x: Value, target: list[Any]) -> str:
    """Reshape to `target`: sizes, -1, and ("size", i) for the input's size i (0 where it keeps its position,
    else read from Shape at run time)."""
    entries, dynamic = [], False
    for position, t in enumerate(target):
        if isinstance(t, tuple):
            if t[1] == position:
                entries.append(0)
            else:
                entries.append(t)
                dynamic = True
        else:
            entries.append(int(t))
    if not dynamic:
        return g.one("Reshape", [x.name, g.ints(entries)])
    shape = g.one("Shape", [x.name])
    parts = [g.one("Gather", [shape, g.ints([e[1]])], axis=0) if isinstance(e, tuple) else g.ints([e]) for e in entries]
    return g.one("Reshape", [x.name, g.one("Concat", parts, axis=0)])
