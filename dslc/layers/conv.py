"""Convolution and pooling layers (channels-first, like PyTorch)."""

from __future__ import annotations

import math

from dslc.layers.base import (
    Inferred,
    Op,
    Param,
    ShapeError,
    Src,
    check_padding,
    check_positive,
    differs,
    expect_float,
    expect_rank,
    lowering,
    pair,
    pycall,
    register,
    simple,
    static,
)
from dslc.params import brief
from dslc.traced import is_traced, plain


def _call_module(module, inputs, init):
    return f"{module}({', '.join(inputs)})"


def conv_out(size, kernel: int, stride: int, padding: int, dilation: int = 1):
    """floor((size + 2p - d(k-1) - 1) / s) + 1, symbolic sizes allowed."""
    span = size + (2 * padding - dilation * (kernel - 1) - 1)
    if isinstance(span, int) and span < 0:
        raise ShapeError(
            f"input size {size} is smaller than the kernel ({kernel}, dilation {dilation}, padding {padding})"
        )
    return span // stride + 1


def _conv_params(a) -> int:
    kernel = a["kernel_size"]
    taps = math.prod(kernel) if isinstance(kernel, tuple) else kernel ** a["spatial_dims"]
    weight = a["in_channels"] * a["out_channels"] // a.get("groups", 1) * taps
    return weight + a["out_channels"] * a["bias"]


def _layout(n: int) -> str:
    return "[batch, channels, length]" if n == 1 else "[batch, channels, height, width]"


def _conv_infer(n: int, name: str):
    def infer(args, inputs):
        (x,) = inputs
        expect_float(x, name)
        hint = "add a channel dimension with Reshape or unsqueeze" if x.rank == n + 1 else None
        expect_rank(x, (n + 2,), name, _layout(n), hint)
        check_positive(args, "out_channels", "kernel", "stride", "dilation", "groups")
        in_channels = static(x.shape[1], "channel count (dimension 1)", name)
        kernel, stride, dilation = pair(args["kernel"], n), pair(args["stride"], n), pair(args["dilation"], n)
        if args["padding"] == "same":
            if any(s != 1 for s in stride):
                raise ShapeError(f"{name}: padding='same' needs stride 1, got stride {args['stride']}")
            if any(is_traced(v) for v in (*kernel, *dilation)):
                padding = "same"  # a block's kernel parameter: the padding depends on it, PyTorch works it out
            elif any(d * (k - 1) % 2 for k, d in zip(kernel, dilation)):
                padding = "same"  # asymmetric: PyTorch pads the extra row at the end
            else:
                padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
        elif args["padding"] == "valid":
            padding = (0,) * n
        elif isinstance(args["padding"], str):
            raise ShapeError(f"{name}: padding must be an integer, 'same' or 'valid', got {brief(args['padding'])}")
        else:
            padding = pair(args["padding"], n)
            check_padding(padding, name)
        if in_channels % args["groups"] or args["out_channels"] % args["groups"]:
            raise ShapeError(f"{name}: groups={args['groups']} must divide in ({in_channels}) and out channels")
        if padding == "same":
            spatial = x.shape[2:]
        else:
            spatial = tuple(
                conv_out(size, k, s, p, d) for size, k, s, p, d in zip(x.shape[2:], kernel, stride, padding, dilation)
            )
        out = x.with_shape((x.shape[0], args["out_channels"], *spatial))
        init = {
            "in_channels": in_channels,
            "out_channels": args["out_channels"],
            "kernel_size": simple(kernel),
            "stride": simple(stride),
            # a block's str parameter (`padding=pad`) is written as itself: PyTorch takes "same" and "valid"
            "padding": args["padding"]
            if is_traced(args["padding"])
            else padding
            if padding == "same"
            else simple(padding),
            "dilation": simple(dilation),
            "groups": args["groups"],
            "bias": args["bias"],
            "spatial_dims": n,
        }
        return Inferred([out], init)

    return infer


