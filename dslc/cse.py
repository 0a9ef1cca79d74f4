"""Pass 4, common subexpressions: every pure expression is computed once.

Within a body (and within each arm of a compile-time `if`), a pure expression that appears twice,
or an expression an op's code reads twice (`x.reshape(x.size(0), ...)`), is assigned to a fresh
name before its first use and read from there. Pure means it has no layer state: functions and
operators; a layer call (Dropout draws, BatchNorm updates its statistics) and a random draw
(`normal(batch, 64)`) are never merged. In a train step a model call is merged: the step runs each
model once per distinct input (the GAN's discriminator once on real and once on fake images). A
value stays available until a name it reads is assigned again.
"""

from __future__ import annotations

import operator
from dataclasses import replace
from typing import Any

from dslc import ir
from dslc.layers import REGISTRY
from dslc.loader import RESERVED
from dslc.pytext import PYTHON_NAMES, TRAIN_SCRIPT_NAMES
from dslc.traced import is_traced

OPERATOR_STEMS = {"@": "product", "+": "total", "-": "difference", "*": "scaled", "/": "ratio", "//": "quotient"}


def eliminate_common_subexpressions(program: ir.ProgramIR) -> None:
    for module in program.modules:
        module.body = _body(module.body, _Names.of_module(module))


def eliminate_in_step(body: list[ir.Stmt], taken: set[str]) -> list[ir.Stmt]:
    """A train step's statements with each pure expression and each model call computed once; fresh
    names avoid `taken` (the step's names) and the names the training script uses."""
    names = _Names(set(taken) | TRAIN_SCRIPT_NAMES)
    for stmt in body:
        names.taken |= set(getattr(stmt, "targets", ()))
    return _body(body, names)


class _Available:
    """Expressions some variable holds, indexed by the names they read, so that assigning a name
    forgets exactly what depended on it (a long chain of assignments stays linear)."""

    def __init__(self) -> None:
        self.holder: dict[Any, str] = {}  # expression key -> the variable that holds it
        self.readers: dict[str, set[Any]] = {}  # name -> keys that read it or live in it

    def add(self, key: Any, name: str) -> None:
        self.holder[key] = name
        for read in _reads(key) | {name}:
            self.readers.setdefault(read, set()).add(key)

    def forget(self, assigned: list[str]) -> None:
        for name in assigned:
            for key in self.readers.pop(name, ()):
                self.holder.pop(key, None)


def _body(body: list[ir.Stmt], names: _Names) -> list[ir.Stmt]:
    available = _Available()
    out: list[ir.Stmt] = []
    for stmt in body:
        if isinstance(stmt, ir.Branch):
            stmt.body = _body(stmt.body, names)
            available = _Available()  # the arm may assign anything
            out.append(stmt)
            continue
        if isinstance(stmt, ir.Assign):
            stmt.value = _reuse(stmt.value, available.holder)
            for expr in _repeated(stmt.value):
                name = names.fresh(_stem(expr))
                hoisted = ir.Assign(stmt.loc, [name], expr, source=stmt.source)
                hoisted.comments, stmt.comments = stmt.comments, []
                out.append(hoisted)
                stmt.value = _reuse(stmt.value, {_key(expr): name}, any_expr=True)
                if _pure(expr):
                    available.add(_key(expr), name)
            available.forget(stmt.targets)
            if len(stmt.targets) == 1 and _pure(stmt.value) and not isinstance(stmt.value, ir.Var):
                available.add(_key(stmt.value), stmt.targets[0])
        elif isinstance(stmt, ir.RepeatLoop):
            stmt.first = _reuse(stmt.first, available.holder)
            stmt.extra = [_reuse(e, available.holder) for e in stmt.extra]
            available.forget([stmt.target])
        out.append(stmt)
    return out


def _pure(e: ir.Expr) -> bool:
    if isinstance(e, ir.OpCall):
        return e.module is None and REGISTRY[e.op].deterministic
    return isinstance(e, (ir.BinOp, ir.UnaryOp, ir.Index, ir.GetItem, ir.ModelCall))


def _repeated(e: ir.Expr) -> list[ir.Expr]:
    """Compound pure subexpressions that occur twice in `e`, or that an op reads twice; outermost first."""
    counts: dict[Any, int] = {}
    first: dict[Any, ir.Expr] = {}
    order: list[Any] = []
    stack = [e]
    while stack:
        node = stack.pop()
        if _pure(node) and node is not e:
            key = _key(node)
            counts[key] = counts.get(key, 0) + 1
            if key not in first:
                first[key] = node
                order.append(key)
        if isinstance(node, ir.OpCall):
            for index in REGISTRY[node.op].inputs_read_twice(node.init):
                x = node.inputs[index]
                if not isinstance(x, (ir.Var, ir.Scalar)):
                    key = _key(x)
                    counts[key] = counts.get(key, 0) + 2
                    if key not in first:
                        first[key] = x
                        order.append(key)
        stack.extend(reversed(ir.operands(node)))
    chosen = [first[k] for k in order if counts[k] > 1]
    # An expression inside a chosen one is computed once with it: keep only the outermost.
    inner = {_key(x) for c in chosen for x in ir.subexpressions(c) if x is not c}
    return [c for c in chosen if _key(c) not in inner]


