"""Tensor functions over positions and values: running sums and products, flips and rolls, padding, gathers,
one-hot codes, masked fills and the top k. Stateless, written inline in the generated forward().

Tensor inputs come first in a call, as everywhere in dslc: `gather(x, index, dim)` is `torch.gather(x, dim, index)`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dslc.layers.base import (
    Inferred,
    Op,
    Param,
    ShapeError,
    Src,
    check_positive,
    lowering,
    pycall,
    reflected_sizes,
    register,
    resolve_axis,
)
from dslc.layers.functions import _signed_axis
from dslc.params import brief
from dslc.shapes import TensorType, broadcast
from dslc.traced import is_traced, plain

INT64_MIN = -(2**63)


def _axes_of(value: Any, x: TensorType, op: str) -> tuple[int, ...]:
    """One dimension or a tuple of them, resolved against x (names allowed), in the order given."""
    return tuple(resolve_axis(v, x, op) for v in (value if isinstance(value, (tuple, list)) else (value,)))


def _ints(value: Any) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _one_or_all(values: tuple[Any, ...]) -> Any:
    """(1,) -> 1, for the way people write a single dimension or shift."""
    return values[0] if len(values) == 1 else values


def _fill_value(value: Any, x: TensorType, op: str) -> Any:
    """A number written into x: whole for integer tensors (PyTorch would truncate 2.5 silently), 0 or 1 for bool,
    within the dtype's range (PyTorch refuses -1e9 for float16)."""
    number = plain(value)  # a block parameter is checked at each use and written as its expression
    if x.dtype == "bool":
        if number not in (0, 1):
            raise ShapeError(f"{op}: the tensor is bool, so the value must be 0 or 1, got {brief(number)}")
        return value if is_traced(value) else bool(number)
    if not x.is_float:
        if number != int(number):
            raise ShapeError(
                f"{op}: the tensor is {x.dtype}, so the value must be a whole number, got {brief(number)}",
                "convert with float(x) first",
            )
        value = value if is_traced(value) else int(number)
    info = np.finfo(np.float32) if x.dtype == "bfloat16" else (np.finfo if x.is_float else np.iinfo)(x.dtype)
    low, high = float(info.min), float(info.max)  # as Python floats: numpy would cast the value to float16
    if not low <= number <= high:
        raise ShapeError(f"{op}: {brief(number)} does not fit in {x.dtype} ({low:g} to {high:g})")
    return value


# ---------------------------------------------------------------- running sums and products


def _running_infer(name: str):
    def infer(args, inputs):
        (x,) = inputs
        axis = resolve_axis(args["dim"], x, name)
        dtype = x.dtype if x.is_float else "int64"  # PyTorch accumulates bools and integers in int64
        return Inferred([x.with_dtype(dtype)], {"dim": _signed_axis(axis, x)})

    return infer


for _name, _doc in (
    ("cumsum", "Running sum along `dim`: element i is x[0] + ... + x[i]."),
    ("cumprod", "Running product along `dim`: element i is x[0] * ... * x[i]."),
):
    register(
        Op(
            name=_name,
            doc=_doc + " Integers and bools accumulate in int64, as in PyTorch.",
            params=(Param("dim", "axis", doc="the dimension to accumulate along (a size name such as time works)"),),
            infer=_running_infer(_name),
            category="function",
            functional=lambda xs, a, f=_name: pycall(f"torch.{f}", Src(xs[0]), dim=a["dim"]),
            prefix=_name,
            example=f"running = {_name}(x, dim=time)",
            shape_rule="unchanged; dtype int64 for integer and bool inputs",
        )
    )

# ---------------------------------------------------------------- flips and rolls


def _flip_infer(args, inputs):
    (x,) = inputs
    if not args["dims"]:
        raise ShapeError("flip needs the dimensions to reverse, e.g. flip(x, -1)")
    axes = _axes_of(args["dims"], x, "flip")
    if len(set(axes)) != len(axes):
        raise ShapeError(f"flip: a dimension is given twice in {brief(args['dims'])}")
    return Inferred([x], {"dims": tuple(_signed_axis(a, x) for a in axes)})


register(
    Op(
        name="flip",
        doc="Reverses the order of the elements along each of `dims`.",
        params=(Param("dims", "axes", (), "the dimensions to reverse: flip(x, -1) or flip(x, 1, 2)"),),
        infer=_flip_infer,
        category="function",
        functional=lambda xs, a: pycall(f"{xs[0]}.flip", *a["dims"]),
        prefix="flip",
        example="backwards = flip(x, dims=time)",
        shape_rule="unchanged",
    )
)


