"""Pass 4b (after generalisation), dead code: a pure statement whose names nothing after it reads is dropped from
its class, so the generated forward() neither computes nor keeps alive a value no output needs (a thousand unused
activations are a thousand tensors held until forward() returns). Pure is CSE's sense without model calls:
functions and operators, no layer (a BatchNorm updates its statistics, Dropout draws) and no random draw. A
compile-time `if` reads what any of its arms reads. The ONNX lowering drops dead nodes by itself.
"""

from __future__ import annotations

from dslc import ir
from dslc.layers import REGISTRY


def eliminate_dead_code(program: ir.ProgramIR) -> None:
    for cls in program.classes:
        cls.body, _ = live_statements(cls.body, {p.name for p in cls.first.outputs})


def live_statements(body: list[ir.Stmt], live: set[str]) -> tuple[list[ir.Stmt], set[str]]:
    """`body` without the pure assignments to names that nothing after them reads, and the names it reads from
    before it; `live`: the names read after the body (its outputs)."""
    live = set(live)
    kept: list[ir.Stmt] = []
    for stmt in reversed(body):
        if isinstance(stmt, ir.Choice):
            read_before: set[str] = set(live)  # an empty or absent arm passes every live name through
            for index, arm in enumerate(stmt.arms):
                if arm is not None:
                    stmt.arms[index], arm_reads = live_statements(arm, live)
                    read_before |= arm_reads
            live = read_before
        elif isinstance(stmt, ir.Assign):
            if not live.intersection(stmt.targets) and not stmt.submodules and _pure(stmt.value):
                continue
            live.difference_update(stmt.targets)
        for value in ir.values(stmt):
            live.update(x.name for x in ir.subexpressions(value) if isinstance(x, ir.Var))
        kept.append(stmt)
    return kept[::-1], live


def _pure(value: ir.Expr) -> bool:
    for e in ir.subexpressions(value):
        if isinstance(e, ir.OpCall):
            if e.module is not None or not REGISTRY[e.op].deterministic:
                return False
        elif not isinstance(
            e, (ir.Var, ir.Scalar, ir.ParamRef, ir.BinOp, ir.UnaryOp, ir.Index, ir.GetItem, ir.TupleExpr)
        ):
            return False  # a layer or model call
    return True