def _reuse(e: ir.Expr, available: dict[Any, str], any_expr: bool = False) -> ir.Expr:
    """`e` with every available subexpression replaced by its variable (`any_expr`: layer calls too,
    for the one just hoisted). A part with nothing replaced is kept, not copied."""
    if not available:
        return e
    if (any_expr or _pure(e)) and not isinstance(e, ir.Var):
        name = available.get(_key(e))
        if name is not None:
            return ir.Var(e.types, name)

    if isinstance(e, (ir.OpCall, ir.ModuleCall, ir.ModelCall)):
        inputs = [_reuse(x, available, any_expr) for x in e.inputs]
        return e if all(map(operator.is_, inputs, e.inputs)) else replace(e, inputs=inputs)
    if isinstance(e, ir.BinOp):
        left, right = _reuse(e.left, available, any_expr), _reuse(e.right, available, any_expr)
        return e if left is e.left and right is e.right else replace(e, left=left, right=right)
    if isinstance(e, ir.UnaryOp):
        operand = _reuse(e.operand, available, any_expr)
        return e if operand is e.operand else replace(e, operand=operand)
    if isinstance(e, (ir.Index, ir.GetItem)):
        value = _reuse(e.value, available, any_expr)
        return e if value is e.value else replace(e, value=value)
    if isinstance(e, ir.TupleExpr):
        items = [_reuse(x, available, any_expr) for x in e.items]
        return e if all(map(operator.is_, items, e.items)) else replace(e, items=items)
    return e


def _value(v: Any) -> Any:
    """A compile-time value as the generated class computes it: a block parameter by its expression, so
    two values equal at this use but not for every argument (`x * a`, `x * b`) stay apart."""
    if is_traced(v):
        return ("param", v.expr)
    if isinstance(v, (tuple, list)):
        return ("seq", tuple(_value(i) for i in v))
    if isinstance(v, dict):
        return ("dict", tuple(sorted((k, _value(i)) for k, i in v.items())))
    if isinstance(v, ir.SliceItem):
        return ("slice", _value(v.start), _value(v.stop), _value(v.step))
    return (type(v).__name__, repr(v))


def _key(e: Any) -> Any:
    """Structural identity of an expression (types left out: the same inputs give the same types)."""
    if isinstance(e, ir.Var):
        return ("var", e.name)
    if isinstance(e, ir.ParamRef):
        return ("param", e.attr)
    if isinstance(e, ir.Scalar):
        return ("scalar", _value(e.value))
    if isinstance(e, ir.OpCall):
        return ("op", e.op, e.module, _value(e.init), tuple(_key(x) for x in e.inputs))
    if isinstance(e, ir.ModuleCall):
        return ("call", e.module, tuple(_key(x) for x in e.inputs))
    if isinstance(e, ir.ModelCall):
        return ("model", e.model, tuple(_key(x) for x in e.inputs))
    if isinstance(e, ir.BinOp):
        return ("bin", e.op, _key(e.left), _key(e.right))
    if isinstance(e, ir.UnaryOp):
        return ("neg", e.op, _key(e.operand))
    if isinstance(e, ir.Index):
        return ("index", _key(e.value), _value(e.items))
    if isinstance(e, ir.GetItem):
        return ("item", _key(e.value), e.index)
    if isinstance(e, ir.TupleExpr):
        return ("tuple", tuple(_key(x) for x in e.items))
    return ("other", id(e))


def _reads(key: Any) -> set[str]:
    names, stack = set(), [key]
    while stack:
        node = stack.pop()
        if isinstance(node, tuple):
            if len(node) == 2 and node[0] == "var":
                names.add(node[1])
            else:
                stack.extend(node)
    return names


def _stem(e: ir.Expr) -> str:
    if isinstance(e, ir.BinOp):
        return OPERATOR_STEMS.get(e.op, "value")
    if isinstance(e, ir.OpCall):
        return REGISTRY[e.op].prefix.lower()
    if isinstance(e, ir.ModelCall):
        return f"{e.model}_out"
    if isinstance(e, ir.GetItem) and isinstance(e.value, ir.ModelCall):
        return f"{e.value.model}_out"
    return "value"


class _Names:
    """Fresh local names: none the module uses, none the generated code reserves."""

    def __init__(self, taken: set[str]) -> None:
        self.taken = taken

    @classmethod
    def of_module(cls, module: ir.ModuleIR) -> _Names:
        taken = {p.name for p in [*module.inputs, *module.outputs]} | {p.name for p in module.class_params}
        for stmt in module.statements():
            taken |= set(getattr(stmt, "targets", ())) | {getattr(stmt, "target", "")}
            for value in ir.values(stmt):
                taken |= {x.name for x in ir.subexpressions(value) if isinstance(x, ir.Var)}
        return cls(taken)

    def fresh(self, stem: str) -> str:
        n = 1
        while f"{stem}{n}" in self.taken or f"{stem}{n}" in RESERVED or f"{stem}{n}" in PYTHON_NAMES:
            n += 1
        name = f"{stem}{n}"
        self.taken.add(name)
        return name