def _roll_infer(args, inputs):
    (x,) = inputs
    shifts, axes = _ints(args["shifts"]), _axes_of(args["dims"], x, "roll")
    if len(shifts) != len(axes):
        raise ShapeError(f"roll: {len(shifts)} shift(s) for {len(axes)} dimension(s); give one shift per dimension")
    return Inferred([x], {"shifts": _one_or_all(shifts), "dims": _one_or_all(tuple(_signed_axis(a, x) for a in axes))})


register(
    Op(
        name="roll",
        doc="Shifts the elements along `dims` by `shifts` places; those pushed off the end come back at the start.",
        params=(
            Param("shifts", "ints", doc="places to shift, one per dimension (negative: towards the start)"),
            Param("dims", "axes", doc="the dimension(s) to shift along"),
        ),
        infer=_roll_infer,
        category="function",
        functional=lambda xs, a: pycall("torch.roll", Src(xs[0]), a["shifts"], dims=a["dims"]),
        prefix="roll",
        example="previous = roll(x, 1, dims=time)",
        shape_rule="unchanged",
    )
)

# ---------------------------------------------------------------- padding

PAD_MODES = ("constant", "reflect", "replicate")


def _pad_infer(args, inputs):
    (x,) = inputs
    pad, mode = _ints(args["pad"]), args["mode"]
    if any(p < 0 for p in pad):
        raise ShapeError(f"pad: sizes must be non-negative, got {brief(args['pad'])}", "crop by slicing: x[:, 1:-1]")
    if len(pad) % 2 or not 2 <= len(pad) <= 2 * x.rank:
        raise ShapeError(
            f"pad takes (before, after) pairs, last dimension first, for up to {x.rank} dimension(s) of "
            f"{x.shape_str()}: 2 to {2 * x.rank} sizes, got {len(pad)}",
            "e.g. pad(x, (1, 1)) pads the last dimension by one on each side",
        )
    padded = len(pad) // 2
    if mode != "constant":
        # PyTorch pads 1 to 3 trailing dimensions this way, after a batch and an optional channel dimension.
        if padded > 3 or x.rank not in (padded + 1, padded + 2):
            raise ShapeError(
                f"pad: {mode} padding of {padded} dimension(s) needs a tensor of rank {padded + 1} or {padded + 2}, "
                f"got {x.shape_str()}",
                "pad the last 1, 2 or 3 dimensions of [batch, (channels,) ...]",
            )
        if x.dtype == "bool":
            raise ShapeError(f"pad: PyTorch has no {mode} padding of bool tensors", "convert with float(x) first")
        if plain(args["value"]) != 0:
            raise ShapeError(f"pad: a value fills constant padding only; {mode} padding copies the input's values")
    shape, at_least = list(x.shape), []
    for i in range(padded):
        axis, before, after = x.rank - 1 - i, pad[2 * i], pad[2 * i + 1]
        size = shape[axis]
        if mode == "reflect" and isinstance(size, int) and max(before, after) >= size:
            raise ShapeError(
                f"pad: reflect padding must be smaller than the size it reflects, but dimension {axis} of "
                f"{x.shape_str()} is {size} and the padding {max(before, after)}"
            )
        if mode == "reflect":
            at_least += reflected_sizes(size, before, after, axis)
        shape[axis] = size + before + after
    init = {"pad": pad, "mode": mode, "value": _fill_value(args["value"], x, "pad")}
    return Inferred([x.with_shape(shape)], init, at_least)


def _pad_src(xs: list[str], a: dict[str, Any]) -> str:
    options = {"mode": a["mode"]} if a["mode"] != "constant" else {}
    if a["mode"] == "constant" and (is_traced(a["value"]) or a["value"] != 0):
        options["value"] = a["value"]
    return pycall("F.pad", Src(xs[0]), a["pad"], **options)


register(
    Op(
        name="pad",
        doc='Pads with `value` (mode "constant"), the mirror image ("reflect") or the edge value ("replicate"). '
        "`pad` is PyTorch's order: (before, after) pairs from the last dimension backwards.",
        params=(
            Param("pad", "ints", doc="(left, right) of the last dimension, then (top, bottom) of the one before, ..."),
            Param("mode", "str", "constant", "how the border is filled", PAD_MODES),
            Param("value", "float", 0.0, "the fill of constant padding"),
        ),
        infer=_pad_infer,
        category="function",
        functional=_pad_src,
        prefix="pad",
        example='h = pad(x, (1, 1, 2, 2), mode="reflect")',
        shape_rule="each padded dimension grows by before + after",
    )
)

