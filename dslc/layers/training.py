"""Losses, noise and the layout helpers a train section uses: ops of the one registry.

Every tensor function works in a model body and in a train section alike; the ops marked
`train_only` (losses, random draws) are refused in a model, whose ONNX graph has no use for them.
A loss gives a float32 scalar. Classes are the last dimension, as everywhere in dslc.
"""

from __future__ import annotations

from typing import Any

from dslc.layers.base import (
    Inferred,
    Op,
    Param,
    ShapeError,
    expect_float,
    lowering,
    reads_first_input,
    register,
    resolve_axis,
)
from dslc.pytext import py_literal
from dslc.shapes import Sym, TensorType

SCALAR = TensorType("float32", ())
REDUCTION = Param(
    "reduction",
    "str",
    "mean",
    "mean over elements, sum, or batchmean (sum / batch size)",
    ("mean", "sum", "batchmean"),
)
IGNORE_INDEX = Param("ignore_index", "int", -100, "target value that contributes nothing (padding)")
BATCH_SIZE = "batch_size"  # the step function's local holding the current batch's size


def _function(
    name: str, doc: str, infer, functional, params=(), example: str = "", rule: str = "", **extra: Any
) -> None:
    """Register a stateless op written inline (`extra`: any other Op field, e.g. category, prefix, train_only)."""
    fields = {"category": "function", "prefix": name} | extra
    register(
        Op(
            name=name,
            doc=doc,
            params=params,
            infer=infer,
            functional=functional,
            example=example,
            shape_rule=rule,
            **fields,
        )
    )


def _loss(name: str, doc: str, infer, functional, params=(), inputs=(2, 2), example: str = "", **extra: Any) -> None:
    _function(
        name,
        doc,
        infer,
        functional,
        params,
        example,
        "-> float32[] (a scalar)",
        category="loss",
        prefix="loss",
        inputs=inputs,
        train_only=True,
        **extra,
    )


def _integer_ids(t: TensorType, op: str, what: str) -> None:
    if t.dtype not in ("int64", "int32"):
        raise ShapeError(f"{op}: '{what}' must be an integer tensor (class ids), got {t}")


# ---------------------------------------------------------------- class-id losses


def _classification(op: str):
    def infer(args, inputs):
        logits, target = inputs
        expect_float(logits, op)
        if logits.rank < 2:
            raise ShapeError(f"{op}: 'input' must be [batch, ..., classes], got {logits.shape_str()}")
        if target.is_float:
            if target.shape != logits.shape:
                raise ShapeError(
                    f"{op}: a probability target must have the input's shape {logits.shape_str()}, "
                    f"got {target.shape_str()}"
                )
        elif target.rank != logits.rank - 1:
            raise ShapeError(
                f"{op}: class ids must have one dimension less than 'input' {logits.shape_str()}, "
                f"got {target.shape_str()}",
                "the classes are the last dimension of the input",
            )
        else:
            _integer_ids(target, op, "target")
            if target.shape != logits.shape[:-1]:
                raise ShapeError(
                    f"{op}: class ids {target.shape_str()} do not match the input {logits.shape_str()} "
                    f"(expected [{', '.join(map(str, logits.shape[:-1]))}])"
                )
        init = {k: v for k, v in args.items()}
        init |= {"flatten": logits.rank > 2, "probabilities": target.is_float, "classes": logits.shape[-1]}
        return Inferred([SCALAR], init)

    return infer


def _classification_src(func: str):
    def functional(xs, a):
        x, t = xs
        if a["flatten"]:  # F.cross_entropy wants classes second: [batch, time, C] -> [batch * time, C]
            x, t = f"{x}.flatten(0, -2)", (f"{t}.flatten(0, -2)" if a["probabilities"] else f"{t}.flatten()")
        extra = ""
        if a.get("label_smoothing"):
            extra += f", label_smoothing={py_literal(a['label_smoothing'])}"
        if a["ignore_index"] != -100:
            extra += f", ignore_index={py_literal(a['ignore_index'])}"
        return f"{func}({x}, {t}{extra})"

    return functional


