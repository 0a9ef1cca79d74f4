"""The syntax tree: plain dataclasses built by dslc.parser. Nothing else sees Lark trees."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from dslc.errors import Loc

# ---------------------------------------------------------------- expressions


@dataclass
class Expr:
    loc: Loc


@dataclass
class Num(Expr):
    value: int | float


@dataclass
class Str(Expr):
    value: str


@dataclass
class Bool(Expr):
    value: bool


@dataclass
class NoneLit(Expr):
    pass


@dataclass
class Name(Expr):
    id: str


@dataclass
class Call(Expr):
    func: str  # possibly dotted: "blocks.Residual"
    args: list[Expr]
    kwargs: list[tuple[str, Expr]]


@dataclass
class BinOp(Expr):
    op: str  # + - * / // % @ ** == != < <= > >= and or
    left: Expr
    right: Expr


@dataclass
class UnaryOp(Expr):
    op: str  # - not
    operand: Expr


@dataclass
class Slice(Expr):
    start: Expr | None
    stop: Expr | None
    step: Expr | None


@dataclass
class EllipsisLit(Expr):
    pass


@dataclass
class NewAxis(Expr):
    pass


@dataclass
class Index(Expr):
    value: Expr
    items: list[Expr]  # Expr, Slice, Ellipsis_ or NewAxis


@dataclass
class TupleLit(Expr):
    items: list[Expr]


@dataclass
class ListLit(Expr):
    items: list[Expr]


@dataclass
class CondExpr(Expr):
    """`(a if condition else b)`, decided at compile time."""

    cond: Expr
    then: Expr
    orelse: Expr


@dataclass
class Pipe(Expr):
    source: Expr
    stages: list[Stage]


# ---------------------------------------------------------------- pipeline stages


@dataclass
class Stage:
    loc: Loc


@dataclass
class LayerCall(Stage):
    """`Conv2d(32, kernel=3)`, `Flatten` (no parentheses) or a reuse of a named layer."""

    name: str
    args: list[Expr]
    kwargs: list[tuple[str, Expr]]
    bare: bool = False  # written without parentheses


@dataclass
class NamedStage(Stage):
    """`conv1: Conv2d(64, 7)`: names the submodule (and its parameters)."""

    name: str
    body: Stage


@dataclass
class Repeat(Stage):
    count: Expr
    body: Stage


@dataclass
class Group(Stage):
    """`(A -> B -> C)`: a sequence that becomes one nn.Sequential when named."""

    stages: list[Stage]


@dataclass
class ForStage(Stage):
    """`for width in WIDTHS { Conv2d(width, kernel=3) -> ReLU }`: the stages once per item, spliced in."""

    names: list[str]  # one per item, or one per element of each item (`for c, n in [(16, 1), (24, 2)]`)
    items: Expr
    stages: list[Stage]


@dataclass
class IfStage(Stage):
    """`if expand != 1 { A -> B } else { C }`: the stages of the arm whose condition holds, spliced in."""

    branches: list[tuple[Expr, list[Stage]]]  # (condition, stages) for if and each elif
    orelse: list[Stage]


# ---------------------------------------------------------------- statements


@dataclass
class TensorTypeExpr:
    loc: Loc
    dtype: str
    dims: list[Expr]


@dataclass
class Stmt:
    loc: Loc
    comments: list[str] = field(default_factory=list, kw_only=True)


@dataclass
class InputDecl(Stmt):
    name: str
    type: TensorTypeExpr


@dataclass
class OutputDecl(Stmt):
    name: str
    type: TensorTypeExpr | None
    value: Expr | None


@dataclass
class ParamDecl(Stmt):
    """`param cls_token: float32[1, 1, hidden] = zeros`: a learned tensor, named as declared."""

    name: str
    type: TensorTypeExpr
    init: Expr | None


@dataclass
class Tie(Stmt):
    """`tie lm_head.weight = transformer.wte.weight`: the first parameter is the second one (tied weights)."""

    target: str  # dotted state_dict keys
    source: str


@dataclass
class Assign(Stmt):
    targets: list[str]
    value: Expr


@dataclass
class If(Stmt):
    branches: list[tuple[Expr, list[Stmt]]]  # (condition, body) for if and each elif
    orelse: list[Stmt]


# ---------------------------------------------------------------- top level


@dataclass
class Param:
    loc: Loc
    name: str
    type: str  # int, float, bool, str
    default: Expr | None


@dataclass
class Item:
    loc: Loc
    comments: list[str] = field(default_factory=list, kw_only=True)


@dataclass
class Import(Item):
    path: str
    alias: str | None
    names: list[str] | None  # `from "x.model" import A, B`


@dataclass
class Const(Item):
    name: str
    value: Expr


@dataclass
class BlockDef(Item):
    name: str
    params: list[Param]
    doc: str | None
    body: list[Stmt]
    is_model: bool


@dataclass
class Setting:
    loc: Loc
    name: str
    value: Expr


@dataclass
class Section:
    loc: Loc
    kind: str  # e.g. "step", "data"
    name: str | None
    items: list[Setting | Section]


@dataclass
class TrainDef(Item):
    name: str | None
    doc: str | None
    items: list[Setting | Section]


@dataclass
class Program:
    path: str
    source: str
    doc: str | None
    items: list[Item]
    comments: dict[int, str]  # line -> comment text, for carrying into generated code

    @cached_property
    def lines(self) -> list[str]:
        """The source split at \\n, as the lexer counts lines."""
        return self.source.split("\n")
