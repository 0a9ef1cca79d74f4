"""`dslc graph`: a picture of the checked model (Graphviz DOT, rendered by the `dot` program).

Nodes are layers and tensor operations, edges carry the tensor types inferred by the checker, and
blocks (and `repeat`ed or grouped layers) become clusters, or single boxes with `expand=False`.
The picture is drawn from the IR (dslc.ir.ProgramIR), so it shows exactly what gets compiled.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dslc import ir
from dslc.errors import error
from dslc.fileio import write_atomic
from dslc.layers import REGISTRY, AxisName
from dslc.params import REQUIRED, dsl_value
from dslc.shapes import TensorType

FORMATS = ("svg", "png", "pdf", "dot")
_NODE_STYLE = {
    "input": 'shape=box, style="rounded,filled", fillcolor="#cfe2ff", color="#6f9be0"',
    "output": 'shape=box, style="rounded,filled", fillcolor="#d1f0d6", color="#6cb27a"',
    "layer": 'shape=box, style="rounded,filled", fillcolor="#fff4d6", color="#c9a74c"',
    "function": 'shape=box, style="rounded,filled", fillcolor="#f3f3f3", color="#9a9a9a"',
    "operator": 'shape=circle, width=0.35, fixedsize=true, style=filled, fillcolor="#f3f3f3", color="#9a9a9a"',
    "block": 'shape=box3d, style=filled, fillcolor="#ecdff7", color="#9b7bbf"',
}
_OPERATORS = {"+": "+", "-": "−", "*": "×", "/": "÷", "//": "÷÷", "%": "%", "@": "@", "**": "^", "neg": "−"}

Port = tuple[str, TensorType | None]  # (node id, the tensor's type when known)


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def type_label(t: TensorType) -> str:
    return t.shape_str() if t.dtype == "float32" else str(t)


@dataclass
class _Dot:
    lines: list[str] = field(default_factory=list)
    edges: list[str] = field(default_factory=list)  # written last, at top level: an edge inside a
    depth: int = 1  # cluster would pull its nodes into that cluster
    count: int = 0

    def add(self, line: str) -> None:
        self.lines.append("  " * self.depth + line)

    def node(self, kind: str, label: str) -> str:
        self.count += 1
        name = f"n{self.count}"
        self.add(f'{name} [label="{_esc(label)}", {_NODE_STYLE[kind]}];')
        return name

    def edge(self, src: Port, dst: str) -> None:
        label = f' [label="{_esc(type_label(src[1]))}"]' if src[1] is not None else ""
        self.edges.append(f"  {src[0]} -> {dst}{label};")

    def cluster(self, label: str, color: str = "#9b7bbf") -> None:
        self.count += 1
        self.add(f"subgraph cluster_{self.count} {{")
        self.depth += 1
        self.add(f'label="{_esc(label)}"; labeljust=l; style="rounded,dashed"; color="{color}"; fontcolor="{color}";')

    def end(self) -> None:
        self.depth -= 1
        self.add("}")


class _Drawer:
    def __init__(self, program: ir.ProgramIR, expand: bool):
        self.program = program
        self.expand = expand
        self.dot = _Dot()

    def model(self, module: ir.ModuleIR, in_cluster: bool) -> None:
        if in_cluster:
            self.dot.cluster(f"model {module.spec_name}", "#555555")
        env: dict[str, Any] = {}
        for port in module.inputs:
            label = f"{port.name}\n{port.type}" + (f"\n{port.doc}" if port.doc else "")
            env[port.name] = (self.dot.node("input", label), port.type)
        self.body(module, env)
        for port in module.outputs:
            out = self.dot.node("output", f"{port.name}\n{port.type}")
            self.dot.edge(env[port.name], out)
        if in_cluster:
            self.dot.end()

    def body(self, module: ir.ModuleIR, env: dict[str, Any]) -> None:
        subs = {s.attr: s for s in module.submodules}
        for stmt in module.statements():
            if isinstance(stmt, ir.Layers):
                continue
            if isinstance(stmt, ir.RepeatLoop):
                sub = subs[stmt.module.removeprefix("self.")]
                first = self.expr(stmt.first, env, subs)[0]
                extra = [p for e in stmt.extra for p in self.expr(e, env, subs)]
                env[stmt.target] = self.submodule(sub, [first, *extra], [first[1]])[0]
                continue
            ports = self.expr(stmt.value, env, subs)
            if len(stmt.targets) == 1:
                env[stmt.targets[0]] = ports[0] if len(ports) == 1 else ports
            else:
                for name, port in zip(stmt.targets, ports):
                    env[name] = port

    def expr(self, e: ir.Expr, env: dict[str, Any], subs: dict[str, ir.Submodule]) -> list[Any]:
        """The ports an expression produces; a Scalar yields its value instead of a port."""
        if isinstance(e, ir.Var):
            value = env[e.name]
            return list(value) if isinstance(value, list) else [value]
        if isinstance(e, ir.Scalar):
            return [e.value]
        if isinstance(e, ir.ParamRef):  # a declared parameter: a source, like an input
            return self._connect(self.dot.node("layer", f"param {e.attr}"), [], e.types)
        if isinstance(e, ir.GetItem):
            return [self.expr(e.value, env, subs)[e.index]]
        if isinstance(e, ir.TupleExpr):
            return [p for item in e.items for p in self.expr(item, env, subs)]
        if isinstance(e, ir.OpCall):
            inputs = [p for x in e.inputs for p in self.expr(x, env, subs)]
            attr = e.module.removeprefix("self.") if e.module else None
            node = self._op_node(e.op, e.args or e.init, attr)
            return self._connect(node, inputs, e.types)
        if isinstance(e, ir.ModuleCall):
            inputs = [p for x in e.inputs for p in self.expr(x, env, subs)]
            return self.submodule(subs[e.module.removeprefix("self.")], inputs, e.types)
        if isinstance(e, ir.BinOp):
            left, right = self.expr(e.left, env, subs)[0], self.expr(e.right, env, subs)[0]
            symbol = _OPERATORS.get(e.op, e.op)
            if not isinstance(left, tuple) or not isinstance(right, tuple):  # a scalar operand
                scalar, port = (left, right) if not isinstance(left, tuple) else (right, left)
                node = self.dot.node("function", f"{symbol} {scalar}")
                return self._connect(node, [port], e.types)
            return self._connect(self.dot.node("operator", symbol), [left, right], e.types)
        if isinstance(e, ir.UnaryOp):
            node = self.dot.node("operator", _OPERATORS.get("neg" if e.op == "-" else e.op, e.op))
            return self._connect(node, self.expr(e.operand, env, subs), e.types)
        if isinstance(e, ir.Index):
            return self._connect(self.dot.node("function", "[index]"), self.expr(e.value, env, subs), e.types)
        raise TypeError(f"cannot draw {type(e).__name__}")

    def _connect(self, node: str, inputs: list[Any], types: list[TensorType]) -> list[Port]:
        for port in inputs:
            if isinstance(port, tuple):
                self.dot.edge(port, node)
        return [(node, t) for t in types]

    def _op_node(self, op_name: str, init: dict[str, Any], attr: str | None) -> str:
        op = REGISTRY[op_name]
        label = f"{attr}: {op_summary(op_name, init)}" if attr else op_summary(op_name, init)
        return self.dot.node("layer" if op.stateful else "function", label)

    def submodule(self, sub: ir.Submodule, inputs: list[Port], types: list[TensorType]) -> list[Port]:
        """A block, a named group or a repeat: a cluster of its layers, or one box."""
        if not self.expand:
            node = self.dot.node("block", f"{sub.attr}: {self._describe(sub)}")
            return self._connect(node, inputs, types)
        if sub.kind == "op":
            return self._connect(self._op_node(sub.op, sub.args or sub.init, sub.attr), inputs, types)
        if sub.kind == "block":
            module = self.program.module(sub.block)
            self.dot.cluster(f"{sub.attr}: {module.signature}")
            env = {port.name: value for port, value in zip(module.inputs, inputs)}
            self.body(module, env)
            self.dot.end()
            return [env[port.name] for port in module.outputs]
        # sequential (repeat or named group) and list (repeat with extra inputs): children in turn
        self.dot.cluster(f"{sub.attr}: {self._describe(sub)}", "#c9a74c")
        current, extra = inputs[0], inputs[1:]
        for child in sub.children:
            child = dataclasses.replace(child, attr=f"{sub.attr}.{child.attr}")
            if child.kind == "block":
                out_type = self.program.module(child.block).outputs[0].type
                current = self.submodule(child, [current, *extra], [out_type])[0]
            elif child.kind == "sequential":  # a numbered group inside a group
                current = self.submodule(child, [current], [None])[0]
            else:  # a layer of a named group: its output type is not recorded, so the edge after it has no label
                node = self._op_node(child.op, child.args or child.init, child.attr)
                self._connect(node, [current], [])
                current = (node, None)
        self.dot.end()
        return [(current[0], t) for t in types]

    def _describe(self, sub: ir.Submodule) -> str:
        if sub.kind == "op":
            return op_summary(sub.op, sub.args or sub.init)
        if sub.kind == "block":
            return self.program.module(sub.block).signature
        names = [c.block or c.op or c.kind for c in sub.children]
        if names and len(set(n.rstrip("0123456789") for n in names)) == 1:
            return f"{names[0].rstrip('0123456789')} × {len(names)}"
        return " → ".join(names)


def op_summary(op_name: str, init: dict[str, Any]) -> str:
    """`Linear(256)`, `Conv2d(32, kernel=3)`: the op with the arguments that differ from defaults."""
    op = REGISTRY[op_name]
    args = []
    for param in op.params:
        if param.name not in init:
            continue
        value = init[param.name]
        if param.default is REQUIRED:
            args.append(_short(value))
        elif value != param.default:
            args.append(f"{param.name}={_short(value)}")
    text = f"{op.name}({', '.join(args)})" if args else op.name
    return text if len(text) <= 48 else text[:45] + "...)"


def _short(value: Any) -> str:
    if isinstance(value, AxisName):
        return value.name
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_short(v) for v in value) + ")"
    return dsl_value(value)


def program_dot(program: ir.ProgramIR, expand: bool = True, model: str | None = None) -> str:
    """DOT source for the exported models of a checked spec (or only `model`)."""
    models = program.exported
    if model is not None:
        models = [m for m in models if m.spec_name == model]
        if not models:
            names = ", ".join(m.spec_name for m in program.exported)
            raise error(None, f"the spec has no model '{model}'", f"its models: {names}")
    drawer = _Drawer(program, expand)
    for module in models:
        drawer.model(module, in_cluster=len(models) > 1)
    title = Path(program.path).name
    head = [
        "digraph dslc {",
        f'  label="{_esc(title)}"; labelloc=t; fontname="Helvetica"; rankdir=TB; nodesep=0.3; ranksep=0.35;',
        '  node [fontname="Helvetica", fontsize=11]; edge [fontname="Helvetica", fontsize=9, color="#555555"];',
    ]
    return "\n".join(head + drawer.dot.lines + drawer.dot.edges + ["}"]) + "\n"


def render(dot_source: str, fmt: str) -> bytes:
    """Run Graphviz `dot` on DOT source; a clear error when it is not installed."""
    exe = shutil.which("dot")
    if exe is None:
        raise error(
            None,
            f"cannot write .{fmt}: Graphviz's `dot` program is not installed",
            "install Graphviz (apt-get install graphviz, brew install graphviz, ...) or write a .dot file",
        )
    result = subprocess.run([exe, f"-T{fmt}"], input=dot_source.encode(), capture_output=True, check=False)
    if result.returncode != 0:
        raise error(None, f"Graphviz failed: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def write_graph(spec: str, out: str, expand: bool = True, model: str | None = None, overrides=None) -> None:
    from dslc.checker import check_file

    fmt = Path(out).suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise error(
            None, f"{out}: unknown picture format '.{fmt}'", f"use one of {', '.join('.' + f for f in FORMATS)}"
        )
    dot_source = program_dot(check_file(spec, overrides or []), expand, model)
    write_atomic(out, dot_source if fmt == "dot" else render(dot_source, fmt))
