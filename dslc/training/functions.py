"""Losses, metrics and tensor functions of the train section, and how each is written in PyTorch.

Torch-free. Each entry checks its argument types (dtype and rank; sizes when they are fixed) and
writes one Python expression from the already-generated code of its arguments. Arguments are
validated identifiers or `py_literal` text, so generated code holds nothing else from the spec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dslc.layers.base import py_literal
from dslc.params import BindError, P
from dslc.shapes import Sym, TensorType

REDUCTION = P(
    "reduction", "str", "mean", "mean over elements, sum, or batchmean (sum / batch size)", ("mean", "sum", "batchmean")
)
# A scalar (float) stands for a tensor filled with it, e.g. bce_with_logits(score, 1.0).
ScalarOr = TensorType | float


@dataclass(frozen=True)
class Fn:
    name: str
    kind: str  # loss | tensor | noise
    doc: str
    tensors: tuple[str, ...]  # tensor (or number) arguments, positional first
    params: tuple[P, ...]
    check: Callable[[list[Any], dict[str, Any]], TensorType]
    emit: Callable[[list[str], dict[str, Any], list[Any]], str]
    variadic: bool = False  # tensors are a list of sizes (noise)


def _float(t: Any, fn: str, arg: str) -> None:
    if isinstance(t, TensorType) and not t.is_float:
        raise BindError(f"{fn}: '{arg}' must be a floating-point tensor, got {t}", f"use float({arg}) to convert")


def _int(t: Any, fn: str, arg: str) -> None:
    if isinstance(t, TensorType) and t.dtype not in ("int64", "int32"):
        raise BindError(f"{fn}: '{arg}' must be an integer tensor (class ids), got {t}")


def _tensor(t: Any, fn: str, arg: str) -> TensorType:
    if not isinstance(t, TensorType):
        raise BindError(f"{fn}: '{arg}' must be a tensor, got the number {t!r}")
    return t


SCALAR = TensorType("float32", ())


def _classification(fn: str) -> Callable:
    def check(types, args):
        logits, target = _tensor(types[0], fn, "input"), _tensor(types[1], fn, "target")
        _float(logits, fn, "input")
        if logits.rank < 2:
            raise BindError(f"{fn}: 'input' must be [batch, ..., classes], got {logits.shape_str()}")
        if target.is_float:
            if target.rank != logits.rank:
                raise BindError(
                    f"{fn}: a probability target must have the input's shape {logits.shape_str()}, got {target.shape_str()}"
                )
        elif target.rank != logits.rank - 1:
            raise BindError(
                f"{fn}: class ids must have one dimension less than 'input' {logits.shape_str()}, got {target.shape_str()}",
                "the classes are the last dimension of the input",
            )
        else:
            _int(target, fn, "target")
        return SCALAR

    return check


def _flat_classes(codes: list[str], types: list[Any]) -> tuple[str, str]:
    """dslc puts classes last; F.cross_entropy wants them second: flatten [batch, time, C] to [N, C]."""
    x, t = codes
    if types[0].rank > 2:
        return f"{x}.flatten(0, -2)", (f"{t}.flatten(0, -2)" if types[1].is_float else f"{t}.flatten()")
    return x, t


def _ce_emit(func: str) -> Callable:
    def emit(codes, a, types):
        x, t = _flat_classes(codes, types)
        kw = ""
        if a.get("label_smoothing"):
            kw += f", label_smoothing={py_literal(a['label_smoothing'])}"
        if a["ignore_index"] != -100:
            kw += f", ignore_index={py_literal(a['ignore_index'])}"
        return f"{func}({x}, {t}{kw})"

    return emit


def _pair_check(fn: str, need_float_target: bool = True) -> Callable:
    def check(types, args):
        x = _tensor(types[0], fn, "input")
        _float(x, fn, "input")
        if isinstance(types[1], TensorType):
            if need_float_target:
                _float(types[1], fn, "target")
            if types[1].rank != x.rank:
                raise BindError(f"{fn}: input {x.shape_str()} and target {types[1].shape_str()} differ in rank")
            for a, b in zip(x.shape, types[1].shape):
                if isinstance(a, int) and isinstance(b, int) and a != b:
                    raise BindError(f"{fn}: input {x.shape_str()} and target {types[1].shape_str()} differ in size")
        return SCALAR

    return check


def _target(codes: list[str], types: list[Any]) -> str:
    if isinstance(types[1], TensorType):
        return codes[1] if types[1].is_float else f"{codes[1]}.float()"
    value = float(types[1])
    if value == 1.0:
        return f"torch.ones_like({codes[0]})"
    if value == 0.0:
        return f"torch.zeros_like({codes[0]})"
    return f"torch.full_like({codes[0]}, {py_literal(value)})"


def _elementwise(func: str, extra: Callable[[dict], str] = lambda a: "") -> Callable:
    def emit(codes, a, types):
        x, t = codes[0], _target(codes, types)
        red = a["reduction"]
        kw = extra(a)
        if red == "mean":
            return f"{func}({x}, {t}{kw})"
        call = f'{func}({x}, {t}{kw}, reduction="sum")'
        return call if red == "sum" else f"{call} / {x}.shape[0]"

    return emit


def _kl_normal_check(types, args):
    for t, arg in zip(types, ("mu", "logvar")):
        _float(_tensor(t, "kl_normal", arg), "kl_normal", arg)
    return SCALAR


def _kl_normal_emit(codes, a, types):
    mu, logvar = codes
    per_example = f"(1 + {logvar} - {mu}.pow(2) - {logvar}.exp()).flatten(1).sum(1)"
    return f"-0.5 * {per_example}.mean()" if a["reduction"] == "batchmean" else f"-0.5 * {per_example}.sum()"


def _ctc_check(types, args):
    x = _tensor(types[0], "ctc", "input")
    _float(x, "ctc", "input")
    if x.rank != 3:
        raise BindError(f"ctc: 'input' must be [batch, time, classes], got {x.shape_str()}")
    for t, arg in zip(types[1:], ("target", "input_lengths", "target_lengths")):
        _int(_tensor(t, "ctc", arg), "ctc", arg)
    return SCALAR


def _ctc_emit(codes, a, types):
    x, target, il, tl = codes
    log_probs = f"{x}.log_softmax(-1).transpose(0, 1)" if a["logits"] else f"{x}.transpose(0, 1)"
    return f"F.ctc_loss({log_probs}, {target}, {il}, {tl}, blank={py_literal(a['blank'])}, zero_infinity=True)"


def _same(types, args):
    return _tensor(types[0], "function", "input")


def _to_float(types, args):
    return _tensor(types[0], "float", "input").with_dtype("float32")


def _noise_check(types, args):
    dims = []
    for d in types:
        if isinstance(d, Sym) or (isinstance(d, int) and not isinstance(d, bool) and d > 0):
            dims.append(d)
        else:
            raise BindError(f"noise sizes must be positive integers or 'batch', got {d!r}")
    return TensorType("float32", tuple(dims))


def _noise_emit(func: str) -> Callable:
    def emit(codes, a, types):
        return f"{func}({', '.join(codes)}, device=DEVICE)"

    return emit


def _shift_check(types, args):
    x = _tensor(types[0], "shift_right", "input")
    if x.rank < 2:
        raise BindError(f"shift_right: expects [batch, time, ...], got {x.shape_str()}")
    return x


def _positions_check(types, args):
    x = _tensor(types[0], "position_ids", "input")
    if x.rank < 2:
        raise BindError(f"position_ids: expects [batch, time, ...], got {x.shape_str()}")
    return TensorType("int64", x.shape[:2])


def _reduce_check(types, args):
    _tensor(types[0], "mean", "input")
    return SCALAR


FUNCTIONS: dict[str, Fn] = {}


def _reg(fn: Fn) -> None:
    FUNCTIONS[fn.name] = fn


_IGNORE = P("ignore_index", "int", -100, "target value that contributes nothing (padding)")
_reg(
    Fn(
        "cross_entropy",
        "loss",
        "softmax cross-entropy of logits (classes last) with class ids or probabilities",
        ("input", "target"),
        (P("label_smoothing", "float", 0.0, low=0.0, high=1.0), _IGNORE),
        _classification("cross_entropy"),
        _ce_emit("F.cross_entropy"),
    )
)
_reg(
    Fn(
        "nll",
        "loss",
        "negative log-likelihood of log-probabilities (classes last)",
        ("input", "target"),
        (_IGNORE,),
        _classification("nll"),
        _ce_emit("F.nll_loss"),
    )
)
_reg(
    Fn(
        "bce",
        "loss",
        "binary cross-entropy of probabilities in [0, 1]; the target may be a number",
        ("input", "target"),
        (REDUCTION,),
        _pair_check("bce"),
        _elementwise("F.binary_cross_entropy"),
    )
)
_reg(
    Fn(
        "bce_with_logits",
        "loss",
        "binary cross-entropy of logits (sigmoid folded in); the target may be a number",
        ("input", "target"),
        (REDUCTION,),
        _pair_check("bce_with_logits"),
        _elementwise("F.binary_cross_entropy_with_logits"),
    )
)
_reg(
    Fn(
        "mse",
        "loss",
        "mean squared error",
        ("input", "target"),
        (REDUCTION,),
        _pair_check("mse"),
        _elementwise("F.mse_loss"),
    )
)
_reg(
    Fn(
        "l1",
        "loss",
        "mean absolute error",
        ("input", "target"),
        (REDUCTION,),
        _pair_check("l1"),
        _elementwise("F.l1_loss"),
    )
)
_reg(
    Fn(
        "smooth_l1",
        "loss",
        "Huber-like smooth L1",
        ("input", "target"),
        (REDUCTION, P("beta", "float", 1.0)),
        _pair_check("smooth_l1"),
        _elementwise("F.smooth_l1_loss", lambda a: f", beta={py_literal(a['beta'])}"),
    )
)
_reg(
    Fn(
        "kl_normal",
        "loss",
        "KL(N(mu, exp(logvar)) || N(0, 1)) summed over latent dims, averaged over the batch",
        ("mu", "logvar"),
        (P("reduction", "str", "batchmean", choices=("batchmean", "sum")),),
        _kl_normal_check,
        _kl_normal_emit,
    )
)
_reg(
    Fn(
        "kl_div",
        "loss",
        "KL divergence of log-probabilities `input` from probabilities `target`, per example",
        ("input", "target"),
        (),
        _pair_check("kl_div"),
        lambda c, a, t: f'F.kl_div({c[0]}, {c[1]}, reduction="batchmean")',
    )
)
_reg(
    Fn(
        "ctc",
        "loss",
        "connectionist temporal classification of [batch, time, classes] scores (log-softmax applied "
        "when logits=true) against padded targets",
        ("input", "target", "input_lengths", "target_lengths"),
        (P("blank", "int", 0), P("logits", "bool", True)),
        _ctc_check,
        _ctc_emit,
    )
)
_reg(
    Fn(
        "detach",
        "tensor",
        "the same values, cut from the gradient graph (GAN discriminator step)",
        ("input",),
        (),
        _same,
        lambda c, a, t: f"{c[0]}.detach()",
    )
)
_reg(Fn("float", "tensor", "convert to float32", ("input",), (), _to_float, lambda c, a, t: f"{c[0]}.float()"))
_reg(Fn("mean", "tensor", "mean of all elements", ("input",), (), _reduce_check, lambda c, a, t: f"{c[0]}.mean()"))
_reg(Fn("sum", "tensor", "sum of all elements", ("input",), (), _reduce_check, lambda c, a, t: f"{c[0]}.sum()"))
_reg(
    Fn(
        "shift_right",
        "tensor",
        "teacher forcing: prepend `fill` along time and drop the last step",
        ("input",),
        (P("fill", "int", 1, "start token"),),
        _shift_check,
        lambda c, a, t: f"F.pad({c[0]}[:, :-1], (1, 0), value={py_literal(a['fill'])})",
    )
)
_reg(
    Fn(
        "position_ids",
        "tensor",
        "0, 1, 2, ... along time, int64[batch, time]",
        ("input",),
        (),
        _positions_check,
        lambda c, a, t: f"torch.arange({c[0]}.shape[1], device={c[0]}.device).expand({c[0]}.shape[0], -1)",
    )
)
_reg(
    Fn(
        "normal",
        "noise",
        "standard normal noise of the given sizes (`batch` = the current batch size)",
        (),
        (),
        _noise_check,
        _noise_emit("torch.randn"),
        variadic=True,
    )
)
_reg(
    Fn(
        "uniform",
        "noise",
        "uniform noise in [0, 1) of the given sizes",
        (),
        (),
        _noise_check,
        _noise_emit("torch.rand"),
        variadic=True,
    )
)


# ---------------------------------------------------------------- layout helpers (data fields -> model inputs)


def _axis(t: TensorType, axis: int, rank: int, fn: str) -> int:
    if not isinstance(axis, int) or not -rank <= axis < rank:
        raise BindError(f"{fn}: dim {axis!r} is out of range for {t.shape_str()}")
    return axis % rank


def _transpose_check(types, a):
    x = _tensor(types[0], "transpose", "input")
    shape = list(x.shape)
    i, j = _axis(x, a["dim0"], x.rank, "transpose"), _axis(x, a["dim1"], x.rank, "transpose")
    shape[i], shape[j] = shape[j], shape[i]
    return x.with_shape(shape)


def _unsqueeze_check(types, a):
    x = _tensor(types[0], "unsqueeze", "input")
    i = _axis(x, a["dim"], x.rank + 1, "unsqueeze")
    return x.with_shape([*x.shape[:i], 1, *x.shape[i:]])


def _repeat_check(types, a):
    x = _tensor(types[0], "repeat", "input")
    i = _axis(x, a["dim"], x.rank, "repeat")
    if not isinstance(a["times"], int) or a["times"] < 1:
        raise BindError(f"repeat: times must be a positive integer, got {a['times']!r}")
    return x.with_shape([*x.shape[:i], x.shape[i] * a["times"], *x.shape[i + 1 :]])


def _floor_div_check(types, a):
    x = _tensor(types[0], "floor_div", "input")
    if not isinstance(a["divisor"], int) or a["divisor"] < 1:
        raise BindError(f"floor_div: the divisor must be a positive integer, got {a['divisor']!r}")
    return x


_reg(
    Fn(
        "transpose",
        "tensor",
        "swap two dimensions, e.g. [batch, time, freq] -> [batch, freq, time]",
        ("input",),
        (P("dim0", "int"), P("dim1", "int")),
        _transpose_check,
        lambda c, a, t: f"{c[0]}.transpose({py_literal(a['dim0'])}, {py_literal(a['dim1'])})",
    )
)
_reg(
    Fn(
        "unsqueeze",
        "tensor",
        "insert a dimension of size 1 (e.g. a channel axis)",
        ("input",),
        (P("dim", "int"),),
        _unsqueeze_check,
        lambda c, a, t: f"{c[0]}.unsqueeze({py_literal(a['dim'])})",
    )
)
_reg(
    Fn(
        "repeat",
        "tensor",
        "repeat each element `times` along `dim` (e.g. grey [batch, 1, H, W] -> RGB [batch, 3, H, W])",
        ("input",),
        (P("times", "int"), P("dim", "int", 1)),
        _repeat_check,
        lambda c, a, t: f"{c[0]}.repeat_interleave({py_literal(a['times'])}, dim={py_literal(a['dim'])})",
    )
)
_reg(
    Fn(
        "floor_div",
        "tensor",
        "integer division rounding down, e.g. sequence lengths after a stride-2 layer",
        ("input",),
        (P("divisor", "int"),),
        _floor_div_check,
        lambda c, a, t: f'torch.div({c[0]}, {py_literal(a["divisor"])}, rounding_mode="floor")',
    )
)
_reg(
    Fn(
        "ones_like",
        "tensor",
        "a tensor of ones with the input's shape and dtype (e.g. a full attention mask)",
        ("input",),
        (),
        _same,
        lambda c, a, t: f"torch.ones_like({c[0]})",
    )
)
_reg(
    Fn(
        "zeros_like",
        "tensor",
        "a tensor of zeros with the input's shape and dtype (e.g. segment ids)",
        ("input",),
        (),
        _same,
        lambda c, a, t: f"torch.zeros_like({c[0]})",
    )
)


# ---------------------------------------------------------------- metrics


@dataclass(frozen=True)
class Metric:
    name: str
    doc: str
    params: tuple[P, ...]
    higher_is_better: bool
    classification: bool  # (scores, class ids) rather than (prediction, target)
    key: Callable[[dict[str, Any]], str]  # the name in metrics.jsonl
    total: Callable[[str, str, dict[str, Any]], tuple[str, str]]  # (sum expression, count expression)
    final: str = "mean"  # mean | sqrt | exp


def _acc_total(p, t, a):
    ign = a.get("ignore_index")
    if ign is None:
        return f"({p}.argmax(-1) == {t}).sum()", f"{t}.numel()"
    keep = f"({t} != {py_literal(ign)})"
    return f"(({p}.argmax(-1) == {t}) & {keep}).sum()", f"{keep}.sum()"


def _topk_total(p, t, a):
    return f"({p}.topk({py_literal(a['k'])}, dim=-1).indices == {t}.unsqueeze(-1)).any(-1).sum()", f"{t}.numel()"


def _ppl_total(p, t, a):
    x, tt = (f"{p}.flatten(0, -2)", f"{t}.flatten()")
    ign = a["ignore_index"]
    return (
        f'F.cross_entropy({x}, {tt}, ignore_index={py_literal(ign)}, reduction="sum")',
        f"({t} != {py_literal(ign)}).sum()",
    )


def _cer_total(p, t, a):
    """`a["lengths"]`: the (input_lengths, target_lengths) tensor names of the ctc loss on the same pair, if any."""
    blank = py_literal(a["blank"])
    lengths = a.get("lengths") or []
    if len(lengths) == 2:
        return f"rt.ctc_char_errors({p}, {t}, {lengths[0]}, {lengths[1]}, blank={blank})", f"{lengths[1]}.sum()"
    return f"rt.ctc_char_errors({p}, {t}, blank={blank})", f"({t} != {blank}).sum()"


METRICS: dict[str, Metric] = {}
for _m in (
    Metric(
        "accuracy",
        "fraction of correct argmax predictions",
        (P("ignore_index", "int", None),),
        True,
        True,
        lambda a: "accuracy",
        _acc_total,
    ),
    Metric(
        "top_k",
        "fraction of targets among the k highest scores",
        (P("k", "int", 5, low=1),),
        True,
        True,
        lambda a: f"top{a['k']}_accuracy",
        _topk_total,
    ),
    Metric(
        "perplexity",
        "exp of the mean token cross-entropy",
        (_IGNORE,),
        False,
        True,
        lambda a: "perplexity",
        _ppl_total,
        "exp",
    ),
    Metric(
        "cer",
        "character error rate of CTC output: edit distance of the greedy decoding (best path, repeats merged, "
        "blanks dropped) to the target, per target character; lengths come from the ctc loss on the same pair",
        (P("blank", "int", 0),),
        False,
        True,
        lambda a: "cer",
        _cer_total,
    ),
    Metric(
        "mae",
        "mean absolute error",
        (),
        False,
        False,
        lambda a: "mae",
        lambda p, t, a: (f"({p} - {t}).abs().sum()", f"{t}.numel()"),
    ),
    Metric(
        "mse",
        "mean squared error",
        (),
        False,
        False,
        lambda a: "mse",
        lambda p, t, a: (f"({p} - {t}).pow(2).sum()", f"{t}.numel()"),
    ),
    Metric(
        "rmse",
        "root mean squared error",
        (),
        False,
        False,
        lambda a: "rmse",
        lambda p, t, a: (f"({p} - {t}).pow(2).sum()", f"{t}.numel()"),
        "sqrt",
    ),
):
    METRICS[_m.name] = _m


# ---------------------------------------------------------------- optimizers and schedules


@dataclass(frozen=True)
class OptimizerDef:
    name: str
    torch_class: str
    params: tuple[P, ...]
    defaults: dict[str, Any]  # PyTorch's defaults: equal values are left out of the generated call


_WD = P("weight_decay", "float", 0.0, low=0.0)
_BETAS = P("betas", "floats", (0.9, 0.999), low=0.0, high=1.0, open_high=True, length=2)
OPTIMIZERS = {
    "sgd": OptimizerDef(
        "sgd",
        "torch.optim.SGD",
        (P("lr", "float", 0.01, low=0.0), P("momentum", "float", 0.0, low=0.0), P("nesterov", "bool", False), _WD),
        {"momentum": 0.0, "nesterov": False, "weight_decay": 0.0},
    ),
    "adam": OptimizerDef(
        "adam",
        "torch.optim.Adam",
        (P("lr", "float", 1e-3, low=0.0), _BETAS, P("eps", "float", 1e-8, low=0.0), _WD),
        {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
    ),
    "adamw": OptimizerDef(
        "adamw",
        "torch.optim.AdamW",
        (
            P("lr", "float", 1e-3, low=0.0),
            _BETAS,
            P("eps", "float", 1e-8, low=0.0),
            P("weight_decay", "float", 0.01, low=0.0),
        ),
        {"betas": (0.9, 0.999), "eps": 1e-8},
    ),
    "rmsprop": OptimizerDef(
        "rmsprop",
        "torch.optim.RMSprop",
        (
            P("lr", "float", 0.01, low=0.0),
            P("alpha", "float", 0.99, low=0.0),
            P("momentum", "float", 0.0, low=0.0),
            _WD,
        ),
        {"alpha": 0.99, "momentum": 0.0, "weight_decay": 0.0},
    ),
}
GROUP_PARAMS = (
    P("lr", "float", None, low=0.0),
    P("weight_decay", "float", None, low=0.0),
    P("momentum", "float", None, low=0.0),
)

_WARMUP = P("warmup", "float", 0.0, "epochs of linear warmup from 0", low=0.0)
SCHEDULES: dict[str, tuple[P, ...]] = {
    "constant": (_WARMUP,),
    "step": (P("every", "int", 10, "epochs between decays", low=1), P("gamma", "float", 0.1, low=0.0), _WARMUP),
    "cosine": (_WARMUP, P("min_factor", "float", 0.0, "final learning rate as a fraction of the initial one")),
    "linear": (_WARMUP, P("min_factor", "float", 0.0)),
    "one_cycle": (
        P("max_lr", "float", None, "peak learning rate (default: the optimizer's lr)", low=0.0),
        P("pct_start", "float", 0.3, low=0.0, high=1.0, open_high=True),
    ),
}
