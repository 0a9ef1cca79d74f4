"""The checked intermediate representation: what the emitters read.

Every tensor expression carries its inferred type; every module lists its submodules with fully
resolved constructor arguments. Nothing here refers back to the syntax tree.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dslc.errors import Loc
from dslc.pytext import module_name
from dslc.shapes import SizeRule, Sym, TensorType, solve_sizes, unmet_rules

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
class ParamRef(Expr):
    """A declared parameter of the module (`param cls_token: ...`), read as `self.cls_token`."""

    attr: str


@dataclass
class Scalar(Expr):
    """A Python number (or bool) in a tensor expression, e.g. the 2 in `x * 2`."""

    value: Any


@dataclass
class OpCall(Expr):
    op: str  # registry key
    inputs: list[Expr]
    init: dict[str, Any]
    module: str | None  # the submodule's attribute (`conv1`), None for inline functional ops
    args: dict[str, Any] = field(default_factory=dict)  # the arguments as the spec gave them


@dataclass
class ModuleCall(Expr):
    """A call of a block, a named Sequential, or a reused layer."""

    module: str  # the submodule's attribute
    inputs: list[Expr]


@dataclass
class ModelCall(Expr):
    """A train step's call of one of the spec's models: `discriminator(image)`."""

    model: str  # the model's name in the spec, a local variable of the step function
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


def operands(e: Expr) -> list[Expr]:
    """The expressions `e` reads directly."""
    if isinstance(e, (OpCall, ModuleCall, ModelCall)):
        return list(e.inputs)
    if isinstance(e, BinOp):
        return [e.left, e.right]
    if isinstance(e, UnaryOp):
        return [e.operand]
    if isinstance(e, (Index, GetItem)):
        return [e.value]
    if isinstance(e, TupleExpr):
        return list(e.items)
    return []


def subexpressions(e: Expr) -> list[Expr]:
    """`e` and every expression inside it, walked without recursion."""
    found, stack = [], [e]
    while stack:
        node = stack.pop()
        found.append(node)
        stack.extend(operands(node))
    return found


def nesting(e: Expr) -> int:
    """How deeply `e` nests calls and operators (a name or a number is 1), walked without recursion."""
    deepest, stack = 0, [(e, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in operands(node))
    return deepest


# ---------------------------------------------------------------- statements


@dataclass
class Stmt:
    loc: Loc
    comments: list[str] = field(default_factory=list, kw_only=True)
    source: str = field(default="", kw_only=True)  # the spec line, for tracing generated code
    submodules: list[Submodule] = field(default_factory=list, kw_only=True)  # the layers it creates


@dataclass
class Assign(Stmt):
    targets: list[str]
    value: Expr


@dataclass
class RepeatLoop(Stmt):
    """`for block in self.<module>: target = block(target, *extra)`; `module` is the attribute."""

    target: str
    module: str
    first: Expr
    extra: list[Expr]


@dataclass
class Layers(Stmt):
    """Layers created by a statement that runs nothing in forward()."""


@dataclass
class Branch(Stmt):
    """A compile-time `if`: the arm this use takes (`taken`; len(conditions) is the else), and each
    condition as an expression over the block's parameters (None where it cannot be written so)."""

    conditions: list[Any]
    has_else: bool
    taken: int
    body: list[Stmt]


@dataclass
class Choice(Stmt):
    """A compile-time `if` of a generated class, merged from its uses: each arm's statements, None for
    an arm no use took (the class refuses it), [] for an else the spec does not write. When a
    condition is None (not writable over the parameters) every use took the same arm."""

    conditions: list[Any]
    has_else: bool
    arms: list[list[Stmt] | None]


def values(stmt: Stmt) -> list[Expr]:
    """The expressions a statement computes."""
    if isinstance(stmt, Assign):
        return [stmt.value]
    if isinstance(stmt, RepeatLoop):
        return [stmt.first, *stmt.extra]
    return []


def flat_statements(body: list[Stmt]) -> Iterator[Stmt]:
    """The statements a use runs, the taken arm of each compile-time `if` in place."""
    for stmt in body:
        if isinstance(stmt, Branch):
            yield from flat_statements(stmt.body)
        else:
            yield stmt