def _class_ids(a: dict) -> tuple[int, object, int | None] | None:
    return None if a["probabilities"] else (1, a["classes"], a["ignore_index"])


_loss(
    "cross_entropy",
    "Softmax cross-entropy of logits (classes last) with class ids or class probabilities.",
    _classification("cross_entropy"),
    _classification_src("F.cross_entropy"),
    (Param("label_smoothing", "float", 0.0, low=0.0, high=1.0), IGNORE_INDEX),
    example="loss = cross_entropy(logits, label)",
    class_ids=_class_ids,
)
_loss(
    "nll",
    "Negative log-likelihood of log-probabilities (classes last) with class ids.",
    _classification("nll"),
    _classification_src("F.nll_loss"),
    (IGNORE_INDEX,),
    example="loss = nll(log_probs, label)",
    class_ids=_class_ids,
)


# ---------------------------------------------------------------- elementwise losses


def _pair(op: str, float_target: bool = True):
    def infer(args, inputs):
        x, target = inputs
        expect_float(x, op)
        if float_target and not target.is_float:
            raise ShapeError(f"{op}: 'target' must be a floating-point tensor, got {target}", "convert with float(x)")
        number = target.rank == 0 and x.rank > 0  # bce_with_logits(score, 1.0): a target filled with it
        if not number and target.shape != x.shape:
            raise ShapeError(
                f"{op}: input {x.shape_str()} and target {target.shape_str()} differ in shape",
                "both sides need the same shape (or a number as the target)",
            )
        return Inferred([SCALAR], dict(args) | {"fill": number, "cast": not target.is_float})

    return infer


def _target(x: str, t: str, a: dict) -> str:
    if not a["fill"]:
        return f"{t}.float()" if a["cast"] else t
    if t in ("1.0", "1"):
        return f"torch.ones_like({x})"
    if t in ("0.0", "0"):
        return f"torch.zeros_like({x})"
    return f"torch.full_like({x}, {t})"


def _elementwise_src(func: str, extra_args=lambda a: "", float32: bool = False):
    def functional(xs, a):
        x, t = xs[0], _target(xs[0], xs[1], a)
        if float32:  # outside autocast, where the inputs may be float16 or bfloat16
            x, t = f"{x}.float()", (t if t.endswith(".float()") or a["fill"] else f"{t}.float()")
        call = f"{func}({x}, {t}{extra_args(a)}"
        if a["reduction"] == "mean":
            return call + ")"
        call += ', reduction="sum")'
        return call if a["reduction"] == "sum" else f"{call} / {xs[0]}.shape[0]"

    return functional


def _reads_input_twice(a: dict) -> tuple[int, ...]:
    return (0,) if a["fill"] or a["reduction"] == "batchmean" else ()


for _name, _func, _doc in (
    ("bce", "F.binary_cross_entropy", "Binary cross-entropy of probabilities in [0, 1]; the target may be a number."),
    (
        "bce_with_logits",
        "F.binary_cross_entropy_with_logits",
        "Binary cross-entropy of logits (the sigmoid folded in, numerically stable); the target may be a number.",
    ),
    ("mse", "F.mse_loss", "Mean squared error."),
    ("l1", "F.l1_loss", "Mean absolute error."),
):
    _loss(
        _name,
        _doc,
        _pair(_name),
        _elementwise_src(_func, float32=_name == "bce"),
        (REDUCTION,),
        example=f"loss = {_name}(prediction, target)",
        scalar_inputs=True,
        reads_twice=_reads_input_twice,
        autocast=_name != "bce",  # CUDA autocast refuses binary_cross_entropy on probabilities
    )
_loss(
    "smooth_l1",
    "Huber-like smooth L1 loss.",
    _pair("smooth_l1"),
    _elementwise_src("F.smooth_l1_loss", lambda a: f", beta={py_literal(a['beta'])}" if a["beta"] != 1.0 else ""),
    (REDUCTION, Param("beta", "float", 1.0, low=0.0)),
    example="loss = smooth_l1(prediction, target)",
    scalar_inputs=True,
    reads_twice=_reads_input_twice,
)


