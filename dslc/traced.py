"""Values that remember how a block computes them from its parameters.

A block is checked once per use with concrete sizes, so every shape is exact. Its generated class is
written once, with the block's parameters as constructor arguments: for that, each compile-time value
inside a block body carries, next to its value at this use, an expression over the block's parameters
(`planes`, `channels * 4`, `d_model // heads`). `TracedInt` is an `int` (shape rules, comparisons and
hashing see the number) with an `expr`; arithmetic on it traces the result. A value computed some
other way becomes a plain number again, and the generalisation pass notices if uses then disagree.
"""

from __future__ import annotations

import operator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from dslc.pyformat import power


@dataclass(frozen=True)
class Param:
    """A parameter of the block's class: a hyperparameter or a size of its inputs."""

    name: str


@dataclass(frozen=True)
class Const:
    """A constant of the spec (`const heads = 4`): a module-level constant of the generated code."""

    name: str
    value: Any


@dataclass(frozen=True)
class Lit:
    value: Any


# A value computed through more steps than this (a thousand 1x1 convolutions, each giving `(h - 1) // 1 + 1`)
# is kept as its number: the class takes it for that use only, and the trace stays shallow to walk.
MAX_TRACE_DEPTH = 48


@dataclass(frozen=True)
class Bin:
    op: str  # + - * / // % ** == != < <= > >= and or
    left: Any
    right: Any
    depth: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "depth", 1 + max(_depth(self.left), _depth(self.right)))


@dataclass(frozen=True)
class Unary:
    op: str  # - not
    operand: Any
    depth: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "depth", 1 + _depth(self.operand))


def _depth(expr: Any) -> int:
    return getattr(expr, "depth", 1)


TraceExpr = Param | Const | Lit | Bin | Unary

ARITHMETIC = {  # compile-time arithmetic (dslc.consteval adds the comparisons)
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "//": operator.floordiv,
    "%": operator.mod,
    "**": operator.pow,
}


def is_traced(value: Any) -> bool:
    return isinstance(value, (Traced, TracedStr))


def expr_of(value: Any) -> TraceExpr:
    return value.expr if is_traced(value) else Lit(_plain(value))


def _traced_op(op: str, swap: bool = False):
    fn = ARITHMETIC[op]

    def method(self, other):
        if isinstance(other, bool) or not isinstance(other, (int, float)):
            return NotImplemented
        left, right = (other, self) if swap else (self, other)
        result = fn(_plain(left), _plain(right))
        # One side is traced, so the result reads a parameter: no need to look (trace() would).
        if _is_identity(op, right) and not isinstance(result, float):  # x + 0, x * 1, x // 1: still x
            return _wrap(result, expr_of(left))
        if not is_traced(left) and ((op == "*" and left == 1) or (op == "+" and left == 0)):  # 1 * x, 0 + x
            return _wrap(result, expr_of(right))
        if op in ("+", "-") and not is_traced(right) and right < 0:  # x + -1 reads as x - 1
            return _wrap(result, Bin("-" if op == "+" else "+", expr_of(left), Lit(-right)))
        return _wrap(result, Bin(op, expr_of(left), expr_of(right)))

    return method


def _is_identity(op: str, right: Any) -> bool:
    return not is_traced(right) and ((op in ("+", "-") and right == 0) or (op in ("*", "//", "/", "**") and right == 1))


class Traced:
    """Mixin of the traced number and string types: `expr` says how the block computes the value."""

    __slots__ = ()
    expr: TraceExpr

    __add__, __radd__ = _traced_op("+"), _traced_op("+", swap=True)
    __sub__, __rsub__ = _traced_op("-"), _traced_op("-", swap=True)
    __mul__, __rmul__ = _traced_op("*"), _traced_op("*", swap=True)
    __truediv__, __rtruediv__ = _traced_op("/"), _traced_op("/", swap=True)
    __floordiv__, __rfloordiv__ = _traced_op("//"), _traced_op("//", swap=True)
    __mod__, __rmod__ = _traced_op("%"), _traced_op("%", swap=True)
    __pow__, __rpow__ = _traced_op("**"), _traced_op("**", swap=True)

    def __neg__(self):
        return trace(-_plain(self), Unary("-", self.expr))

    def __pos__(self):
        return self


