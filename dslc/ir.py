"""The checked intermediate representation: what the emitters read.

Every tensor expression carries its inferred type; every module lists its submodules with fully
resolved constructor arguments. Nothing here refers back to the syntax tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dslc.errors import Loc
from dslc.pytext import module_name
from dslc.shapes import TensorType

# ---------------------------------------------------------------- tensor expressions


@dataclass
class Expr:
    types: list[TensorType]  # one per output

    @property
    def type(self) -> TensorType:
        return self.types[0]


@dataclass
class Var(Expr):
    name: str


@dataclass
class Scalar(Expr):
    """A Python number (or bool) in a tensor expression, e.g. the 2 in `x * 2`."""

    value: Any


@dataclass
class OpCall(Expr):
    op: str  # registry key
    inputs: list[Expr]
    init: dict[str, Any]
    module: str | None  # attribute path of the submodule, None for inline functional ops
    args: dict[str, Any] = field(default_factory=dict)  # the arguments as the spec gave them


@dataclass
class ModuleCall(Expr):
    """A call of a block, a named Sequential, or a reused layer."""

    module: str
    inputs: list[Expr]


@dataclass
class BinOp(Expr):
    op: str
    left: Expr
    right: Expr


@dataclass
class UnaryOp(Expr):
    op: str
    operand: Expr


@dataclass
class SliceItem:
    start: int | None
    stop: int | None
    step: int | None


@dataclass
class Index(Expr):
    value: Expr
    items: list[Any]  # int | SliceItem | Ellipsis | None (new axis)


@dataclass
class GetItem(Expr):
    """One output of a multi-output expression."""

    value: Expr
    index: int


@dataclass
class TupleExpr(Expr):
    items: list[Expr]


# ---------------------------------------------------------------- statements


@dataclass
class Stmt:
    loc: Loc
    comments: list[str] = field(default_factory=list, kw_only=True)
    source: str = field(default="", kw_only=True)  # the spec line, for tracing generated code


@dataclass
class Assign(Stmt):
    targets: list[str]
    value: Expr


@dataclass
class RepeatLoop(Stmt):
    """`for block in self.<module>: target = block(target, *extra)`."""

    target: str
    module: str
    first: Expr
    extra: list[Expr]


# ---------------------------------------------------------------- modules


@dataclass
class Submodule:
    attr: str
    kind: str  # op | block | sequential | list
    loc: Loc
    op: str | None = None
    init: dict[str, Any] = field(default_factory=dict)
    block: str | None = None  # class name, for kind == "block"
    args: dict[str, Any] = field(default_factory=dict)  # the op's arguments as the spec gave them
    children: list[Submodule] = field(default_factory=list)
    params: int = 0  # learnable parameters, children included


@dataclass
class Port:
    name: str
    type: TensorType
    doc: str = ""


@dataclass
class LayerRecord:
    """One row of `dslc check --shapes`."""

    loc: Loc
    module: str
    what: str
    output: str
    params: int


@dataclass
class ModuleIR:
    class_name: str
    spec_name: str
    kind: str  # model | block
    doc: str | None
    signature: str  # e.g. "BasicBlock(planes=128, stride=2)"
    loc: Loc
    inputs: list[Port]
    outputs: list[Port]
    submodules: list[Submodule]
    body: list[Stmt]
    helpers: set[str]
    records: list[LayerRecord]
    comments: list[str] = field(default_factory=list)

    @property
    def param_count(self) -> int:
        return sum(s.params for s in self.submodules)


@dataclass
class ProgramIR:
    path: str
    source: str
    sha256: str
    doc: str | None
    modules: list[ModuleIR]  # dependencies first
    models: list[str]  # class names of exported models, in spec order
    constants: dict[str, Any]
    labels: dict[str, list[str]] = field(default_factory=dict)  # model -> class labels
    vocab: list[str] | None = None  # token strings by id, for text models
    train: Any = None  # the checked training configuration (dslc.training), None when absent

    def module(self, class_name: str) -> ModuleIR:
        return next(m for m in self.modules if m.class_name == class_name)

    def model(self, spec_name: str) -> ModuleIR:
        return next(m for m in self.modules if m.kind == "model" and m.spec_name == spec_name)

    @property
    def exported(self) -> list[ModuleIR]:
        return [self.module(n) for n in self.models]

    @property
    def module_name(self) -> str:
        """The generated code's module (and file) name, derived from the spec's file name."""
        return module_name(Path(self.path).stem)