def _kl_div_src(xs, a):
    return f'F.kl_div({xs[0]}, {xs[1]}, reduction="batchmean")'


_loss(
    "kl_div",
    "KL divergence of log-probabilities `input` from probabilities `target`, averaged over the batch.",
    _pair("kl_div"),
    _kl_div_src,
    example="loss = kl_div(log_probs, teacher_probs)",
)


# ---------------------------------------------------------------- latent and sequence losses


def _kl_normal_infer(args, inputs):
    mu, logvar = inputs
    for t, what in ((mu, "mu"), (logvar, "logvar")):
        expect_float(t, f"kl_normal '{what}'")
    if mu.shape != logvar.shape:
        raise ShapeError(f"kl_normal: mu {mu.shape_str()} and logvar {logvar.shape_str()} differ in shape")
    if mu.rank < 2:
        raise ShapeError(f"kl_normal: expects [batch, latent, ...], got {mu.shape_str()}")
    return Inferred([SCALAR], dict(args))


def _kl_normal_src(xs, a):
    mu, logvar = xs
    per_example = f"({mu}.pow(2) + {logvar}.exp() - 1 - {logvar}).flatten(1).sum(1)"
    return f"0.5 * {per_example}.mean()" if a["reduction"] == "batchmean" else f"0.5 * {per_example}.sum()"


_loss(
    "kl_normal",
    "KL(N(mu, exp(logvar)) || N(0, 1)), summed over the latent dimensions and averaged over the batch.",
    _kl_normal_infer,
    _kl_normal_src,
    (Param("reduction", "str", "batchmean", choices=("batchmean", "sum")),),
    example="loss = mse(reconstruction, image, reduction=batchmean) + kl_normal(mu, logvar)",
    reads_twice=lambda a: (0, 1),
)


def _ctc_infer(args, inputs):
    x, target, input_lengths, target_lengths = inputs
    expect_float(x, "ctc")
    if x.rank != 3:
        raise ShapeError(f"ctc: 'input' must be [batch, time, classes], got {x.shape_str()}")
    if target.rank != 2:
        raise ShapeError(f"ctc: 'target' must be padded class ids [batch, length], got {target.shape_str()}")
    for t, what in ((target, "target"), (input_lengths, "input_lengths"), (target_lengths, "target_lengths")):
        _integer_ids(t, "ctc", what)
    for t, what in ((input_lengths, "input_lengths"), (target_lengths, "target_lengths")):
        if t.rank != 1:
            raise ShapeError(f"ctc: '{what}' must be one length per example [batch], got {t.shape_str()}")
    classes = x.shape[-1]
    if isinstance(classes, int) and not 0 <= args["blank"] < classes:
        raise ShapeError(f"ctc: blank {args['blank']} is not a class of the input's {classes}")
    return Inferred([SCALAR], dict(args))


def _ctc_src(xs, a):
    x, target, input_lengths, target_lengths = xs
    log_probs = f"{x}.log_softmax(-1).transpose(0, 1)" if a["logits"] else f"{x}.transpose(0, 1)"
    blank = f", blank={py_literal(a['blank'])}" if a["blank"] else ""
    return f"F.ctc_loss({log_probs}, {target}, {input_lengths}, {target_lengths}{blank}, zero_infinity=True)"


_loss(
    "ctc",
    "Connectionist temporal classification of [batch, time, classes] scores (log-softmax applied when "
    "logits=true) against padded targets [batch, length].",
    _ctc_infer,
    _ctc_src,
    (Param("blank", "int", 0, low=0), Param("logits", "bool", True)),
    inputs=(4, 4),
    example="loss = ctc(scores, transcript, frames, transcript_lengths)",
    lengths=(2, 3),
)


def _reinforce_infer(args, inputs):
    scores, action, returns = inputs
    expect_float(scores, "reinforce")
    if scores.rank < 2:
        raise ShapeError(f"reinforce: 'scores' must be [batch, ..., actions], got {scores.shape_str()}")
    _integer_ids(action, "reinforce", "action")
    if action.shape != scores.shape[:-1]:
        raise ShapeError(
            f"reinforce: actions {action.shape_str()} do not match the scores {scores.shape_str()} "
            f"(expected [{', '.join(map(str, scores.shape[:-1]))}])",
            "the actions are the last dimension of the scores",
        )
    if not returns.is_float or returns.shape != action.shape:
        raise ShapeError(
            f"reinforce: 'returns' must be float, one per action {action.shape_str()}, got {returns}",
            "the episodes data set gives them as its field `returns`",
        )
    return Inferred([SCALAR], dict(args))