# ---------------------------------------------------------------- gathering and one-hot codes


def _fits(index: Any, size: Any) -> bool:
    """Whether an index size is at most the input's at every size the symbols may take (all are at least 1)."""
    if index == size:
        return True
    if isinstance(index, int):
        return index <= size if isinstance(size, int) else index <= 1
    return False


def _gather_infer(args, inputs):
    x, index = inputs
    axis = resolve_axis(args["dim"], x, "gather")
    if index.dtype != "int64":
        raise ShapeError(f"gather: the index must be int64, got {index.dtype}", "convert with long(index)")
    if index.rank != x.rank:
        raise ShapeError(f"gather: the index must have the input's rank, got {index.shape_str()} for {x.shape_str()}")
    for d, (i, s) in enumerate(zip(index.shape, x.shape)):
        if d != axis and not _fits(i, s):
            raise ShapeError(
                f"gather: outside dimension {axis}, the index may be no larger than the input, but dimension {d} "
                f"is {i} in the index {index.shape_str()} and {s} in the input {x.shape_str()}"
            )
    return Inferred([x.with_shape(index.shape)], {"dim": _signed_axis(axis, x)})


register(
    Op(
        name="gather",
        doc="Picks elements along `dim` by an int64 index of the input's rank: "
        "out[i][j] = x[i][index[i][j]] for dim 1. The index tensor comes right after the input.",
        params=(Param("dim", "axis", doc="the dimension the index picks along"),),
        infer=_gather_infer,
        category="function",
        functional=lambda xs, a: pycall("torch.gather", Src(xs[0]), a["dim"], Src(xs[1])),
        inputs=(2, 2),
        prefix="gather",
        example="picked = gather(scores, labels, dim=-1)",
        shape_rule="the index's shape, the input's dtype",
    )
)


def _one_hot_infer(args, inputs):
    (x,) = inputs
    check_positive(args, "num_classes")
    if x.dtype != "int64":
        hint = "convert with long(x)" if not x.is_float else "one_hot takes class ids, e.g. from argmax"
        raise ShapeError(f"one_hot takes int64 class ids, got {x.dtype}", hint)
    return Inferred([x.with_shape((*x.shape, args["num_classes"]))], {"num_classes": args["num_classes"]})


register(
    Op(
        name="one_hot",
        doc="One-hot codes of int64 class ids: a new last dimension of `num_classes`, 1 at the id and 0 elsewhere "
        "(int64, as in PyTorch; float(...) converts).",
        params=(Param("num_classes", "int", doc="the number of classes (ids are 0 to num_classes - 1)"),),
        infer=_one_hot_infer,
        category="function",
        functional=lambda xs, a: pycall("F.one_hot", Src(xs[0]), a["num_classes"]),
        prefix="one_hot",
        example="codes = float(one_hot(labels, 10))",
        shape_rule="[...] -> int64[..., num_classes]",
        differentiable=False,
        id_limit=lambda a: a["num_classes"],
    )
)

# ---------------------------------------------------------------- masking and selection


def _masked_fill_infer(args, inputs):
    x, mask = inputs
    if mask.dtype != "bool":
        raise ShapeError(f"masked_fill: the mask must be bool, got {mask.dtype}", "compare to get one: x == 0")
    if broadcast(x.shape, mask.shape) != x.shape:
        raise ShapeError(f"masked_fill: the mask {mask.shape_str()} does not broadcast to the input {x.shape_str()}")
    return Inferred([x], {"value": _fill_value(args["value"], x, "masked_fill")})


register(
    Op(
        name="masked_fill",
        doc="`value` where the bool mask is true, x elsewhere; the mask broadcasts to x.",
        params=(Param("value", "float", doc="the fill"),),
        infer=_masked_fill_infer,
        category="function",
        functional=lambda xs, a: pycall(f"{xs[0]}.masked_fill", Src(xs[1]), a["value"]),
        inputs=(2, 2),
        prefix="masked_fill",
        example="scores = masked_fill(scores, padding, -1e9)",
        shape_rule="unchanged",
    )
)


