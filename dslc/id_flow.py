"""Where a model's integer values go: which inputs feed an op taking ids (an Embedding, one_hot: `Op.id_limit`),
and which position counts (`positions(x, dim=time)`) index a table, so that `time` may not exceed its rows.

Values are followed through assignments, value-preserving ops (VALUE_OPS, indexing, tuples) and into blocks,
named groups and repeats; arithmetic and other ops make new values (`positions(ids)` feeds a position Embedding
with positions, not with the ids). Verification draws ids over each input's whole valid range
(`dslc.export_onnx.example_inputs`); the checker turns each position limit into a size rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dslc import ir
from dslc.errors import Loc
from dslc.layers import REGISTRY
from dslc.shapes import Dim

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


@dataclass(frozen=True)
class Positions:
    """The values 0 .. count - 1 of a `positions(...)` call."""

    count: Dim


@dataclass(frozen=True)
class PositionLimit:
    """Positions up to `count` index a table of `rows` rows (the layer at `loc`): `count <= rows` must hold."""

    count: Dim
    rows: int
    layer: str
    loc: Loc | None


Taint = frozenset  # what an expression's values may hold: input positions (int) and Positions


class IdFlow:
    """Per module: input position -> the smallest id limit it feeds, and per output the sources its values hold;
    `limits` collects every position count that indexes a table, in any module walked."""

    def __init__(self, modules: list[ir.ModuleIR]):
        self.blocks = {m.key: m for m in modules}
        self.summaries: dict[int, tuple[dict[int, int], list[Taint]]] = {}  # by id() of the ModuleIR
        self.limits: list[PositionLimit] = []

    def summary(self, module: ir.ModuleIR) -> tuple[dict[int, int], list[Taint]]:
        """(input position -> smallest vocabulary it feeds, per output the sources its values may hold)."""
        key = id(module)
        if key not in self.summaries:
            self.summaries[key] = ({}, [Taint() for _ in module.outputs])  # blocks do not recurse; never loop
            self.summaries[key] = self._walk(module)
        return self.summaries[key]

    def _walk(self, module: ir.ModuleIR) -> tuple[dict[int, int], list[Taint]]:
        bounds: dict[int, int] = {}
        env: dict[str, Taint] = {p.name: Taint({i}) for i, p in enumerate(module.inputs)}
        subs = {s.attr: s for s in module.submodules}
        where: list[Loc | None] = [module.loc]  # the statement being walked

        def bound(taint: Taint, vocab: int, layer: str, loc: Loc | None) -> None:
            for source in taint:
                if isinstance(source, Positions):
                    self.limits.append(PositionLimit(source.count, vocab, layer, loc))
                else:
                    bounds[source] = min(bounds.get(source, vocab), vocab)

        def call(callee: ir.ModuleIR, args: list[Taint], loc: Loc | None) -> list[Taint]:
            callee_bounds, passes = self.summary(callee)
            for i, vocab in callee_bounds.items():
                if i < len(args):
                    bound(args[i], vocab, f"block '{callee.spec_name}'", loc)
            return [Taint().union(*(_through(source, args) for source in p)) for p in passes]

        def layer(sub: ir.Submodule, args: list[Taint], outputs: int) -> list[Taint]:
            """Run the taints through a submodule: an op, a block, or a group / repeat (chained children)."""
            if sub.kind == "op":
                return op(sub.op, sub.init, args, outputs, sub.loc, f"'{sub.attr}' ({sub.op})")
            if sub.kind == "block":
                callee = self.blocks.get(sub.block)
                return call(callee, args, sub.loc) if callee else [Taint()] * outputs
            current = args
            for child in sub.children:
                current = layer(child, current, outputs) + args[1:]  # a repeat passes its extra inputs to every copy
            return current[:outputs]

        def op(
            name: str, init: dict[str, Any], args: list[Taint], outputs: int, loc: Loc | None, layer: str = ""
        ) -> list[Taint]:
            limit = REGISTRY[name].id_limit
            if limit is not None and args:
                bound(args[0], limit(init), layer or name, loc)
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
                args = [taint(x)[0] for x in e.inputs]
                if e.op == "positions":
                    return [Taint({Positions(e.type.shape[0])})]
                sub = target(e.module) if e.module else None
                if sub is None:
                    return op(e.op, e.init, args, outputs, where[0])
                return op(e.op, e.init, args, outputs, sub.loc, f"'{sub.attr}' ({e.op})")
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
            where[0] = stmt.loc
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


def _through(source: int | Positions, args: list[Taint]) -> Taint:
    """What an output source of a block holds in the caller: the argument at an input position, or the positions."""
    if isinstance(source, Positions):
        return Taint({source})
    return args[source] if source < len(args) else Taint()


def int_input_bounds(module: ir.ModuleIR, program: ir.ProgramIR | None = None) -> dict[str, int]:
    """For inputs feeding an op that takes ids (`Op.id_limit`), the smallest limit they feed (valid ids are below it).
    Blocks are looked up in `program`; without it only the module's own layers count."""
    bounds, _ = IdFlow(program.modules if program else []).summary(module)
    return {module.inputs[i].name: vocab for i, vocab in bounds.items()}


def position_limits(module: ir.ModuleIR, modules: list[ir.ModuleIR]) -> list[PositionLimit]:
    """Every `positions(...)` count that indexes a table (a position Embedding) in `module` or the blocks it uses
    (looked up in `modules`)."""
    flow = IdFlow(modules)
    flow.summary(module)
    return flow.limits