class TracedInt(Traced, int):
    def __new__(cls, value: int, expr: TraceExpr):
        obj = int.__new__(cls, value)
        obj.expr = expr
        return obj

    __hash__ = int.__hash__
    __eq__ = int.__eq__
    __repr__ = int.__repr__
    __str__ = int.__repr__

    def __reduce__(self):
        return TracedInt, (int(self), self.expr)


class TracedFloat(Traced, float):
    def __new__(cls, value: float, expr: TraceExpr):
        obj = float.__new__(cls, value)
        obj.expr = expr
        return obj

    __hash__ = float.__hash__
    __eq__ = float.__eq__
    __repr__ = float.__repr__
    __str__ = float.__repr__

    def __reduce__(self):
        return TracedFloat, (float(self), self.expr)


class TracedBool(Traced, int):
    """A bool parameter (`use_bias: bool`). Python's bool cannot be subclassed, so this is an int of 0
    or 1 that prints, compares and converts as the bool it stands for; `coerce` accepts it as a bool."""

    def __new__(cls, value: bool, expr: TraceExpr):
        obj = int.__new__(cls, bool(value))
        obj.expr = expr
        return obj

    __hash__ = int.__hash__
    __eq__ = int.__eq__

    def __repr__(self) -> str:
        return repr(bool(self))

    __str__ = __repr__

    def __reduce__(self):
        return TracedBool, (bool(self), self.expr)


class TracedStr(str):
    """A string parameter (`mode: str`): written as its name in the class, never as spec text."""

    def __new__(cls, value: str, expr: TraceExpr):
        obj = str.__new__(cls, value)
        obj.expr = expr
        return obj

    def __reduce__(self):
        return TracedStr, (str(self), self.expr)


def _plain(value: Any) -> Any:
    """The value as a plain Python number, bool, string or tuple of them."""
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, TracedBool):
        return bool(value)
    if isinstance(value, TracedInt):
        return int(value)
    if isinstance(value, TracedFloat):
        return float(value)
    if isinstance(value, TracedStr):
        return str(value)
    return value


plain = _plain


def trace(value: Any, expr: TraceExpr) -> Any:
    """`value` carrying `expr`; a value no parameter reaches stays a plain number."""
    if isinstance(expr, Lit) or _depth(expr) > MAX_TRACE_DEPTH or not _has_param(expr):
        return _plain(value)
    if isinstance(value, (bool, TracedBool)):
        return TracedBool(value, expr)
    if isinstance(value, int):
        return TracedInt(value, expr)
    if isinstance(value, float):
        return TracedFloat(value, expr)
    if isinstance(value, str):
        return TracedStr(value, expr)
    return value


def is_bool(value: Any) -> bool:
    """A bool, or a bool parameter of a block."""
    return isinstance(value, (bool, TracedBool))


def _wrap(value: Any, expr: TraceExpr) -> Any:
    if isinstance(value, bool) or isinstance(expr, Lit) or _depth(expr) > MAX_TRACE_DEPTH:
        return value
    if isinstance(value, int):
        return TracedInt(value, expr)
    if isinstance(value, float):
        return TracedFloat(value, expr)
    return value


def param(name: str, value: Any) -> Any:
    """The value of parameter `name` inside its block."""
    return trace(value, Param(name))


def constant(name: str, value: Any) -> Any:
    """The value of the spec's constant `name` where a model or block reads it."""
    if isinstance(value, (bool, int, float, str)) and not is_traced(value):
        return trace(value, Const(name, value))
    return value


def _has_param(expr: TraceExpr) -> bool:
    """Whether the expression reads a parameter or a constant (else it is just its number)."""
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, (Param, Const)):
            return True
        if isinstance(node, Bin):
            stack += [node.left, node.right]
        elif isinstance(node, Unary):
            stack.append(node.operand)
    return False