# ---------------------------------------------------------------- modules


@dataclass
class Submodule:
    attr: str
    kind: str  # op | block | sequential | list | param (a declared parameter: init holds shape, initializer, args)
    loc: Loc
    op: str | None = None
    init: dict[str, Any] = field(default_factory=dict)
    block: str | None = None  # class name, for kind == "block"
    args: dict[str, Any] = field(default_factory=dict)  # the op's arguments as the spec gave them
    children: list[Submodule] = field(default_factory=list)
    call_args: dict[str, Any] = field(default_factory=dict)  # a block's class arguments at this use
    repeat: Any = None  # the count of a `repeat` (a container of identical children)
    params: int = 0  # learnable parameters, children included
    layers: int = 1  # layers it adds to the model: a block's expanded count, 0 for a container (children count)


@dataclass
class TiedWeight:
    """`tie target = source`: the state_dict key `target` holds the parameter at `source`."""

    target: str
    source: str
    size: int  # elements, counted once


@dataclass
class Port:
    name: str
    type: TensorType
    doc: str = ""
    dim_names: list[str | None] = field(default_factory=list)  # each axis's name as the spec declares it


@dataclass
class LayerRecord:
    """One row of `dslc check --shapes`."""

    loc: Loc
    module: str  # its path in the state dict: `features.0`
    what: str
    types: list[TensorType]
    params: int
    depth: int = 0  # 1 for a layer of a named group, 2 in a group of that group, ...

    @property
    def output(self) -> str:  # written when shown: a check records a row per layer and shows few of them
        return ", ".join(str(t) for t in self.types)


@dataclass
class ClassParam:
    """An argument of a block's generated class: a hyperparameter, or a size of an input (`channels`
    in `input x: float32[batch, channels, h, w]`, found at `input`, `axis`)."""

    name: str
    type: str  # int | float | bool | str
    default: Any = None
    has_default: bool = False
    input: int | None = None
    axis: int | None = None


@dataclass
class ModuleIR:
    key: str  # unique per checked use: BasicBlock, BasicBlock2, ... (each use with other sizes)
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
    size_rules: list[SizeRule] = field(default_factory=list)  # what symbolic sizes must satisfy to run
    layer_count: int = 0  # layers with every block and repeat expanded
    class_params: list[ClassParam] = field(default_factory=list)  # a block's hyperparameters and input sizes
    class_name: str = ""  # the generated class (set by dslc.generalize: one per block definition)
    names_read: set[str] = field(default_factory=set)  # every name the block's body reads
    class_args: dict[str, Any] = field(default_factory=dict)  # this use's hyperparameters
    ties: list[TiedWeight] = field(default_factory=list)  # a model's tied weights

    def statements(self) -> Iterator[Stmt]:
        return flat_statements(self.body)

    @property
    def param_count(self) -> int:
        """As PyTorch counts `parameters()`: a tied weight once."""
        return sum(s.params for s in self.submodules) - sum(t.size for t in self.ties)


@dataclass
class ClassIR:
    """One generated class: a model, or a block with the uses that share its code."""

    name: str
    kind: str  # model | block
    uses: list[ModuleIR]
    body: list[Stmt]  # Choice where a block's uses took arms of a compile-time if

    @property
    def first(self) -> ModuleIR:
        return self.uses[0]


