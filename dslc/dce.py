"""Pass 4b (after generalisation), dead code: a pure statement whose names nothing after it reads is dropped from
its class, so the generated forward() neither computes nor keeps alive a value no output needs (a thousand unused
activations are a thousand tensors held until forward() returns). Pure: functions, operators and layers whose
call changes nothing (a Linear; not a BatchNorm, which updates its statistics, nor a Dropout, which draws), no
random draw, no block or model call. An unread layer call leaves forward(); the layer stays in __init__. A
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
            if not live.intersection(stmt.targets) and _pure(stmt.value):
                if stmt.submodules:  # a layer created here: it stays in __init__ (and the state dict), uncalled
                    kept.append(ir.Layers(stmt.loc, submodules=stmt.submodules, source=stmt.source))
                continue
            live.difference_update(stmt.targets)
        for value in ir.values(stmt):
            live.update(x.name for x in ir.subexpressions(value) if isinstance(x, ir.Var))
        kept.append(stmt)
    return kept[::-1], live


def _pure(value: ir.Expr) -> bool:
    """Whether computing `value` only computes it: no random draw, no layer that changes (a named Linear's call is
    pure, a BatchNorm's or a Dropout's is not), no block or model call (their bodies may)."""
    for e in ir.subexpressions(value):
        if isinstance(e, ir.OpCall):
            op = REGISTRY[e.op]
            if not op.deterministic or (e.module is not None and op.changes_state(e.init)):
                return False
        elif not isinstance(
            e, (ir.Var, ir.Scalar, ir.ParamRef, ir.BinOp, ir.UnaryOp, ir.Index, ir.GetItem, ir.TupleExpr)
        ):
            return False  # a layer or model call
    return True
