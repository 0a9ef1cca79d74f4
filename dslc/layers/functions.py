"""Activations and tensor functions: stateless, written inline in the generated forward()."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dslc.layers.base import (
    Inferred,
    Op,
    Param,
    ShapeError,
    Src,
    differs,
    expect_float,
    lowering,
    pycall,
    reads_first_input,
    register,
    resolve_axis,
)
from dslc.pytext import py_literal
from dslc.shapes import Dim, Sym, TensorType, broadcast
from dslc.traced import plain

# ---------------------------------------------------------------- activations


def _elementwise(name: str, check: Callable[[dict[str, Any]], None] | None = None) -> Callable[..., Inferred]:
    """The shape rule of an activation: a float tensor in, the same type out, after `check` of its arguments."""

    def infer(args, inputs):
        expect_float(inputs[0], name)
        if check is not None:
            check(args)
        return Inferred([inputs[0]], dict(args))

    return infer


def _activation(name: str, alias: str, doc: str, torch_fn: str, params: tuple[Param, ...] = (), check=None) -> None:
    """An activation written inline as `torch_fn(x, ...)`, or as `nn.<name>(...)` where it is named or grouped; its
    parameters' defaults are PyTorch's, so only arguments that differ are written."""
    defaults = {p.name: p.default for p in params}

    def written(a):
        return {k: a[k] for k in defaults if differs(a[k], defaults[k])}

    register(
        Op(
            name=name,
            doc=doc,
            params=params,
            infer=_elementwise(name, check),
            category="activation",
            module=lambda a: pycall(f"nn.{name}", **written(a)),
            functional=lambda xs, a: pycall(torch_fn, Src(xs[0]), **written(a)),
            prefix=alias,
            aliases=(alias,),
            example=f"x -> {name}",
            shape_rule="unchanged",
        )
    )


def _positive_beta(args):
    if not plain(args["beta"]) > 0:
        raise ShapeError(f"Softplus: beta must be positive, got {args['beta']}", "beta=1.0 is log(1 + exp(x))")


_activation("ReLU", "relu", "max(x, 0)", "torch.relu")
_activation("ReLU6", "relu6", "min(max(x, 0), 6)", "F.relu6")
_activation("Tanh", "tanh", "Hyperbolic tangent.", "torch.tanh")
_activation("Sigmoid", "sigmoid", "1 / (1 + exp(-x))", "torch.sigmoid")
_activation("Hardsigmoid", "hardsigmoid", "Piecewise-linear sigmoid: clamp(x / 6 + 1/2, 0, 1).", "F.hardsigmoid")
_activation("SiLU", "silu", "x * sigmoid(x) (swish).", "F.silu")
_activation("Hardswish", "hardswish", "x * hardsigmoid(x), MobileNetV3's cheap swish.", "F.hardswish")
_activation("Mish", "mish", "x * tanh(softplus(x)).", "F.mish")
_activation(
    "Softplus",
    "softplus",
    "log(1 + exp(beta * x)) / beta, and x itself where beta * x > threshold.",
    "F.softplus",
    (
        Param("beta", "float", 1.0, "sharpness; must be positive", low=0.0, high=1e3),
        Param("threshold", "float", 20.0, "above beta * x = threshold the output is x", low=-1e3, high=1e3),
    ),
    check=_positive_beta,
)
_activation(
    "GELU",
    "gelu",
    "Gaussian error linear unit; approximate='tanh' for the tanh approximation.",
    "F.gelu",
    (Param("approximate", "str", "none", "none or tanh", ("none", "tanh")),),
)
_activation(
    "LeakyReLU",
    "leaky_relu",
    "x if x > 0 else negative_slope * x",
    "F.leaky_relu",
    (Param("negative_slope", "float", 0.01, "slope for x < 0", low=-1e3, high=1e3),),  # more overflows float32
)
_activation(
    "ELU",
    "elu",
    "x if x > 0 else alpha * (exp(x) - 1)",
    "F.elu",
    (Param("alpha", "float", 1.0, "scale for x < 0", low=-1e3, high=1e3),),
)


def _softmax_infer(args, inputs):
    (x,) = inputs
    expect_float(x, "softmax")
    return Inferred([x], {"dim": _signed_axis(resolve_axis(args["dim"], x, "softmax"), x)})


def _signed_axis(axis: int, x: TensorType) -> int:
    """Write the last axis as -1, the way people do."""
    return -1 if axis == x.rank - 1 and x.rank > 1 else axis


for _name, _alias, _fn, _doc in (
    ("Softmax", "softmax", "torch.softmax", "Normalised exponentials along `dim` (probabilities)."),
    ("LogSoftmax", "log_softmax", "torch.log_softmax", "Log of softmax along `dim`, numerically stable."),
):
    register(
        Op(
            name=_name,
            doc=_doc,
            params=(Param("dim", "axis", -1, "dimension that sums to one"),),
            infer=_softmax_infer,
            category="activation",
            module=lambda a, n=_name: pycall(f"nn.{n}", dim=a["dim"]),
            functional=lambda xs, a, f=_fn: pycall(f, Src(xs[0]), dim=a["dim"]),
            prefix=_alias,
            aliases=(_alias,),
            example=f"x -> {_name}(dim=-1)",
            shape_rule="unchanged",
        )
    )

# ---------------------------------------------------------------- elementwise math


def _unary(name, torch_fn, doc, needs_float=True):
    def infer(args, inputs):
        if needs_float:
            expect_float(inputs[0], name)
        return Inferred([inputs[0]], {})

    register(
        Op(
            name=name,
            doc=doc,
            params=(),
            infer=infer,
            category="function",
            functional=lambda xs, a: f"{torch_fn}({xs[0]})",
            prefix=name,
            example=f"y = {name}(x)",
            shape_rule="unchanged",
        )
    )


_unary("exp", "torch.exp", "Elementwise e^x.")
_unary("log", "torch.log", "Elementwise natural logarithm.")
_unary("sqrt", "torch.sqrt", "Elementwise square root.")
_unary("rsqrt", "torch.rsqrt", "Elementwise 1 / sqrt(x).")
_unary("abs", "torch.abs", "Elementwise absolute value.", needs_float=False)
_unary("sin", "torch.sin", "Elementwise sine.")
_unary("cos", "torch.cos", "Elementwise cosine.")


def _cast(name, dtype, method):
    register(
        Op(
            name=name,
            doc=f"Converts to {dtype}.",
            params=(),
            infer=lambda a, xs: Inferred([xs[0].with_dtype(dtype)], {}),
            category="function",
            functional=lambda xs, a: f"{xs[0]}.{method}()",
            prefix=name,
            example=f"y = {name}(mask)",
            shape_rule="unchanged, dtype " + dtype,
        )
    )


_cast("float", "float32", "float")
_cast("long", "int64", "long")


def _clamp_infer(args, inputs):
    if args["min"] is None and args["max"] is None:
        raise ShapeError("clamp needs min, max or both")
    return Inferred([inputs[0]], dict(args))


register(
    Op(
        name="clamp",
        doc="Limits values to [min, max].",
        params=(Param("min", "float", None, "lower bound"), Param("max", "float", None, "upper bound")),
        infer=_clamp_infer,
        category="function",
        functional=lambda xs, a: pycall("torch.clamp", Src(xs[0]), **{k: v for k, v in a.items() if v is not None}),
        prefix="clamp",
        example="y = clamp(x, min=-5.0, max=5.0)",
        shape_rule="unchanged",
    )
)

# ---------------------------------------------------------------- reductions


def _axes(value, x: TensorType, op: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    values = value if isinstance(value, (tuple, list)) else (value,)
    axes = tuple(sorted({resolve_axis(v, x, op) for v in values}))
    return axes


def _reduce_infer(name: str, out_dtype: str | None = None):
    def infer(args, inputs):
        (x,) = inputs
        if name == "mean":  # PyTorch averages floating-point tensors only
            expect_float(x, name)
        axes = _axes(args["dim"], x, name)
        if axes is None:
            shape: tuple[Dim, ...] = () if not args["keepdim"] else (1,) * x.rank
        elif args["keepdim"]:
            shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        else:
            shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
        dim = None if axes is None else (axes[0] if len(axes) == 1 else axes)
        if isinstance(dim, int):
            dim = _signed_axis(dim, x)
        dtype = out_dtype or x.dtype
        if name == "sum" and dtype in ("bool", "uint8", "int8", "int32"):
            dtype = "int64"  # PyTorch sums integers and bools as int64
        return Inferred([TensorType(dtype, shape)], {"dim": dim, "keepdim": args["keepdim"]})

    return infer


def _reduce_src(method: str):
    def functional(xs, a):
        kwargs = {}
        if a["dim"] is not None:
            kwargs["dim"] = a["dim"]
        if a["keepdim"]:
            kwargs["keepdim"] = True
        return pycall(f"{xs[0]}.{method}", **kwargs)

    return functional


for _name, _method, _doc in (
    ("sum", "sum", "Sum over `dim` (a dimension, a tuple of them, or all)."),
    ("mean", "mean", "Mean over `dim` (a dimension, a tuple of them, or all)."),
    ("max", "amax", "Maximum over `dim` (values only)."),
    ("min", "amin", "Minimum over `dim` (values only)."),
):
    register(
        Op(
            name=_name,
            doc=_doc + " Dimensions may be named by their symbol, e.g. mean(x, dim=time).",
            params=(
                Param("dim", "axes", None, "dimension(s) to reduce; none reduces all"),
                Param("keepdim", "bool", False, "keep reduced dimensions with size 1"),
            ),
            infer=_reduce_infer(_name),
            category="function",
            functional=_reduce_src(_method),
            prefix=_name,
            example=f"pooled = {_name}(h, dim=time)",
            shape_rule="reduced dimensions removed (or kept as 1)",
        )
    )

register(
    Op(
        name="argmax",
        doc="Index of the largest value along `dim` (int64).",
        params=(Param("dim", "axis", -1, "dimension to search"), Param("keepdim", "bool", False, "keep it as 1")),
        infer=_reduce_infer("argmax", "int64"),
        category="function",
        functional=_reduce_src("argmax"),
        prefix="argmax",
        example="prediction = argmax(logits, dim=-1)",
        shape_rule="dimension removed, dtype int64",
    )
)

# ---------------------------------------------------------------- joining and splitting


def _join_infer(name: str, stack: bool):
    def infer(args, inputs):
        first = inputs[0]
        for t in inputs[1:]:
            if t.dtype != first.dtype:
                raise ShapeError(f"{name}: dtypes differ ({first.dtype} and {t.dtype})")
            if t.rank != first.rank:
                raise ShapeError(f"{name}: ranks differ ({first.shape_str()} and {t.shape_str()})")
        if stack:
            for t in inputs[1:]:
                if t.shape != first.shape:
                    raise ShapeError(f"stack needs equal shapes, got {first.shape_str()} and {t.shape_str()}")
            probe = first.with_shape((*first.shape, 1))
            axis = resolve_axis(args["dim"], probe, name)
            shape = (*first.shape[:axis], len(inputs), *first.shape[axis:])
            return Inferred([first.with_shape(shape)], {"dim": _signed_axis(axis, probe)})
        axis = resolve_axis(args["dim"], first, name)
        total: Dim = 0
        for t in inputs:
            for i, (a, b) in enumerate(zip(first.shape, t.shape)):
                if i != axis and a != b:
                    raise ShapeError(
                        f"concat along dimension {axis}: other sizes must match, got {first.shape_str()} and {t.shape_str()}"
                    )
            total = t.shape[axis] + total if isinstance(t.shape[axis], Sym) else total + t.shape[axis]
        shape = tuple(total if i == axis else d for i, d in enumerate(first.shape))
        return Inferred([first.with_shape(shape)], {"dim": _signed_axis(axis, first)})

    return infer


for _name, _fn, _stack in (("concat", "torch.cat", False), ("stack", "torch.stack", True)):
    register(
        Op(
            name=_name,
            doc="Joins tensors along an existing dimension." if not _stack else "Stacks tensors along a new dimension.",
            params=(Param("dim", "axis", -1 if not _stack else 0, "the dimension"),),
            infer=_join_infer(_name, _stack),
            category="function",
            functional=lambda xs, a, f=_fn: f"{f}([{', '.join(xs)}], dim={py_literal(a['dim'])})",
            inputs=(1, 64),
            prefix=_name,
            aliases=("cat",) if _name == "concat" else (),
            example=f"h = {_name}(a, b, dim=-1)",
            shape_rule="sizes add up along dim" if not _stack else "new dimension of size len(inputs)",
        )
    )


def _split_infer(args, inputs):
    (x,) = inputs
    axis = resolve_axis(args["dim"], x, "split")
    size = x.shape[axis]
    parts = args["parts"]
    if not isinstance(size, int):
        raise ShapeError(f"split needs a fixed size along dimension {axis}, got '{size}'")
    if not isinstance(parts, int) or parts <= 0 or size % parts:
        raise ShapeError(f"split: {parts} equal parts do not divide the size {size} of dimension {axis}")
    piece = x.with_shape(tuple(size // parts if i == axis else d for i, d in enumerate(x.shape)))
    return Inferred([piece] * parts, {"parts": parts, "dim": _signed_axis(axis, x)})


register(
    Op(
        name="split",
        doc="Cuts a tensor into `parts` equal pieces along `dim`; assign them with `a, b = split(x, 2)`.",
        params=(Param("parts", "int", doc="number of pieces"), Param("dim", "axis", -1, "the dimension")),
        infer=_split_infer,
        category="function",
        functional=lambda xs, a: f"{xs[0]}.chunk({py_literal(a['parts'])}, dim={py_literal(a['dim'])})",
        prefix="split",
        aliases=("chunk",),
        example="mu, logvar = split(h, 2, dim=-1)",
        shape_rule="parts tensors, dim divided by parts",
    )
)

# ---------------------------------------------------------------- dimension shuffles


def _transpose_infer(args, inputs):
    (x,) = inputs
    a, b = resolve_axis(args["dim0"], x, "transpose"), resolve_axis(args["dim1"], x, "transpose")
    shape = list(x.shape)
    shape[a], shape[b] = shape[b], shape[a]
    return Inferred(
        [x.with_shape(shape)],
        {"dim0": a - x.rank if a >= x.rank - 2 else a, "dim1": b - x.rank if b >= x.rank - 2 else b},
    )


register(
    Op(
        name="transpose",
        doc="Swaps two dimensions (by default the last two).",
        params=(Param("dim0", "axis", -2, "first dimension"), Param("dim1", "axis", -1, "second dimension")),
        infer=_transpose_infer,
        category="function",
        functional=lambda xs, a: f"{xs[0]}.transpose({py_literal(a['dim0'])}, {py_literal(a['dim1'])})",
        prefix="transpose",
        example="scores = q @ transpose(k)",
        shape_rule="two dimensions swapped",
    )
)


def _unsqueeze_infer(args, inputs):
    (x,) = inputs
    probe = x.with_shape((*x.shape, 1))
    axis = resolve_axis(args["dim"], probe, "unsqueeze")
    return Inferred([x.with_shape((*x.shape[:axis], 1, *x.shape[axis:]))], {"dim": axis})


register(
    Op(
        name="unsqueeze",
        doc="Inserts a dimension of size 1.",
        params=(Param("dim", "axis", doc="where the new dimension goes"),),
        infer=_unsqueeze_infer,
        category="function",
        functional=lambda xs, a: f"{xs[0]}.unsqueeze({py_literal(a['dim'])})",
        prefix="unsqueeze",
        example="x = unsqueeze(x, 1)",
        shape_rule="rank + 1",
    )
)


def _squeeze_infer(args, inputs):
    (x,) = inputs
    axis = resolve_axis(args["dim"], x, "squeeze")
    if x.shape[axis] != 1:
        raise ShapeError(f"squeeze: dimension {axis} of {x.shape_str()} has size {x.shape[axis]}, not 1")
    return Inferred([x.with_shape(x.shape[:axis] + x.shape[axis + 1 :])], {"dim": axis})


register(
    Op(
        name="squeeze",
        doc="Removes a dimension of size 1.",
        params=(Param("dim", "axis", doc="the dimension to remove"),),
        infer=_squeeze_infer,
        category="function",
        functional=lambda xs, a: f"{xs[0]}.squeeze({py_literal(a['dim'])})",
        prefix="squeeze",
        example="x = squeeze(x, 1)",
        shape_rule="rank - 1",
    )
)

# ---------------------------------------------------------------- selection


def _where_infer(args, inputs):
    cond, a, b = inputs
    if cond.dtype != "bool":
        raise ShapeError(f"where: the condition must be bool, got {cond.dtype}")
    shape = broadcast(cond.shape, a.shape)
    shape = shape and broadcast(shape, b.shape)
    if shape is None:
        raise ShapeError(f"where: shapes {cond.shape_str()}, {a.shape_str()}, {b.shape_str()} do not broadcast")
    if a.dtype != b.dtype:
        raise ShapeError(f"where: dtypes differ ({a.dtype} and {b.dtype})")
    return Inferred([a.with_shape(shape)], {})


register(
    Op(
        name="where",
        doc="Elementwise choice: a where cond is true, else b.",
        params=(),
        infer=_where_infer,
        category="function",
        functional=lambda xs, a: f"torch.where({', '.join(xs)})",
        inputs=(3, 3),
        scalar_inputs=True,  # where(mask, x, 0.0)
        prefix="where",
        example="y = where(mask, x, zeros_like(x))",
        shape_rule="broadcast of the three",
    )
)

for _name, _fn in (("zeros_like", "torch.zeros_like"), ("ones_like", "torch.ones_like")):
    register(
        Op(
            name=_name,
            doc=f"A tensor of {'zeros' if 'zeros' in _name else 'ones'} with the input's shape and dtype.",
            params=(),
            infer=lambda a, xs: Inferred([xs[0]], {}),
            category="function",
            functional=lambda xs, a, f=_fn: f"{f}({xs[0]})",
            prefix=_name,
            example=f"y = {_name}(x)",
            shape_rule="unchanged",
            differentiable=False,
        )
    )


# ---------------------------------------------------------------- positions


def _positions_infer(args, inputs):
    (x,) = inputs
    axis = resolve_axis(args["dim"], x, "positions")
    return Inferred([TensorType("int64", (x.shape[axis],))], {"dim": axis})


register(
    Op(
        name="positions",
        doc="The position ids 0, 1, ..., n-1 along dimension `dim` of the input (int64[n]), e.g. for a "
        "learned position embedding; the length stays dynamic in ONNX.",
        params=(Param("dim", "axis", 1, "the dimension to count along (a size name such as time works)"),),
        infer=_positions_infer,
        category="function",
        functional=lambda xs, a: f"torch.arange({xs[0]}.size({py_literal(a['dim'])}), device={xs[0]}.device)",
        reads_twice=reads_first_input,
        prefix="positions",
        example="pos = positions(tokens, dim=time) -> Embedding(max_len, d_model)",
        shape_rule="[..., n, ...] -> int64[n]",
    )
)


# ---------------------------------------------------------------- ONNX lowerings (dslc.lower_onnx)
# Registered in loops above, so lowered together here: one function per ONNX pattern.

_ONNX_ELEMENTWISE = {
    "ReLU": "Relu",
    "Tanh": "Tanh",
    "Sigmoid": "Sigmoid",
    "Hardswish": "HardSwish",
    "Mish": "Mish",
    "exp": "Exp",
    "log": "Log",
    "sqrt": "Sqrt",
    "abs": "Abs",
    "sin": "Sin",
    "cos": "Cos",
}
for _name, _onnx in _ONNX_ELEMENTWISE.items():
    lowering(_name)(lambda g, xs, outs, a, key, op=_onnx: g.node(op, [xs[0].name]))


@lowering("SiLU")
def _silu_onnx(g, xs, outs, a, key):
    return g.node("Mul", [xs[0].name, g.one("Sigmoid", [xs[0].name])])


@lowering("ReLU6")
def _relu6_onnx(g, xs, outs, a, key):
    x = xs[0]
    return g.node("Clip", [x.name, g.constant(0, x.type.dtype, "zero"), g.constant(6, x.type.dtype, "six")])


@lowering("Hardsigmoid")
def _hardsigmoid_onnx(g, xs, outs, a, key):
    return g.node("HardSigmoid", [xs[0].name], alpha=1 / 6, beta=0.5)  # ONNX's default alpha is 0.2, PyTorch's 1/6


@lowering("Softplus")
def _softplus_onnx(g, xs, outs, a, key):
    """ONNX Softplus is log(1 + exp(x)): scaled by beta, and x itself where beta * x passes a threshold under 20
    (from 20 up, log(1 + exp(x)) rounds to x in float32, so PyTorch's linear branch changes nothing)."""
    x = xs[0]
    beta, threshold = float(plain(a["beta"])), float(plain(a["threshold"]))
    scale = g.constant(beta, x.type.dtype, "beta") if beta != 1.0 else None
    scaled = g.one("Mul", [x.name, scale]) if scale else x.name
    soft = g.one("Softplus", [scaled])
    if scale:
        soft = g.one("Div", [soft, scale])
    if threshold >= 20.0:
        return [soft]
    linear = g.one("Greater", [scaled, g.constant(threshold, x.type.dtype, "threshold")])
    return g.node("Where", [linear, x.name, soft])


@lowering("rsqrt")
def _rsqrt_onnx(g, xs, outs, a, key):
    return g.node("Reciprocal", [g.one("Sqrt", [xs[0].name])])


@lowering("GELU")
def _gelu_onnx(g, xs, outs, a, key):
    return g.node("Gelu", [xs[0].name], approximate=plain(a["approximate"]))


@lowering("LeakyReLU")
def _leaky_relu_onnx(g, xs, outs, a, key):
    return g.node("LeakyRelu", [xs[0].name], alpha=float(plain(a["negative_slope"])))


@lowering("ELU")
def _elu_onnx(g, xs, outs, a, key):
    return g.node("Elu", [xs[0].name], alpha=float(plain(a["alpha"])))


for _name in ("Softmax", "LogSoftmax"):
    lowering(_name)(lambda g, xs, outs, a, key, op=_name: g.node(op, [xs[0].name], axis=int(plain(a["dim"]))))


@lowering("float", "long")
def _cast_onnx(g, xs, outs, a, key):
    from dslc.onnx_graph import ONNX_DTYPES

    return g.node("Cast", [xs[0].name], to=ONNX_DTYPES[outs[0].dtype])


@lowering("clamp")
def _clamp_onnx(g, xs, outs, a, key):
    x = xs[0]
    bounds = ["" if a[k] is None else g.constant(plain(a[k]), x.type.dtype, k) for k in ("min", "max")]
    while bounds and bounds[-1] == "":
        bounds.pop()
    return g.node("Clip", [x.name, *bounds])


def _reduce_onnx(op_type: str):
    def lower(g, xs, outs, a, key):
        from dslc.lower_onnx import cast

        x = cast(g, xs[0], outs[0].dtype)  # sums of bools and small ints are int64, as in PyTorch
        dim = plain(a["dim"])
        axes = [] if dim is None else [int(d) for d in (dim if isinstance(dim, (tuple, list)) else (dim,))]
        inputs = [x.name, g.ints(axes, "axes")] if axes else [x.name]
        return g.node(op_type, inputs, keepdims=int(bool(a["keepdim"])))

    return lower


for _name, _onnx in (("sum", "ReduceSum"), ("mean", "ReduceMean"), ("max", "ReduceMax"), ("min", "ReduceMin")):
    lowering(_name)(_reduce_onnx(_onnx))


@lowering("argmax")
def _argmax_onnx(g, xs, outs, a, key):
    return g.node("ArgMax", [xs[0].name], axis=int(plain(a["dim"])), keepdims=int(bool(a["keepdim"])))


@lowering("concat")
def _concat_onnx(g, xs, outs, a, key):
    return g.node("Concat", [x.name for x in xs], axis=int(plain(a["dim"])))


@lowering("stack")
def _stack_onnx(g, xs, outs, a, key):
    axis = int(plain(a["dim"]))
    return g.node("Concat", [g.one("Unsqueeze", [x.name, g.ints([axis], "axes")]) for x in xs], axis=axis)


@lowering("transpose")
def _transpose_onnx(g, xs, outs, a, key):
    rank = xs[0].type.rank
    perm = list(range(rank))
    i, j = (int(plain(a[k])) % rank for k in ("dim0", "dim1"))
    perm[i], perm[j] = perm[j], perm[i]
    return g.node("Transpose", [xs[0].name], perm=perm)


@lowering("unsqueeze")
def _unsqueeze_onnx(g, xs, outs, a, key):
    return g.node("Unsqueeze", [xs[0].name, g.ints([int(plain(a["dim"]))], "axes")])


@lowering("squeeze")
def _squeeze_onnx(g, xs, outs, a, key):
    return g.node("Squeeze", [xs[0].name, g.ints([int(plain(a["dim"]))], "axes")])


@lowering("where")
def _where_onnx(g, xs, outs, a, key):
    from dslc.lower_onnx import cast

    cond, x, y = xs
    return g.node("Where", [cond.name, cast(g, x, outs[0].dtype).name, cast(g, y, outs[0].dtype).name])


def _filled_like_onnx(fill: int):
    def lower(g, xs, outs, a, key):
        from dslc.onnx_graph import fill_value

        return g.node("ConstantOfShape", [g.one("Shape", [xs[0].name])], value=fill_value(fill, outs[0].dtype))

    return lower


lowering("zeros_like")(_filled_like_onnx(0))
lowering("ones_like")(_filled_like_onnx(1))


@lowering("positions")
def _positions_onnx(g, xs, outs, a, key):
    """0 .. n-1; in a decoder's KV-cache graphs, the generated tokens' positions continue after the cached ones."""
    size = g.one("Gather", [g.one("Shape", [xs[0].name]), g.constant(int(plain(a["dim"])), "int64", "dim")], axis=0)
    if g.cache is not None and g.cache.is_stepped(xs[0].name):
        first = g.cache.past_length(g)
        return g.node("Range", [first, g.one("Add", [first, size]), g.constant(1, "int64", "one")])
    return g.node("Range", [g.constant(0, "int64", "zero"), size, g.constant(1, "int64", "one")])


@lowering("split")
def _split_onnx(g, xs, outs, a, key):
    parts = int(plain(a["parts"]))
    return g.node("Split", [xs[0].name], parts, axis=int(plain(a["dim"])), num_outputs=parts)
