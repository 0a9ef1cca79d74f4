"""The op registry: every layer and tensor function is defined once, here and in its siblings.

An `Op` holds everything the compiler needs to know about one layer or function: its parameters
(with defaults and documentation), its shape rule, and how it is written in PyTorch. The checker,
the code generator and the generated reference documentation all read this registry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dslc.params import Param, brief
from dslc.pytext import py_literal
from dslc.shapes import Dim, Sym, TensorType, normalize_axis
from dslc.traced import expr_of, is_traced


class ShapeError(Exception):
    """Raised by a shape rule; the checker adds the source location."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True)
class AxisName:
    """A dimension named by its symbol (`dim=time`), resolved against the input's shape."""

    name: str
    size: Any = None  # inside a block, what the name is bound to (an int or a Sym)


@dataclass
class Inferred:
    """A shape rule's answer: the output types and the resolved constructor arguments; `at_least` lists
    the input sizes the op needs to run, as (size, minimum, why): `why` says what needs it ("reflection
    padding of 3 needs dimension 2 ('time') to be at least 4"). The checker refuses a fixed size below its
    minimum and records a symbolic one as a size rule, which verification's sizes meet."""

    outputs: list[TensorType]
    init: dict[str, Any] = field(default_factory=dict)
    at_least: list[tuple[Dim, int, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Op:
    name: str
    doc: str
    params: tuple[Param, ...]
    infer: Callable[[dict[str, Any], list[TensorType]], Inferred]
    category: str  # layer | activation | shape | function
    # PyTorch emission. `module` builds the nn.Module constructor (stateful layers, and stateless
    # ones placed in a named Sequential); `forward` calls it; `functional` writes a stateless op
    # inline. Each receives resolved arguments and returns Python source.
    module: Callable[[dict[str, Any]], str] | None = None
    forward: Callable[[str, list[str], dict[str, Any]], str] | None = None
    functional: Callable[[list[str], dict[str, Any]], str] | None = None
    inputs: tuple[int, int] = (1, 1)  # min and max number of tensor inputs
    prefix: str = "layer"  # stem of generated attribute names: conv1, fc2, ...
    aliases: tuple[str, ...] = ()
    helpers: tuple[str, ...] = ()  # names of helper functions (HELPERS) the emitted code calls
    deterministic: bool = True  # False for random draws: two calls are two draws, never merged
    # Whether a layer's forward changes it or draws random numbers, by init: BatchNorm's running statistics,
    # Dropout. The default reads the arguments that do (a dropout probability, track_running_stats). A call
    # without such effects whose output nothing reads leaves forward() (dslc.dce); its layer stays.
    changes_state: Callable[[dict[str, Any]], bool] = lambda init: bool(
        init.get("dropout") or init.get("track_running_stats")
    )
    train_only: bool = False  # losses and noise: a train section's, not a model's (ONNX has no use for them)
    scalar_inputs: bool = False  # a number may stand for a tensor input (`bce_with_logits(score, 1.0)`)
    # The inputs the code reads twice (`x.reshape(x.size(0), ...)`), by init: each is passed as a name (dslc.cse).
    reads_twice: Callable[[dict[str, Any]], tuple[int, ...]] | None = None
    # A loss over class ids: (the input holding them, the number of classes, the ignored id), or None,
    # by init; the training script checks the data's ids against it once, before training.
    class_ids: Callable[[dict[str, Any]], tuple[int, Any, int | None] | None] | None = None
    # Ids in the first input must lie below this, by init (Embedding's vocabulary, one_hot's classes): verification's
    # integer inputs that reach it hold ids below it (dslc.export_onnx.example_inputs).
    id_limit: Callable[[dict[str, Any]], int] | None = None
    # The ONNX lowering (dslc.lower_onnx): (graph, inputs as Values, output types, init, state_dict key prefix)
    # -> the output names. Attached next to the op with @lowering.
    onnx: Callable[..., list[str]] | None = None
    differentiable: bool = True  # False: no gradient flows from the output to the inputs (detach, zeros_like)
    autocast: bool = True  # False: PyTorch refuses the op under CUDA autocast, so the code runs it in float32
    lengths: tuple[int, int] | None = None  # the inputs holding (input lengths, target lengths): ctc, for cer
    example: str = ""
    shape_rule: str = ""  # the rule in words, for the reference
    param_count: Callable[[dict[str, Any]], int] = lambda init: 0
    # The parameters' shapes by name, by init, for the ops whose weights a `tie` may name (dslc.ties).
    weights: Callable[[dict[str, Any]], dict[str, tuple[int, ...]]] | None = None

    @property
    def stateful(self) -> bool:
        return self.functional is None

    @property
    def anchor(self) -> str:
        """The op's section in docs/reference.md: `op-conv2d`; of two names equal but for case (Conv1d and GPT-2's
        Conv1D), the later registered gets `-2`."""
        return op_anchor(self.name)

    def inputs_read_twice(self, init: dict[str, Any]) -> tuple[int, ...]:
        """The inputs the generated code mentions twice: each must be a name, not a repeated computation."""
        return self.reads_twice(init) if self.reads_twice is not None else ()

    def call(self, module: str, inputs: list[str], init: dict[str, Any]) -> str:
        """The forward() code calling the layer's submodule: `self.pool(x)` unless the op says otherwise."""
        if self.forward is not None:
            return self.forward(module, inputs, init)
        return f"{module}({', '.join(inputs)})"


def reads_first_input(init: dict[str, Any]) -> tuple[int, ...]:
    """`reads_twice` of an op whose code mentions its (first) input twice whatever its arguments."""
    return (0,)


def op_anchor(name: str) -> str:
    """See `Op.anchor`: the anchor of the op registered as `name`."""
    same = [n for n, op in REGISTRY.items() if n == op.name and n.lower() == name.lower()]
    return f"op-{name.lower()}" + ("-2" if same and same[0] != name else "")


REGISTRY: dict[str, Op] = {}
HELPERS: dict[str, str] = {}


def register(op: Op) -> Op:
    for key in (op.name, *op.aliases):
        if key in REGISTRY:
            raise ValueError(f"op {key!r} registered twice")
        REGISTRY[key] = op
    return op


def lowering(*names: str):
    """Attach the decorated function as the ONNX lowering of the ops `names` (and their aliases)."""

    def attach(fn):
        from dataclasses import replace

        for name in names:
            op = REGISTRY[name]
            lowered = replace(op, onnx=fn)
            for key in (op.name, *op.aliases):
                REGISTRY[key] = lowered
        return fn

    return attach


def helper(name: str, source: str) -> None:
    HELPERS[name] = source.strip() + "\n"


# ---------------------------------------------------------------- Python source helpers


def pycall(func: str, *args: Any, **kwargs: Any) -> str:
    """`func(args, key=value)` with every argument written as a literal.

    Arguments wrapped in `Src` are already Python source (expressions built by the generator).
    """
    parts = [a.code if isinstance(a, Src) else py_literal(a) for a in args]
    parts += [f"{k}={v.code if isinstance(v, Src) else py_literal(v)}" for k, v in kwargs.items()]
    return f"{func}({', '.join(parts)})"


@dataclass(frozen=True)
class Src:
    code: str


def differs(value: Any, default: Any) -> bool:
    """Whether generated code must write the argument: it is not PyTorch's default, or it is a block
    parameter (`stride=stride` even where this use's stride is 1)."""
    if isinstance(value, (tuple, list)) and any(is_traced(v) for v in value):
        return True
    if is_traced(value) or is_traced(default):  # `kdim` is `embed_dim` when both are `d`
        return expr_of(value) != expr_of(default)
    return value != default


def non_default(args: dict[str, Any], **defaults: Any) -> dict[str, Any]:
    """The keyword arguments whose value differs from PyTorch's default, for terse generated code."""
    return {k: args[k] for k, d in defaults.items() if differs(args.get(k), d)}


# ---------------------------------------------------------------- shape-rule helpers


def expect_rank(x: TensorType, ranks: Sequence[int], op: str, layout: str, hint: str | None = None) -> None:
    if x.rank not in ranks:
        raise ShapeError(f"{op} expects {layout}, got {x.shape_str()}", hint)


def expect_float(x: TensorType, op: str) -> None:
    if not x.is_float:
        raise ShapeError(f"{op} expects a floating-point tensor, got {x.dtype}", "convert with float(x)")


def static(d: Dim, what: str, op: str) -> int:
    if not isinstance(d, int):
        raise ShapeError(f"{op} needs a fixed {what}, but it is the symbolic size '{d}'")
    return d


def resolve_axis(value: Any, x: TensorType, op: str) -> int:
    """An axis given as an int (negative allowed) or by its dimension's symbol name."""
    if isinstance(value, AxisName):
        hits = [i for i, d in enumerate(x.shape) if isinstance(d, Sym) and d == Sym.named(value.name)]
        if not hits and value.size is not None:  # a block's dimension name, bound to the caller's size
            hits = [i for i, d in enumerate(x.shape) if d == value.size]
            if len(hits) > 1:
                raise ShapeError(
                    f"{op}: '{value.name}' is {value.size} here, which several dimensions of {x.shape_str()} have",
                    "use an integer dimension",
                )
        if len(hits) != 1:
            where = "no" if not hits else "several"
            raise ShapeError(f"{op}: {where} dimension named '{value.name}' in {x.shape_str()}")
        return hits[0]
    if not isinstance(value, int):
        raise ShapeError(f"{op}: a dimension must be an integer or a dimension name, got {brief(value)}")
    axis = normalize_axis(value, x.rank)
    if axis is None:
        raise ShapeError(f"{op}: dimension {value} is out of range for {x.shape_str()} (rank {x.rank})")
    return axis


def pair(value: Any, n: int = 2) -> tuple[int, ...]:
    if isinstance(value, (tuple, list)):
        if len(value) != n:
            raise ShapeError(f"expected {n} values, got {len(value)}")
        return tuple(value)
    return (value,) * n


def simple(value: tuple[int, ...]) -> int | tuple[int, ...]:
    """(3, 3) -> 3, for readable generated code."""
    return value[0] if len(set(value)) == 1 else value


def check_padding(padding: tuple, name: str) -> None:
    if any(not isinstance(p, int) or isinstance(p, bool) or p < 0 for p in padding):
        raise ShapeError(f"{name}: padding must be a non-negative integer or a tuple of them, got {brief(padding)}")


def check_positive(args: dict[str, Any], *names: str) -> None:
    for name in names:
        values = args[name] if isinstance(args[name], (tuple, list)) else (args[name],)
        if any(not isinstance(v, int) or isinstance(v, bool) or v <= 0 for v in values):
            raise ShapeError(f"{name} must be a positive integer, got {brief(args[name])}")


def reflected_sizes(size: Dim, before: int, after: int, axis: int) -> list[tuple[Dim, int, str]]:
    """`Inferred.at_least` of reflection padding: PyTorch reflects only a dimension larger than the padding."""
    widest = max(before, after)
    if not widest:
        return []
    why = f"reflection padding of {widest} needs dimension {axis} (size {size}) to be at least {widest + 1}"
    return [(size, widest + 1, why)]
