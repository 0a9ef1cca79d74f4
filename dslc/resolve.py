"""Pass 1, name resolution: every block and model body, used or not, before any shape is inferred.

Finds what needs no sizes to find: a layer or function that does not exist, a name nothing defines,
a parameter with an unknown type or a default of the wrong type. Each error is reported once, at
its line, whether the block is used once, eight times or never. A block with such an error is not
shape-checked at its uses (the error already says what is wrong).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from dslc import ast, traced
from dslc.errors import DslcError, Reporter, did_you_mean
from dslc.hints import layer_hint
from dslc.layers import HELPERS, REGISTRY
from dslc.loader import FileScope, check_identifier
from dslc.params import brief

PARAM_TYPES = {"int": int, "float": float, "bool": bool, "str": str}
STATIC_FUNCTIONS = {"range"}  # computed by the checker at compile time, not ops


def resolve_blocks(scope: FileScope, reporter: Reporter, evaluate: Callable[[ast.Expr, FileScope], Any]) -> set[str]:
    """Check the names of every block and model of `scope`; return the names of those that failed."""
    failed = set()
    for block in scope.own_blocks():
        before = len(reporter.diagnostics)
        BodyResolver(block, scope, reporter, evaluate).run()
        if len(reporter.diagnostics) > before:
            failed.add(block.name)
    return failed


def class_base_name(block: ast.BlockDef) -> str:
    """The generated class's name before clashes are resolved: a block's own, a model's in CamelCase."""
    return "".join(p[:1].upper() + p[1:] for p in block.name.split("_") if p) if block.is_model else block.name


def _module_level_names(scope: FileScope) -> set[str]:
    """Names the generated module defines: block and model classes, helper classes, constants."""
    names = {name.upper() for name in scope.consts} | set(HELPERS)
    names |= {class_base_name(block) for block, _ in scope.blocks.values()}
    names |= {m.group(1) for source in HELPERS.values() for m in re.finditer(r"^class (\w+)", source, re.M)}
    return names


def check_param_value(param: ast.Param, value: Any) -> Any:
    """`value` converted to the parameter's type (an int default of a float parameter is fine), or
    raise TypeError saying what is wrong."""
    expected = PARAM_TYPES[param.type]
    if expected is bool:
        ok = traced.is_bool(value)
    elif traced.is_bool(value):
        ok = False
    elif expected is float and isinstance(value, int):
        return traced.trace(float(value), traced.expr_of(value))
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise TypeError(f"'{param.name}' must be {param.type}, got {brief(value)}")
    return value


class BodyResolver:
    def __init__(self, block: ast.BlockDef, scope: FileScope, reporter: Reporter, evaluate) -> None:
        self.block = block
        self.scope = scope
        self.reporter = reporter
        self.evaluate = evaluate
        self.layers = set(named_stages(block.body))  # names a pipeline can reuse: `-> encoder`
        self.known = {p.name for p in block.params} | set(scope.consts) | declared_names(block.body)
        self.known |= self.layers | set(_type_names(block.body))

    def run(self) -> None:
        seen: set[str] = set()
        for param in self.block.params:
            if param.name in seen:
                self.reporter.error(param.loc, f"{self.block.name}: parameter '{param.name}' is declared twice")
            seen.add(param.name)
            self.param(param)
        for expr in _expressions(self.block.body):
            self.expression(expr)

    def param(self, param: ast.Param) -> None:
        # A parameter is an argument of the block's generated class: a valid Python name that hides
        # nothing its __init__ reads (torch, nn, the classes of other blocks, the module's constants).
        try:
            check_identifier(param.name, param.loc, "parameter")
        except DslcError as exc:
            self.reporter.extend(exc)
            return
        if param.name in _module_level_names(self.scope):
            self.reporter.error(
                param.loc, f"parameter '{param.name}' has the name of a class or constant of the generated code"
            )
            return
        if param.type not in PARAM_TYPES:
            self.reporter.error(param.loc, f"unknown parameter type '{param.type}'", "use int, float, bool or str")
            return
        if param.default is None:
            return
        try:
            value = self.evaluate(param.default, self.scope)
        except Exception:  # noqa: BLE001 - the evaluator reported it (a DslcError with its location)
            return
        try:
            check_param_value(param, value)
        except TypeError as exc:
            self.reporter.error(param.default.loc, f"{self.block.name}: the default of {exc}")

    def expression(self, expr: ast.Expr) -> None:
        for node in walk(expr, _arguments):
            if isinstance(node, ast.Name):
                self.name(node)
            elif isinstance(node, ast.Call):
                self.function(node)
            elif isinstance(node, ast.LayerCall):
                self.layer(node)

    def name(self, node: ast.Name) -> None:
        if node.id in self.known or self.scope.lookup_block(node.id):
            return  # a block named as a value is an error the checker explains
        self.reporter.error(node.loc, f"unknown name '{node.id}'", did_you_mean(node.id, sorted(self.known)))

    def layer(self, stage: ast.LayerCall) -> None:
        if stage.name in REGISTRY or stage.name in self.known or self.scope.lookup_block(stage.name):
            return
        candidates = list(REGISTRY) + list(self.scope.blocks) + sorted(self.layers)
        self.reporter.error(
            stage.loc,
            f"unknown layer '{stage.name}'",
            layer_hint(stage.name) or did_you_mean(stage.name, candidates),
            section="layers-and-functions",
        )

    def function(self, call: ast.Call) -> None:
        known = call.func in STATIC_FUNCTIONS or call.func in REGISTRY or call.func in self.known
        if known or self.scope.lookup_block(call.func):
            return
        candidates = [k for k, o in REGISTRY.items() if o.category == "function" or k.islower()]
        self.reporter.error(
            call.loc, f"unknown function '{call.func}'", did_you_mean(call.func, candidates + sorted(self.layers))
        )