def _conv_src(cls: str):
    def src(a):
        extra = {
            k: a[k]
            for k, d in (("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1), ("bias", True))
            if differs(a[k], d)
        }
        return pycall(f"nn.{cls}", a["in_channels"], a["out_channels"], a["kernel_size"], **extra)

    return src


_CONV_PARAMS = (
    Param("out_channels", "int", doc="number of filters"),
    Param("kernel", "ints", doc="kernel size: an int or a tuple"),
    Param("stride", "ints", 1, "step between windows"),
    Param("padding", "any", 0, "an int, a tuple, 'same' or 'valid'"),
    Param("dilation", "ints", 1, "spacing between kernel taps"),
    Param("groups", "int", 1, "blocked connections between input and output channels"),
    Param("bias", "bool", True, "learn an additive bias"),
)

for _n in (1, 2):
    register(
        Op(
            name=f"Conv{_n}d",
            doc=f"{_n}-D convolution; input channels are inferred from dimension 1.",
            params=_CONV_PARAMS,
            infer=_conv_infer(_n, f"Conv{_n}d"),
            category="layer",
            module=_conv_src(f"Conv{_n}d"),
            forward=_call_module,
            prefix="conv",
            param_count=_conv_params,
            example=f'x -> Conv{_n}d(32, kernel=3, padding="same")',
            shape_rule=f"{_layout(_n)} -> [batch, out_channels, floor((L + 2p - d(k-1) - 1) / s) + 1 ...]",
        )
    )


def _convt_infer(args, inputs):
    (x,) = inputs
    expect_float(x, "ConvTranspose2d")
    expect_rank(x, (4,), "ConvTranspose2d", _layout(2))
    check_positive(args, "out_channels", "kernel", "stride")
    in_channels = static(x.shape[1], "channel count (dimension 1)", "ConvTranspose2d")
    k, s, p, op = pair(args["kernel"]), pair(args["stride"]), pair(args["padding"]), pair(args["output_padding"])
    check_padding(p, "ConvTranspose2d")
    check_padding(op, "ConvTranspose2d")
    if any(o >= si for o, si in zip(op, s)):
        raise ShapeError(
            f"ConvTranspose2d: output_padding must be smaller than the stride, got {brief(args['output_padding'])}"
        )
    spatial = tuple(
        (size - 1) * si - 2 * pi + (ki - 1) + opi + 1 for size, ki, si, pi, opi in zip(x.shape[2:], k, s, p, op)
    )
    init = {
        "in_channels": in_channels,
        "out_channels": args["out_channels"],
        "kernel_size": simple(k),
        "stride": simple(s),
        "padding": simple(p),
        "output_padding": simple(op),
        "bias": args["bias"],
        "spatial_dims": 2,
    }
    return Inferred([x.with_shape((x.shape[0], args["out_channels"], *spatial))], init)


def _convt_src(a):
    extra = {
        k: a[k] for k, d in (("stride", 1), ("padding", 0), ("output_padding", 0), ("bias", True)) if differs(a[k], d)
    }
    return pycall("nn.ConvTranspose2d", a["in_channels"], a["out_channels"], a["kernel_size"], **extra)


register(
    Op(
        name="ConvTranspose2d",
        doc="Transposed 2-D convolution (learned upsampling); input channels are inferred.",
        params=(
            Param("out_channels", "int", doc="number of filters"),
            Param("kernel", "ints", doc="kernel size"),
            Param("stride", "ints", 1, "upsampling factor"),
            Param("padding", "ints", 0, "implicit padding removed from the output"),
            Param("output_padding", "ints", 0, "extra size added to one side of the output"),
            Param("bias", "bool", True, "learn an additive bias"),
        ),
        infer=_convt_infer,
        category="layer",
        module=_convt_src,
        forward=_call_module,
        prefix="deconv",
        param_count=_conv_params,
        example="z -> ConvTranspose2d(32, kernel=4, stride=2, padding=1)",
        shape_rule="[batch, C, H, W] -> [batch, out_channels, (H-1)s - 2p + k + output_padding, ...]",
    )
)

# ---------------------------------------------------------------- pooling


def _pool_infer(n: int, name: str):
    def infer(args, inputs):
        (x,) = inputs
        expect_rank(x, (n + 2,), name, _layout(n))
        check_positive(args, "kernel", *(["stride"] if args["stride"] is not None else []))
        kernel = pair(args["kernel"], n)
        stride = pair(args["stride"] if args["stride"] is not None else args["kernel"], n)
        padding = pair(args["padding"], n)
        check_padding(padding, name)
        if any(2 * p > k for p, k in zip(padding, kernel)):
            raise ShapeError(f"{name}: padding must be at most half the kernel size")
        spatial = tuple(conv_out(size, k, s, p) for size, k, s, p in zip(x.shape[2:], kernel, stride, padding))
        init = {"kernel_size": simple(kernel), "stride": simple(stride), "padding": simple(padding)}
        return Inferred([x.with_shape((*x.shape[:2], *spatial))], init)

    return infer


def _pool_src(fn: str):
    def functional(xs, a):
        extra = {"stride": a["stride"]} if differs(a["stride"], a["kernel_size"]) else {}
        if differs(a["padding"], 0):
            extra["padding"] = a["padding"]
        return pycall(fn, Src(xs[0]), a["kernel_size"], **extra)

    return functional


def _module_src(cls: str):
    def src(a):
        extra = {"stride": a["stride"]} if differs(a["stride"], a["kernel_size"]) else {}
        if differs(a["padding"], 0):
            extra["padding"] = a["padding"]
        return pycall(f"nn.{cls}", a["kernel_size"], **extra)

    return src


for _n in (1, 2):
    for _kind, _fn in (("Max", "max_pool"), ("Avg", "avg_pool")):
        _name = f"{_kind}Pool{_n}d"
        register(
            Op(
                name=_name,
                doc=f"{_kind.lower()}imum-style pooling over {_n}-D windows; stride defaults to the kernel size."
                if _kind == "Max"
                else f"Average pooling over {_n}-D windows; stride defaults to the kernel size.",
                params=(
                    Param("kernel", "ints", doc="window size"),
                    Param("stride", "ints", None, "step between windows (default: kernel)"),
                    Param("padding", "ints", 0, "implicit padding"),
                ),
                infer=_pool_infer(_n, _name),
                category="layer",
                module=_module_src(_name),
                functional=_pool_src(f"F.{_fn}{_n}d"),
                prefix="pool",
                example=f"x -> {_name}(2)",
                shape_rule=f"{_layout(_n)} -> [batch, channels, floor((L + 2p - k) / s) + 1 ...]",
            )
        )


def _check_exportable_pooling(name: str, given, wanted: int) -> None:
    """A symbolic size pools only to 1 (global pooling): other bins would depend on a size known at run time."""
    if wanted != 1 and not isinstance(given, int):
        raise ShapeError(
            f"{name}: the symbolic size '{given}' can be pooled only to 1, not to {wanted}",
            "pool to 1 (global pooling), or give the input a fixed size",
        )


def _adaptive_infer(n: int, name: str):
    def infer(args, inputs):
        (x,) = inputs
        expect_rank(x, (n + 2,), name, _layout(n))
        check_positive(args, "output_size")
        size = pair(args["output_size"], n)
        for given, wanted in zip(x.shape[2:], size):
            _check_exportable_pooling(name, given, wanted)
        return Inferred([x.with_shape((*x.shape[:2], *size))], {"output_size": simple(size)})

    return infer


for _n in (1, 2):
    _name = f"AdaptiveAvgPool{_n}d"
    register(
        Op(
            name=_name,
            doc="Average pooling to a fixed output size, whatever the input size (1 = global pooling).",
            params=(Param("output_size", "ints", 1, "output size"),),
            infer=_adaptive_infer(_n, _name),
            category="layer",
            module=lambda a, c=_name: pycall(f"nn.{c}", a["output_size"]),
            functional=lambda xs, a, n=_n: pycall(f"F.adaptive_avg_pool{n}d", Src(xs[0]), a["output_size"]),
            prefix="pool",
            example=f"x -> {_name}(1)",
            shape_rule=f"{_layout(_n)} -> [batch, channels, output_size ...]",
        )
    )


# ---------------------------------------------------------------- ONNX lowerings (dslc.lower_onnx)


def _ints(value, n: int) -> list[int]:
    return [int(v) for v in pair(plain(value), n)]


@lowering("Conv1d", "Conv2d")
def _conv_onnx(g, xs, outs, a, key):
    n = a["spatial_dims"]
    attrs = {
        "kernel_shape": _ints(a["kernel_size"], n),
        "strides": _ints(a["stride"], n),
        "dilations": _ints(a["dilation"], n),
        "group": int(plain(a["groups"])),
    }
    padding = plain(a["padding"])
    if padding == "same":  # PyTorch pads an odd total's extra row at the end, as SAME_UPPER does
        attrs["auto_pad"] = "SAME_UPPER"
    else:
        attrs["pads"] = ([0] * n if padding == "valid" else _ints(padding, n)) * 2
    bias = [g.weight(f"{key}bias")] if a["bias"] else []
    return g.node("Conv", [xs[0].name, g.weight(f"{key}weight"), *bias], **attrs)


def _pool_onnx(op_type: str, n: int):
    def lower(g, xs, outs, a, key):
        attrs = {"kernel_shape": _ints(a["kernel_size"], n), "strides": _ints(a["stride"], n)}
        attrs["pads"] = _ints(a["padding"], n) * 2
        if op_type == "AveragePool":
            attrs["count_include_pad"] = 1  # PyTorch's default
        return g.node(op_type, [xs[0].name], **attrs)

    return lower


@lowering("AdaptiveAvgPool1d", "AdaptiveAvgPool2d")
def _adaptive_onnx(g, xs, outs, a, key):
    x = xs[0]
    n = x.type.rank - 2
    size = _ints(a["output_size"], n)
    if all(s == 1 for s in size):
        return g.node("GlobalAveragePool", [x.name])
    spatial = [int(d) for d in x.type.shape[2:]]  # fixed: the checker pools a symbolic size only to 1
    if all(d % s == 0 for d, s in zip(spatial, size)):
        kernel = [d // s for d, s in zip(spatial, size)]
        return g.node("AveragePool", [x.name], kernel_shape=kernel, strides=kernel)
    # PyTorch's uneven bins (start floor(i*n/m), end ceil((i+1)*n/m)) as a matrix per axis: y = P_h x P_w^T
    y = g.one("MatMul", [x.name, g.constant(_bins(spatial[-1], size[-1]).T, "float32", "pool_w")])
    if n == 2:
        y = g.one("MatMul", [g.constant(_bins(spatial[0], size[0]), "float32", "pool_h"), y])
    return [y]


def _bins(n: int, m: int):
    """[m, n]: row i averages input positions floor(i*n/m) .. ceil((i+1)*n/m) - 1."""
    import numpy as np

    matrix = np.zeros((m, n), dtype=np.float32)
    for i in range(m):
        start, end = (i * n) // m, -((-(i + 1) * n) // m)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


for _n in (1, 2):
    lowering(f"MaxPool{_n}d")(_pool_onnx("MaxPool", _n))
    lowering(f"AvgPool{_n}d")(_pool_onnx("AveragePool", _n))


@lowering("ConvTranspose2d")
def _conv_transpose_onnx(g, xs, outs, a, key):
    bias = [g.weight(f"{key}bias")] if a["bias"] else []
    return g.node(
        "ConvTranspose",
        [xs[0].name, g.weight(f"{key}weight"), *bias],
        kernel_shape=_ints(a["kernel_size"], 2),
        strides=_ints(a["stride"], 2),
        pads=_ints(a["padding"], 2) * 2,
        output_padding=_ints(a["output_padding"], 2),
    )