def _topk_infer(args, inputs):
    (x,) = inputs
    check_positive(args, "k")
    if x.dtype == "bool":
        raise ShapeError("topk: bool tensors have no order to rank", "convert with float(x) or long(x)")
    axis, k = resolve_axis(args["dim"], x, "topk"), args["k"]
    size = x.shape[axis]
    if isinstance(size, int) and k > size:
        raise ShapeError(f"topk: k is {k}, but dimension {axis} of {x.shape_str()} has only {size} elements")
    shape = tuple(k if i == axis else d for i, d in enumerate(x.shape))
    init = {"k": k, "dim": _signed_axis(axis, x), "largest": args["largest"]}
    at_least = [(size, k, f"k={k} needs dimension {axis} (size {size}) to be at least {k}")]
    return Inferred([x.with_shape(shape), TensorType("int64", shape)], init, at_least)


def _topk_src(xs: list[str], a: dict[str, Any]) -> str:
    options: dict[str, Any] = {"dim": a["dim"]} if a["dim"] != -1 else {}
    if not a["largest"]:
        options["largest"] = False
    return pycall("torch.topk", Src(xs[0]), a["k"], **options)


register(
    Op(
        name="topk",
        doc="The k largest (or smallest) elements along `dim`, sorted, and their int64 indices: "
        "assign both with `values, indices = topk(x, 5)`. Of equal elements, which index comes first is "
        "unspecified in PyTorch (ONNX takes the lower one).",
        params=(
            Param("k", "int", doc="how many to keep (at most the dimension's size)"),
            Param("dim", "axis", -1, "the dimension to rank along"),
            Param("largest", "bool", True, "false: the k smallest"),
        ),
        infer=_topk_infer,
        category="function",
        functional=_topk_src,
        prefix="topk",
        example="best, ids = topk(logits, 5)",
        shape_rule="two tensors: dim becomes k; values keep the dtype, indices are int64",
    )
)

# ---------------------------------------------------------------- ONNX lowerings (dslc.lower_onnx)


def _axis(a: dict[str, Any], rank: int, key: str = "dim") -> int:
    return int(plain(a[key])) % rank


@lowering("cumsum")
def _cumsum_onnx(g, xs, outs, a, key):
    from dslc.lower_onnx import cast

    x = cast(g, xs[0], outs[0].dtype)
    return g.node("CumSum", [x.name, g.constant(_axis(a, x.type.rank), "int64", "axis")])


@lowering("cumprod")
def _cumprod_onnx(g, xs, outs, a, key):
    """ONNX has no CumProd, and exp(cumsum(log|x|)) loses signs and zeros: a Scan multiplies the slices along the
    axis one after another, the exact running product PyTorch computes, at any (symbolic) length."""
    from onnx import helper

    from dslc.lower_onnx import cast
    from dslc.onnx_graph import ONNX_DTYPES, fill_value

    dtype = outs[0].dtype
    x = cast(g, xs[0], dtype)
    axis = _axis(a, x.type.rank)
    first = g.one("Gather", [x.name, g.constant(0, "int64", "first")], axis=axis)  # one slice, for the state's shape
    ones = g.one("ConstantOfShape", [g.one("Shape", [first])], value=fill_value(1, dtype))
    product, item, running, emitted = (g.fresh(stem) for stem in ("product", "item", "running", "running_out"))
    body = helper.make_graph(
        [
            helper.make_node("Mul", [product, item], [running], name=g.fresh("n_Mul")),
            helper.make_node("Identity", [running], [emitted], name=g.fresh("n_Identity")),
        ],
        g.fresh("cumprod_step"),
        [helper.make_tensor_value_info(n, ONNX_DTYPES[dtype], None) for n in (product, item)],
        [helper.make_tensor_value_info(n, ONNX_DTYPES[dtype], None) for n in (running, emitted)],
    )
    _, out = g.node(
        "Scan", [ones, x.name], 2, body=body, num_scan_inputs=1, scan_input_axes=[axis], scan_output_axes=[axis]
    )
    return [out]


@lowering("flip")
def _flip_onnx(g, xs, outs, a, key):
    axes = [int(d) % xs[0].type.rank for d in plain(a["dims"])]
    n = len(axes)
    starts, ends, steps = g.ints([-1] * n, "starts"), g.ints([INT64_MIN] * n, "ends"), g.ints([-1] * n, "steps")
    return g.node("Slice", [xs[0].name, starts, ends, g.ints(axes, "axes"), steps])