def params_of(expr: TraceExpr) -> set[str]:
    names, stack = set(), [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, Param):
            names.add(node.name)
        elif isinstance(node, Bin):
            stack += [node.left, node.right]
        elif isinstance(node, Unary):
            stack.append(node.operand)
    return names


def substitute(value: Any, values: dict[str, Any]) -> Any:
    """A callee's value in the caller's terms: each parameter replaced by the caller's argument."""
    if isinstance(value, tuple):
        return tuple(substitute(v, values) for v in value)
    if not is_traced(value):
        return value
    return trace(_plain(value), _substitute_expr(value.expr, values))


def _substitute_expr(expr: TraceExpr, values: dict[str, Any]) -> TraceExpr:
    if isinstance(expr, Param):
        return expr_of(values[expr.name]) if expr.name in values else Lit(None)
    if isinstance(expr, Bin):
        return Bin(expr.op, _substitute_expr(expr.left, values), _substitute_expr(expr.right, values))
    if isinstance(expr, Unary):
        return Unary(expr.op, _substitute_expr(expr.operand, values))
    return expr


# ---------------------------------------------------------------- writing a traced value as Python

# The parameter names a generated class refers to, and how: "" in __init__ (its arguments), "self."
# in forward (attributes __init__ stored). None outside a generic class: traced values are written
# as their numbers (model code has no parameters).
PREFIX: ContextVar[dict[str, str] | None] = ContextVar("dslc_param_prefix", default=None)
USED: ContextVar[set[str] | None] = ContextVar("dslc_params_used", default=None)
# How a constant is written: its module-level name (a callable that names it on first use), or,
# when None, its spec name (in comments and the IR dump).
CONSTANTS: ContextVar[Any] = ContextVar("dslc_constant_names", default=None)

_PRECEDENCE = {"or": 1, "and": 2, "not": 3, "==": 4, "!=": 4, "<": 4, "<=": 4, ">": 4, ">=": 4}
_PRECEDENCE |= {"+": 5, "-": 5, "*": 6, "/": 6, "//": 6, "%": 6, "neg": 7, "**": 8}
_ATOM = 10


def python_expr(expr: TraceExpr, literal) -> str:
    """The Python text of `expr`, parameters by the names PREFIX gives; `literal` writes constants."""
    return _python(expr, literal)[0]


def _python(expr: TraceExpr, literal) -> tuple[str, int]:
    if isinstance(expr, Param):
        names = PREFIX.get() or {}
        used = USED.get()
        if used is not None:
            used.add(expr.name)
        if expr.name not in names:  # a value traced in another block's terms: a compiler bug, not a name
            raise KeyError(f"parameter {expr.name!r} is not one of the class's {sorted(names)}")
        return names[expr.name], _ATOM
    if isinstance(expr, Const):
        names = CONSTANTS.get()
        return (expr.name if names is None else names(expr)), _ATOM
    if isinstance(expr, Lit):
        text = literal(expr.value)
        return text, (_PRECEDENCE["neg"] if text.startswith("-") else _ATOM)
    if isinstance(expr, Unary):
        prec = _PRECEDENCE["neg" if expr.op == "-" else "not"]
        inner, inner_prec = _python(expr.operand, literal)
        is_power = isinstance(expr.operand, Bin) and expr.operand.op == "**"  # ruff writes -(x**2)
        inner = f"({inner})" if inner_prec < prec or is_power else inner
        return (f"-{inner}" if expr.op == "-" else f"not {inner}"), prec
    prec = _PRECEDENCE[expr.op]
    left, left_prec = _python(expr.left, literal)
    right, right_prec = _python(expr.right, literal)
    right_assoc = expr.op == "**"
    if left_prec < prec or (left_prec == prec and right_assoc):
        left = f"({left})"
    if right_prec < prec or (right_prec == prec and not right_assoc and prec != _ATOM):
        right = f"({right})"
    return (power(left, right) if expr.op == "**" else f"{left} {expr.op} {right}"), prec
