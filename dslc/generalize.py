"""Pass 3, generalisation: the checked uses of each block become one class.

The checker checks a block once per distinct use (hyperparameters and input sizes), so each use has
exact shapes. Here the uses of one block definition are merged into one class whose constructor
takes the hyperparameters and input sizes (`BasicBlock(channels, planes, stride)`): two uses merge
when their statements and layers are the same once every traced value (dslc.traced) is read as its
expression over the parameters; each compile-time `if` keeps the arms the uses took. Uses that
still differ (a size computed in a way the trace cannot follow) become further classes, so the
generated code is always right for every use, and general wherever the trace reaches.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from dslc import ir, traced
from dslc.errors import Loc
from dslc.shapes import Sym, TensorType

# Fields that differ between uses without changing the code: shapes, parameter counts, notes, and
# the arguments as the spec wrote them (the code is written from the resolved `init`).
_PLAIN_TYPES = {type(None), bool, int, float, str}
_IR_NODES = {
    *(cls for cls in vars(ir).values() if isinstance(cls, type) and issubclass(cls, (ir.Expr, ir.Stmt))),
    ir.SliceItem,
}
_SIZE_FIELDS = {"types", "params", "layers", "comments", "source", "loc", "records", "args"}  # args: as written


def generalize(program: ir.ProgramIR) -> list[ir.ClassIR]:
    """One class per block definition (more only where uses cannot share code) and one per model."""
    groups: dict[Any, list[ir.ModuleIR]] = {}
    for module in program.modules:
        definition = (module.kind, module.spec_name, module.loc) if module.kind == "block" else module.key
        groups.setdefault(definition, []).append(module)
    merger = _Merger()
    classes: list[ir.ClassIR] = []
    for uses in groups.values():  # a block's uses come after those of the blocks it calls
        if uses[0].kind == "model":
            parts = [(uses, list(uses[0].statements()))]
        else:
            parts = merger.merge_uses(uses)
        for members, body in parts:
            cls = ir.ClassIR(members[0].key, members[0].kind, members, body)
            for member in members:
                member.class_name = cls.name
                merger.class_of[member.key] = cls.name
            classes.append(cls)
    return classes


class _Merger:
    def __init__(self) -> None:
        self.class_of: dict[str, str] = {}  # use key -> class name, so calls of a block compare by class
        self.keys: dict[int, tuple[ir.Stmt, int]] = {}  # id(statement) -> (statement, its generic key's number)
        self.numbers: dict[Any, int] = {}  # each distinct generic key numbered, so comparing keys is cheap

    def merge_uses(self, uses: list[ir.ModuleIR]) -> list[tuple[list[ir.ModuleIR], list[ir.Stmt]]]:
        """Uses grouped into as few classes as share code, each with its merged body."""
        parts: list[tuple[list[ir.ModuleIR], list[ir.Stmt]]] = []
        for use in uses:
            for index, (members, _) in enumerate(parts):
                merged = self.merge_bodies([m.body for m in [*members, use]])
                if merged is not None:
                    parts[index] = ([*members, use], merged)
                    break
            else:
                parts.append(([use], self.merge_bodies([use.body])))
        return parts

    def merge_bodies(self, bodies: list[list[ir.Stmt]]) -> list[ir.Stmt] | None:
        """The uses' statements as one body, or None when they differ beyond the arms of an `if`."""
        if len({len(b) for b in bodies}) != 1:
            return None
        merged: list[ir.Stmt] = []
        for stmts in zip(*bodies):
            first = stmts[0]
            if isinstance(first, ir.Branch):
                choice = self.merge_branches(stmts)
                if choice is None:
                    return None
                merged.append(choice)
            elif self.same_code(stmts):
                merged.append(first)
            else:
                return None
        return merged

    def merge_branches(self, branches: tuple[ir.Stmt, ...]) -> ir.Choice | None:
        first = branches[0]
        if not all(isinstance(b, ir.Branch) and b.loc == first.loc for b in branches):
            return None
        arms_count = len(first.conditions) + 1  # the last arm is the else (empty when the spec has none)
        taken = {b.taken for b in branches}
        conditions = []
        for i in range(len(first.conditions)):
            known = [b.conditions[i] for b in branches if b.conditions[i] is not None]
            conditions.append(known[0] if known else None)
        if len(taken) > 1 and any(c is None for c in conditions):
            return None  # the uses take different arms of an if that cannot be written over the parameters
        arms: list[list[ir.Stmt] | None] = []
        for arm in range(arms_count):
            bodies = [b.body for b in branches if b.taken == arm]
            if not bodies:
                arms.append([] if arm == arms_count - 1 and not first.has_else else None)
                continue
            body = self.merge_bodies(bodies)
            if body is None:
                return None
            arms.append(body)
        choice = ir.Choice(first.loc, conditions, first.has_else, arms)
        choice.comments, choice.source = first.comments, first.source
        return choice

    def same_code(self, stmts: tuple[ir.Stmt, ...]) -> bool:
        first = self.key(stmts[0])
        return all(self.key(s) == first for s in stmts[1:])

    def key(self, stmt: ir.Stmt) -> Any:
        cached = self.keys.get(id(stmt))
        if cached is None or cached[0] is not stmt:
            key = generic_key(stmt, self.class_of)
            cached = self.keys[id(stmt)] = (stmt, self.numbers.setdefault(key, len(self.numbers)))
        return cached[1]


def generic_key(value: Any, class_of: dict[str, str]) -> Any:
    """What the generated code of `value` depends on: traced values by their expression, sizes not."""
    kind = type(value)
    if kind in _PLAIN_TYPES:  # the common kinds first, by exact type (a traced int is an int subclass)
        return (kind.__name__, value)
    if kind is list or kind is tuple:
        return ("seq", tuple([generic_key(v, class_of) for v in value]))
    if kind is dict:
        return ("dict", tuple([(k, generic_key(v, class_of)) for k, v in value.items()]))
    if kind in _IR_NODES:  # a statement or expression of the IR (Submodule has its own rules, below)
        return _fields_key(value, class_of)
    if traced.is_traced(value):
        return ("param", value.expr)
    if isinstance(value, (bool, int, float, str)):
        return (kind.__name__, value)
    if isinstance(value, (tuple, list)):
        return ("seq", tuple(generic_key(v, class_of) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((k, generic_key(v, class_of)) for k, v in value.items()))
    if isinstance(value, (Sym, TensorType, Loc)):
        return ("size", str(value))
    if isinstance(value, ir.Submodule) and value.kind == "block":
        rest = dataclasses.replace(value, block=class_of.get(value.block, value.block))
        return _fields_key(rest, class_of)
    if isinstance(value, ir.Submodule) and traced.is_traced(value.repeat):  # `repeat depth`: one child says it
        return _fields_key(dataclasses.replace(value, children=value.children[:1]), class_of)
    if dataclasses.is_dataclass(value):
        return _fields_key(value, class_of)
    return ("other", repr(value))


@functools.cache
def _code_fields(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in _SIZE_FIELDS)


def _fields_key(value: Any, class_of: dict[str, str]) -> Any:
    fields = tuple([generic_key(getattr(value, name), class_of) for name in _code_fields(type(value))])
    return (type(value).__name__, fields)