@lowering("roll")
def _roll_onnx(g, xs, outs, a, key):
    """One Gather per dimension, of positions (i - shift) mod size: constants for a fixed size, computed from the
    input's shape for a symbolic one."""
    x = xs[0]
    name = x.name
    for shift, dim in zip(_ints(plain(a["shifts"])), _ints(plain(a["dims"]))):
        axis = int(dim) % x.type.rank
        size = x.type.shape[axis]
        if isinstance(size, int):
            positions = g.ints([(i - int(shift)) % size for i in range(size)], "positions")
        else:
            length = g.one("Gather", [g.one("Shape", [name]), g.constant(axis, "int64", "axis")], axis=0)
            steps = g.one("Range", [g.constant(0, "int64", "zero"), length, g.constant(1, "int64", "one")])
            shifted = g.one("Sub", [steps, g.constant(int(shift), "int64", "shift")])
            positions = g.one("Mod", [shifted, length], fmod=0)  # Python's modulo: never negative here
        name = g.one("Gather", [name, positions], axis=axis)
    return [name]


@lowering("pad")
def _pad_onnx(g, xs, outs, a, key):
    x = xs[0]
    pad, rank = [int(p) for p in plain(a["pad"])], x.type.rank
    before, after = [0] * rank, [0] * rank
    for i in range(len(pad) // 2):  # PyTorch lists pairs from the last dimension; ONNX all begins, then all ends
        before[rank - 1 - i], after[rank - 1 - i] = pad[2 * i], pad[2 * i + 1]
    mode = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}[plain(a["mode"])]
    fill = [g.constant(plain(a["value"]), x.type.dtype, "fill")] if mode == "constant" else []
    return g.node("Pad", [x.name, g.ints(before + after, "pads"), *fill], mode=mode)


@lowering("gather")
def _gather_onnx(g, xs, outs, a, key):
    x, index = xs
    return g.node("GatherElements", [x.name, index.name], axis=_axis(a, x.type.rank))


@lowering("one_hot")
def _one_hot_onnx(g, xs, outs, a, key):
    depth = g.constant(int(plain(a["num_classes"])), "int64", "num_classes")
    return g.node("OneHot", [xs[0].name, depth, g.ints([0, 1], "off_on")], axis=-1)


@lowering("masked_fill")
def _masked_fill_onnx(g, xs, outs, a, key):
    x, mask = xs
    if x.type.dtype == "bool":  # onnxruntime has no Where for bool: x or mask, x and not mask
        if plain(a["value"]):
            return g.node("Or", [x.name, mask.name])
        return g.node("And", [x.name, g.one("Not", [mask.name])])
    return g.node("Where", [mask.name, g.constant(plain(a["value"]), x.type.dtype, "fill"), x.name])


@lowering("topk")
def _topk_onnx(g, xs, outs, a, key):
    x = xs[0]
    k = g.ints([int(plain(a["k"]))], "k")
    return g.node("TopK", [x.name, k], 2, axis=_axis(a, x.type.rank), largest=int(bool(a["largest"])), sorted=1)


# ---------------------------------------------------------------- broadcasting a learned tensor over the batch


def _expand_batch_infer(args, inputs):
    x, like = inputs
    if x.rank == 0 or x.shape[0] != 1:
        raise ShapeError(f"expand_batch: the tensor's first dimension must be 1, got {x.shape_str()}")
    if like.rank == 0:
        raise ShapeError("expand_batch: the second tensor gives the batch size, so it needs a dimension")
    return Inferred([x.with_shape((like.shape[0], *x.shape[1:]))], {"rank": x.rank})


register(
    Op(
        name="expand_batch",
        doc="x, whose first dimension is 1, repeated over the batch of `like` without copying (a class token "
        "[1, 1, d] becomes [batch, 1, d]).",
        params=(),
        infer=_expand_batch_infer,
        category="function",
        functional=lambda xs, a: f"{xs[0]}.expand({', '.join([f'{xs[1]}.shape[0]', *['-1'] * (a['rank'] - 1)])})",
        inputs=(2, 2),
        prefix="expanded",
        example="tokens = concat([expand_batch(cls_token, patches), patches], dim=1)",
        shape_rule="x [1, ...], like [batch, ...] -> [batch, ...]",
    )
)


@lowering("expand_batch")
def _expand_batch_onnx(g, xs, outs, a, key):
    x, like = xs
    batch = g.one("Slice", [g.one("Shape", [like.name]), g.ints([0]), g.ints([1])])
    shape = g.one("Concat", [batch, g.ints([1] * (a["rank"] - 1))], axis=0) if a["rank"] > 1 else batch
    return g.node("Expand", [x.name, shape])
