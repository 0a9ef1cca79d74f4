"""The checked IR as text: `dslc check --ir SPEC`. Stable and diffable, so tests of each pass compare
against it (as FileCheck tests do) and a reader sees what the back-ends receive.

Each checked use of a block is one `module`, with its concrete types; a value a block computes from
its parameters is shown with that expression (`128 <planes>`). Then each generated `class` lists
the uses it serves.
"""

from __future__ import annotations

from typing import Any

from dslc import ir, traced
from dslc.pytext import comment, index_text, py_literal

INDENT = "  "


def dump(program: ir.ProgramIR) -> str:
    lines = [f"program {comment(program.module_name)} (sha256 {program.sha256[:16]})"]
    for module in program.modules:
        lines += ["", *_module(module)]
    if program.classes:
        lines.append("")
    for cls in program.classes:
        uses = ", ".join(u.key for u in cls.uses)
        lines.append(f"class {cls.name} ({cls.kind}): {uses}")
    if program.train is not None:
        lines += ["", *_train(program.train)]
    return "\n".join(lines) + "\n"


def _train(train: Any) -> list[str]:
    """The train section's per-batch code: what each step reads from the batch, its statements, its loss."""
    lines = []
    if train.prepare:
        lines += _train_body("prepare", train.prepare)
    for step in train.steps:
        lines += _train_body(f"step {step.name}", step.body)
    if train.act is not None:  # episodes: what the rollouts sample actions from
        lines += _train_body(f"act ({train.data.options['policy']})", train.act)
    return lines


def _train_body(title: str, body: Any) -> list[str]:
    header = f"{title}: reads {', '.join(body.reads) or 'nothing'}; calls {', '.join(body.models) or 'no model'}"
    return [header, *_body(body.statements, 1)]


def _module(module: ir.ModuleIR) -> list[str]:
    lines = [f"module {module.key} = {module.kind} {comment(module.signature)}  # line {module.loc.line}"]
    for param in module.class_params:
        where = f" = size {param.axis} of input {param.input}" if param.input is not None else ""
        default = f", default {value(param.default)}" if param.has_default else ""
        lines.append(f"{INDENT}param {param.name}: {param.type}{where}{default}")
    for port in module.inputs:
        lines.append(f"{INDENT}input {port.name}: {_type(port.type)}")
    for sub in module.submodules:
        lines += _submodule(sub, 1)
    lines += _body(module.body, 1)
    for port in module.outputs:
        lines.append(f"{INDENT}output {port.name}: {_type(port.type)}")
    for rule in module.size_rules:
        lines.append(f"{INDENT}require {rule}  # line {rule.loc.line if rule.loc else '?'}")
    return lines


def _submodule(sub: ir.Submodule, depth: int) -> list[str]:
    pad = INDENT * depth
    if sub.kind == "op":
        args = ", ".join(f"{k}={value(v)}" for k, v in sub.init.items())
        return [f"{pad}layer {sub.attr}: {sub.op}({args})  # {sub.params:,} parameters"]
    if sub.kind == "block":
        args = ", ".join(f"{k}={value(v)}" for k, v in sub.call_args.items())
        return [f"{pad}layer {sub.attr}: {sub.block}({args})  # {sub.params:,} parameters"]
    if sub.kind == "param":
        shape = ", ".join(value(d) for d in sub.init["shape"])
        args = ", ".join(f"{k}={value(v)}" for k, v in sub.init["args"].items())
        return [f"{pad}param {sub.attr}: float32[{shape}] = {sub.init['initializer']}({args})"]
    count = f" repeat {value(sub.repeat)}" if sub.repeat is not None else ""
    lines = [f"{pad}layer {sub.attr}: {sub.kind}{count}"]
    for child in sub.children:
        lines += _submodule(child, depth + 1)
    return lines


def _body(body: list[ir.Stmt], depth: int) -> list[str]:
    pad, lines = INDENT * depth, []
    for stmt in body:
        if isinstance(stmt, ir.Branch):
            conditions = ", ".join("?" if c is None else _trace(c) for c in stmt.conditions)
            arm = "else" if stmt.taken == len(stmt.conditions) else f"arm {stmt.taken}"
            lines.append(f"{pad}if [{conditions}] takes {arm}:  # line {stmt.loc.line}")
            lines += _body(stmt.body, depth + 1)
        elif isinstance(stmt, ir.Assign):
            types = ", ".join(_type(t) for t in stmt.value.types)
            lines.append(f"{pad}{', '.join(stmt.targets)} = {expr(stmt.value)} : {types}  # line {stmt.loc.line}")
        elif isinstance(stmt, ir.RepeatLoop):
            extra = "".join(f", {expr(e)}" for e in stmt.extra)
            lines.append(f"{pad}{stmt.target} = fold {stmt.module}({expr(stmt.first)}{extra})  # line {stmt.loc.line}")
    return lines


def expr(e: ir.Expr) -> str:
    if isinstance(e, ir.Var):
        return e.name
    if isinstance(e, ir.Scalar):
        return value(e.value)
    if isinstance(e, ir.ParamRef):
        return f"param {e.attr}"
    if isinstance(e, ir.OpCall):
        inputs = ", ".join(expr(x) for x in e.inputs)
        return f"{e.op}[{e.module}]({inputs})" if e.module else f"{e.op}({inputs})"
    if isinstance(e, ir.ModuleCall):
        return f"{e.module}({', '.join(expr(x) for x in e.inputs)})"
    if isinstance(e, ir.ModelCall):
        return f"model {e.model}({', '.join(expr(x) for x in e.inputs)})"
    if isinstance(e, ir.BinOp):
        return f"({expr(e.left)} {e.op} {expr(e.right)})"
    if isinstance(e, ir.UnaryOp):
        return f"-{expr(e.operand)}"
    if isinstance(e, ir.Index):
        return f"{expr(e.value)}[{', '.join(index_text(i) for i in e.items)}]"
    if isinstance(e, ir.GetItem):
        return f"{expr(e.value)}.{e.index}"
    if isinstance(e, ir.TupleExpr):
        return f"({', '.join(expr(i) for i in e.items)})"
    return type(e).__name__


def value(v: Any) -> str:
    """A compile-time value; one a block computes from its parameters also shows how: `128 <planes>`."""
    if traced.is_traced(v):
        return f"{py_literal(traced.plain(v))} <{_trace(v.expr)}>"
    if isinstance(v, tuple):
        return "(" + ", ".join(value(i) for i in v) + ("," if len(v) == 1 else "") + ")"
    if v is None or isinstance(v, (bool, int, float, str)):
        return py_literal(v)
    return comment(str(v))


def _trace(e: Any) -> str:
    names = traced.params_of(e)
    token = traced.PREFIX.set({n: n for n in names})
    try:
        return traced.python_expr(e, py_literal)
    finally:
        traced.PREFIX.reset(token)


def _type(t) -> str:
    return f"{t.dtype}[{', '.join(value(d) if isinstance(d, int) else str(d) for d in t.shape)}]"