def _reinforce_src(xs, a):
    scores, action, returns = xs
    log_prob = f"{scores}.log_softmax(-1).gather(-1, {action}.unsqueeze(-1)).squeeze(-1)"
    return f"-({log_prob} * {returns}).{a['reduction']}()"


_loss(
    "reinforce",
    "The REINFORCE policy-gradient loss: -mean(log softmax(scores)[action] * returns), the log-probability of each "
    "action taken weighted by the return that followed it (reduction=sum: summed over the steps).",
    _reinforce_infer,
    _reinforce_src,
    (Param("reduction", "str", "mean", "mean or sum over the steps", ("mean", "sum")),),
    inputs=(3, 3),
    example="loss = reinforce(logits, action, returns)",
)


# ---------------------------------------------------------------- noise


def _noise_infer(args, inputs):
    for size in args["shape"]:
        if isinstance(size, Sym) and size != Sym.named("batch"):
            raise ShapeError(f"noise sizes are numbers or 'batch' (the current batch size), got '{size}'")
        if isinstance(size, int) and size <= 0:
            raise ShapeError(f"noise sizes must be positive, got {size}")
    if not args["shape"]:
        raise ShapeError("noise needs sizes, e.g. normal(batch, 64)")
    return Inferred([TensorType("float32", tuple(args["shape"]))], dict(args))


def _noise_src(func: str):
    def functional(xs, a):
        sizes = ", ".join(BATCH_SIZE if isinstance(d, Sym) else py_literal(d) for d in a["shape"])
        return f"{func}({sizes}, device=DEVICE)"

    return functional


for _name, _func, _doc in (
    ("normal", "torch.randn", "Standard normal noise of the given sizes (`batch` is the current batch size)."),
    ("uniform", "torch.rand", "Uniform noise in [0, 1) of the given sizes (`batch` is the current batch size)."),
):
    _function(
        _name,
        _doc,
        _noise_infer,
        _noise_src(_func),
        (Param("shape", "dims", (), "sizes: numbers and batch"),),
        f"z = {_name}(batch, 100)",
        "-> float32[sizes]",
        inputs=(0, 0),
        prefix="noise",
        deterministic=False,
        train_only=True,
    )


# ---------------------------------------------------------------- layout helpers


def _same(args, inputs):
    return Inferred([inputs[0]], dict(args))


def _shift_right_infer(args, inputs):
    (x,) = inputs
    if x.rank != 2:
        raise ShapeError(f"shift_right: expects token ids [batch, time], got {x.shape_str()}")
    return Inferred([x], dict(args))


def _position_ids_infer(args, inputs):
    (x,) = inputs
    if x.rank < 2:
        raise ShapeError(f"position_ids: expects [batch, time, ...], got {x.shape_str()}")
    return Inferred([TensorType("int64", x.shape[:2])], {})


def _repeat_infer(args, inputs):
    (x,) = inputs
    axis = resolve_axis(args["dim"], x, "repeat")
    shape = [*x.shape[:axis], x.shape[axis] * args["times"], *x.shape[axis + 1 :]]
    return Inferred([x.with_shape(shape)], dict(args) | {"dim": axis})