@dataclass
class ProgramIR:
    path: str
    source: str
    sha256: str
    doc: str | None
    modules: list[ModuleIR]  # dependencies first
    models: list[str]  # keys of exported models, in spec order
    constants: dict[str, Any]
    labels: dict[str, list[str]] = field(default_factory=dict)  # model -> class labels
    vocab: list[str] | None = None  # token strings by id, for text models
    train: Any = None  # the checked training configuration (dslc.training), None when absent
    classes: list[ClassIR] = field(default_factory=list)  # the generated classes (dslc.generalize)

    def module(self, key: str) -> ModuleIR:
        return next(m for m in self.modules if m.key == key)

    def model(self, spec_name: str) -> ModuleIR:
        return next(m for m in self.modules if m.kind == "model" and m.spec_name == spec_name)

    @property
    def exported(self) -> list[ModuleIR]:
        return [self.module(n) for n in self.models]

    def parameter_counts(self) -> tuple[int, int]:
        """The exported models' learnable parameters, each counted once, and how many of them two or
        more models share (the same layer under the same name, as `encoder.*` in `vae` and `encoder`)."""
        seen: dict[tuple, int] = {}
        for model in self.exported:
            for key in set(self._layers(model, "")):
                seen[key] = seen.get(key, 0) + 1
        tied = sum(t.size for model in self.exported for t in model.ties)
        distinct = sum(key[-1] for key in seen) - tied
        shared = sum(key[-1] for key, uses in seen.items() if uses > 1)
        return distinct, shared

    def layer_params(self, module: ModuleIR) -> Iterator[tuple[str, str, str, int]]:
        """(state_dict path, layer, init, parameters) of every parameter-holding layer of `module`."""
        return self._layers(module, "")

    def _layers(self, module: ModuleIR, prefix: str) -> Iterator[tuple[str, str, str, int]]:
        """(path, layer, init, parameters) of every parameter-holding layer, blocks expanded."""
        stack = [(prefix, s) for s in module.submodules]
        while stack:
            path, sub = stack.pop()
            name = f"{path}{sub.attr}"
            if sub.kind in ("op", "param") and sub.params:
                yield (name, sub.op or "param", repr(sorted(sub.init.items())), sub.params)
            elif sub.kind == "block":
                stack.extend((f"{name}.", s) for s in self.module(sub.block).submodules)
            else:
                stack.extend((f"{name}.", c) for c in sub.children)

    @property
    def module_name(self) -> str:
        """The generated code's module (and file) name, derived from the spec's file name."""
        return module_name(Path(self.path).stem)


# ---------------------------------------------------------------- example sizes

EXAMPLE_SIZES = {"batch": 3}
FIRST_EXAMPLE_SIZE = 16


def symbol_names(module: ModuleIR) -> list[str]:
    """The symbolic dimension names of a model's inputs, in order of first appearance."""
    names: list[str] = []
    for port in module.inputs:
        for d in port.type.shape:
            if isinstance(d, Sym):
                for atom in sorted(d.atoms()):
                    if atom not in names:
                        names.append(atom)
    return names


def default_sizes(module: ModuleIR, shift: int = 0) -> dict[str, int]:
    """Distinct sizes > 1 for each symbol (so no exporter specialises one); `shift` gives other sizes."""
    sizes, next_size = {}, FIRST_EXAMPLE_SIZE + shift
    for name in symbol_names(module):
        if name in EXAMPLE_SIZES:
            sizes[name] = max(1, EXAMPLE_SIZES[name] + shift // 4)
        else:
            sizes[name] = next_size
            next_size += 3
    return sizes


SMALLEST_SHIFT = -8  # the smallest and largest sizes verification uses (dslc.verify.VERIFY_SHIFTS)
LARGEST_SHIFT = 12


def largest_sizes(module: ModuleIR) -> dict[str, int]:
    """The largest size of each input size name that has one (positions indexing a table: `time <= 512`): what
    verification keeps below, and what the graph's dslc.max_sizes tells applications."""
    largest: dict[str, int] = {}
    for rule in module.size_rules:
        name = rule.dim.plain_name if rule.at_most is not None else None
        if name is not None:
            largest[name] = min(largest.get(name, rule.at_most), rule.at_most)
    return dict(sorted(largest.items()))


def example_sizes(module: ModuleIR, shift: int = 0) -> dict[str, int]:
    """`default_sizes`, raised by the same amount at every shift where the model's size rules need it
    (a kernel wider than the default length), so export and verification sizes stay distinct."""
    smallest = default_sizes(module, SMALLEST_SHIFT)
    solved, _ = solve_sizes(smallest, module.size_rules)
    sizes = {name: size + solved[name] - smallest[name] for name, size in default_sizes(module, shift).items()}
    for name, largest in largest_sizes(module).items():  # below a largest size, the shifts still give distinct sizes
        if name in sizes:
            sizes[name] = min(sizes[name], max(1, largest - (LARGEST_SHIFT - shift) // 4))
    if unmet_rules(module.size_rules, sizes):  # a rule that does not grow with its sizes
        sizes, _ = solve_sizes(sizes, module.size_rules)
    return sizes