def names_read(stmts: list[ast.Stmt]) -> set[str]:
    """Every name a body reads: in expressions, conditions, arguments, repeat counts and types."""
    roots: list[Any] = list(_expressions(stmts))
    for stmt in _statements(stmts):
        texpr = getattr(stmt, "type", None)
        if isinstance(texpr, ast.TensorTypeExpr):
            roots.extend(texpr.dims)
        if isinstance(stmt, ast.ParamDecl) and stmt.init is not None:
            roots.append(stmt.init)
    return {node.id for root in roots for node in walk(root) if isinstance(node, ast.Name)}


def walk(expr: Any, arguments=None) -> Iterator[Any]:
    """Every node of an expression, pipeline stages included. `arguments(func, args, kwargs)` picks the
    call arguments to enter (all of them by default)."""
    stack = [expr]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, (ast.Call, ast.LayerCall)):
            func = node.func if isinstance(node, ast.Call) else node.name
            if arguments is None:
                stack.extend([*node.args, *(v for _, v in node.kwargs)])
            else:
                stack.extend(arguments(func, node.args, node.kwargs))
        elif isinstance(node, ast.Pipe):
            stack += [node.source, *node.stages]
        elif isinstance(node, ast.NamedStage):
            stack.append(node.body)
        elif isinstance(node, ast.Repeat):
            stack += [node.count, node.body]
        elif isinstance(node, ast.Group):
            stack.extend(node.stages)
        elif isinstance(node, ast.ForStage):
            stack += [node.items, *node.stages]
        elif isinstance(node, ast.IfStage):
            stack += [*(c for c, _ in node.branches), *(s for _, arm in node.branches for s in arm), *node.orelse]
        elif isinstance(node, ast.CondExpr):
            stack += [node.cond, node.then, node.orelse]
        elif isinstance(node, ast.BinOp):
            stack += [node.left, node.right]
        elif isinstance(node, ast.UnaryOp):
            stack.append(node.operand)
        elif isinstance(node, ast.Index):
            stack += [node.value, *node.items]
        elif isinstance(node, ast.Slice):
            stack.extend(p for p in (node.start, node.stop, node.step) if p is not None)
        elif isinstance(node, (ast.TupleLit, ast.ListLit)):
            stack.extend(node.items)


def _arguments(func: str, args: list[ast.Expr], kwargs: list[tuple[str, ast.Expr]]) -> Iterator[ast.Expr]:
    """The arguments whose names must resolve: not a bare name given for an axis (`dim=time`)."""
    op = REGISTRY.get(func)
    axes = {p.name for p in op.params if p.kind in ("axis", "axes")} if op else set()
    for arg in args:
        if not (axes and isinstance(arg, ast.Name)):  # a positional axis cannot be told from a tensor here
            yield arg
    for key, value in kwargs:
        if not (key in axes and isinstance(value, (ast.Name, ast.TupleLit))):
            yield value


def _statements(stmts: list[ast.Stmt]) -> Iterator[ast.Stmt]:
    for stmt in stmts:
        yield stmt
        if isinstance(stmt, ast.If):
            for _, body in stmt.branches:
                yield from _statements(body)
            yield from _statements(stmt.orelse)


def _expressions(stmts: list[ast.Stmt]) -> Iterator[ast.Expr]:
    for stmt in _statements(stmts):
        if isinstance(stmt, (ast.Assign, ast.OutputDecl)) and stmt.value is not None:
            yield stmt.value
        elif isinstance(stmt, ast.ParamDecl):
            yield from stmt.type.dims  # sizes read names; the initialiser is checked by the checker
        elif isinstance(stmt, ast.If):
            yield from (cond for cond, _ in stmt.branches)


def declared_names(stmts: list[ast.Stmt]) -> set[str]:
    """Every input, output, parameter, assigned and loop name of a body, in any branch."""
    names: set[str] = set()
    for stmt in _statements(stmts):
        if isinstance(stmt, ast.Assign):
            names.update(stmt.targets)
        elif isinstance(stmt, (ast.InputDecl, ast.OutputDecl, ast.ParamDecl)):
            names.add(stmt.name)
    for expr in _expressions(stmts):
        for node in walk(expr):
            if isinstance(node, ast.ForStage):
                names.update(node.names)
    return names


def _type_names(stmts: list[ast.Stmt]) -> Iterator[str]:
    """The dimension names of declared input and output types: `channels` in float32[batch, channels]."""
    for stmt in _statements(stmts):
        if isinstance(stmt, (ast.InputDecl, ast.OutputDecl)) and stmt.type is not None:  # a parameter's are read
            yield from (d.id for d in stmt.type.dims if isinstance(d, ast.Name))


def named_stages(stmts: list[ast.Stmt]) -> Iterator[str]:
    """The names the spec gives layers (`conv1: Conv2d(...)`) anywhere in a body."""
    for expr in _expressions(stmts):
        yield from (node.name for node in walk(expr) if isinstance(node, ast.NamedStage))