_function(
    "detach",
    "The same values, cut from the gradient graph (the GAN discriminator step trains on fake images "
    "without training the generator).",
    _same,
    lambda xs, a: f"{xs[0]}.detach()",
    example="loss = bce_with_logits(discriminator(detach(fake))[0], 0.0)",
    rule="unchanged",
    differentiable=False,
)
_function(
    "shift_right",
    "Teacher forcing: token ids [batch, time] with `fill` prepended along time and the last step dropped.",
    _shift_right_infer,
    lambda xs, a: f"F.pad({xs[0]}[:, :-1], (1, 0), value={py_literal(a['fill'])})",
    (Param("fill", "int", 1, "the start token"),),
    example="decoder_input = shift_right(target, fill=1)",
    rule="unchanged",
)
_function(
    "position_ids",
    "0, 1, 2, ... along the second dimension, as int64[batch, time] (one row per example).",
    _position_ids_infer,
    lambda xs, a: f"torch.arange({xs[0]}.shape[1], device={xs[0]}.device).expand({xs[0]}.shape[0], -1)",
    example="positions = position_ids(tokens)",
    rule="[batch, time, ...] -> int64[batch, time]",
    reads_twice=reads_first_input,
)
_function(
    "repeat",
    "Each element `times` times along `dim` (grey [batch, 1, H, W] -> RGB [batch, 3, H, W]).",
    _repeat_infer,
    lambda xs, a: f"{xs[0]}.repeat_interleave({py_literal(a['times'])}, dim={py_literal(a['dim'])})",
    (Param("times", "int", low=1), Param("dim", "axis", 1, "the dimension to repeat along")),
    example="rgb = repeat(image, 3, dim=1)",
    rule="size of `dim` multiplied by `times`",
)
_function(
    "floor_div",
    "Integer division rounding down, e.g. sequence lengths after a stride-2 layer (the same as `x // n`).",
    _same,
    lambda xs, a: f'torch.div({xs[0]}, {py_literal(a["divisor"])}, rounding_mode="floor")',
    (Param("divisor", "int", low=1),),
    example="frames = floor_div(lengths - 1, 2) + 1",
    rule="unchanged",
)


# ---------------------------------------------------------------- ONNX lowerings (dslc.lower_onnx), for model bodies


@lowering("detach")
def _detach_onnx(g, xs, outs, a, key):
    return [xs[0].name]  # inference has no gradients to cut


@lowering("floor_div")
def _floor_div_onnx(g, xs, outs, a, key):
    from dslc.lower_onnx import floor_divide
    from dslc.onnx_graph import Value

    x = xs[0]
    divisor = Value(g.constant(int(a["divisor"]), x.type.dtype, "divisor"), x.type.with_shape(()))
    return [floor_divide(g, x, divisor)]


@lowering("position_ids")
def _position_ids_onnx(g, xs, outs, a, key):
    shape = g.one("Shape", [xs[0].name])
    length = g.one("Gather", [shape, g.constant(1, "int64", "axis")], axis=0)
    row = g.one("Range", [g.constant(0, "int64", "zero"), length, g.constant(1, "int64", "one")])
    size = g.one("Slice", [shape, g.ints([0]), g.ints([2]), g.ints([0])])
    return g.node("Expand", [g.one("Unsqueeze", [row, g.ints([0])]), size])


@lowering("repeat")
def _repeat_onnx(g, xs, outs, a, key):
    """repeat_interleave: a new axis after `dim`, expanded `times`, merged back into `dim`."""
    x, axis, times = xs[0], int(a["dim"]), int(a["times"])
    shape = g.one("Shape", [x.name])

    def part(start: int, stop: int) -> str:
        return g.one("Slice", [shape, g.ints([start]), g.ints([stop]), g.ints([0])])

    rank = x.type.rank
    expanded_shape = g.one("Concat", [part(0, axis + 1), g.ints([times]), part(axis + 1, rank)], axis=0)
    expanded = g.one("Expand", [g.one("Unsqueeze", [x.name, g.ints([axis + 1])]), expanded_shape])
    merged_shape = g.one("Concat", [part(0, axis), g.ints([-1]), part(axis + 1, rank)], axis=0)
    return g.node("Reshape", [expanded, merged_shape])


@lowering("shift_right")
def _shift_right_onnx(g, xs, outs, a, key):
    x = xs[0]
    kept = g.one("Slice", [x.name, g.ints([0]), g.ints([-1]), g.ints([1])])
    fill = g.constant(int(a["fill"]), x.type.dtype, "fill")
    return g.node("Pad", [kept, g.ints([0, 1, 0, 0]), fill])
