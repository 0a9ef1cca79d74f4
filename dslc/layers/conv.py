"""Convolution, pooling, padding and resizing layers (channels-first, like PyTorch)."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

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
    helper,
    lowering,
    pair,
    pycall,
    reflected_sizes,
    register,
    simple,
    static,
)
from dslc.params import brief
from dslc.shapes import Dim, TensorType
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


_SPATIAL = {1: "length", 2: "height, width", 3: "depth, height, width"}


def _layout(n: int) -> str:
    return f"[batch, channels, {_SPATIAL[n]}]"


def _conv_input(x: TensorType, n: int, name: str) -> int:
    """Check a convolution's input ([batch, channels, spatial...]) and return its channel count."""
    expect_float(x, name)
    hint = "add a channel dimension with Reshape or unsqueeze" if x.rank == n + 1 else None
    expect_rank(x, (n + 2,), name, _layout(n), hint)
    return static(x.shape[1], "channel count (dimension 1)", name)


def _conv_padding(args, n: int, name: str, kernel: tuple, stride: tuple, dilation: tuple):
    """The padding per axis, or "same" where PyTorch works it out (asymmetric, or over a block's kernel)."""
    padding = plain(args["padding"])
    if padding == "same":
        if any(s != 1 for s in stride):
            raise ShapeError(f"{name}: padding='same' needs stride 1, got stride {args['stride']}")
        if any(is_traced(v) for v in (*kernel, *dilation)):
            return "same"  # a block's kernel parameter: the padding depends on it, PyTorch works it out
        if any(d * (k - 1) % 2 for k, d in zip(kernel, dilation)):
            return "same"  # asymmetric: PyTorch pads the extra row at the end
        return tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
    if padding == "valid":
        return (0,) * n
    if isinstance(padding, str):
        causal = ", 'causal'" if n == 1 else ""
        raise ShapeError(f"{name}: padding must be an integer, 'same', 'valid'{causal}, got {brief(args['padding'])}")
    padding = pair(args["padding"], n)
    check_padding(padding, name)
    return padding


def _conv_infer(n: int, name: str):
    def infer(args, inputs):
        (x,) = inputs
        in_channels = _conv_input(x, n, name)
        check_positive(args, "out_channels", "kernel", "stride", "dilation", "groups")
        kernel, stride, dilation = pair(args["kernel"], n), pair(args["stride"], n), pair(args["dilation"], n)
        if in_channels % args["groups"] or args["out_channels"] % args["groups"]:
            raise ShapeError(f"{name}: groups={args['groups']} must divide in ({in_channels}) and out channels")
        init = {
            "in_channels": in_channels,
            "out_channels": args["out_channels"],
            "kernel_size": simple(kernel),
            "stride": simple(stride),
            "padding": 0,
            "dilation": simple(dilation),
            "groups": args["groups"],
            "bias": args["bias"],
            "spatial_dims": n,
            **({"init": args["init"], "init_std": args["init_std"]} if args["init"] is not None else {}),
        }
        if n == 1 and plain(args["padding"]) == "causal":
            # Left padding only, so output t sees inputs up to t: the module pads nothing and forward() calls F.pad.
            init["causal_padding"] = dilation[0] * (kernel[0] - 1)
            spatial = (conv_out(x.shape[2] + init["causal_padding"], kernel[0], stride[0], 0, dilation[0]),)
        else:
            padding = _conv_padding(args, n, name, kernel, stride, dilation)
            # a block's str parameter (`padding=pad`) is written as itself: PyTorch takes "same" and "valid"
            if is_traced(args["padding"]) or padding == "same":
                init["padding"] = args["padding"]
            else:
                init["padding"] = simple(padding)
            if padding == "same":
                spatial = x.shape[2:]
            else:
                spatial = tuple(
                    conv_out(size, k, s, p, d)
                    for size, k, s, p, d in zip(x.shape[2:], kernel, stride, padding, dilation)
                )
        return Inferred([x.with_shape((x.shape[0], args["out_channels"], *spatial))], init)

    return infer


# Optional constructor arguments of nn.ConvNd and nn.ConvTransposeNd with PyTorch's defaults, in the order written.
_CONV_DEFAULTS = {"stride": 1, "padding": 0, "output_padding": 0, "dilation": 1, "groups": 1, "bias": True}


def _conv_src(cls: str):
    def src(a):
        extra = {k: a[k] for k, d in _CONV_DEFAULTS.items() if k in a and differs(a[k], d)}
        layer = pycall(f"nn.{cls}", a["in_channels"], a["out_channels"], a["kernel_size"], **extra)
        if a.get("init") is None:
            return layer
        std = {"std": a["init_std"]} if plain(a["init"]) == "normal" else {}
        return pycall("initialized", Src(layer), a["init"], **std)

    return src


helper(
    "initialized",
    '''
def initialized(layer: nn.Module, init: str, std: float = 0.01) -> nn.Module:
    """`layer` with its weight drawn as `init` names (as torchvision initialises its models) and its bias zero."""
    draw = {
        "kaiming_uniform": nn.init.kaiming_uniform_,
        "kaiming_normal": lambda w: nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu"),
        "xavier_uniform": nn.init.xavier_uniform_,
        "normal": lambda w: nn.init.normal_(w, std=std),
    }
    draw[init](layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer
''',
)


def _conv_forward(module, inputs, init):
    """`self.conv(x)`, or `self.conv(F.pad(x, (d * (k - 1), 0)))` for a causal Conv1d."""
    if "causal_padding" in init:
        return f"{module}({pycall('F.pad', Src(inputs[0]), (init['causal_padding'], 0))})"
    return _call_module(module, inputs, init)


_CONV_PARAMS = (
    Param("out_channels", "int", doc="number of filters"),
    Param("kernel", "ints", doc="kernel size: an int or a tuple"),
    Param("stride", "ints", 1, "step between windows"),
    Param("padding", "any", 0, "an int, a tuple, 'same' or 'valid'; Conv1d also 'causal' (left padding only)"),
    Param("dilation", "ints", 1, "spacing between kernel taps"),
    Param("groups", "int", 1, "blocked connections between input and output channels"),
    Param("bias", "bool", True, "learn an additive bias"),
    Param(
        "init",
        "str",
        None,
        "the weight's initialisation (bias zero): kaiming_uniform (He), kaiming_normal (fan out, ReLU), "
        "xavier_uniform, normal (std init_std); none: PyTorch's",
        ("kaiming_uniform", "kaiming_normal", "xavier_uniform", "normal"),
    ),
    Param("init_std", "float", 0.01, "the standard deviation of init='normal'", low=0.0),
)

for _n in (1, 2, 3):
    _causal = "; padding='causal': [batch, out_channels, floor((L - 1) / s) + 1]" if _n == 1 else ""
    register(
        Op(
            name=f"Conv{_n}d",
            doc=f"{_n}-D convolution; input channels are inferred from dimension 1."
            + (" padding='causal' pads d(k-1) on the left only (WaveNet, TCN)." if _n == 1 else ""),
            params=_CONV_PARAMS,
            infer=_conv_infer(_n, f"Conv{_n}d"),
            category="layer",
            module=_conv_src(f"Conv{_n}d"),
            helpers=("initialized",),
            forward=_conv_forward,
            prefix="conv",
            param_count=_conv_params,
            example=f'x -> Conv{_n}d(32, kernel=3, padding="same")',
            shape_rule=f"{_layout(_n)} -> [batch, out_channels, floor((L + 2p - d(k-1) - 1) / s) + 1 ...]{_causal}",
        )
    )


def _convt_infer(n: int, name: str):
    def infer(args, inputs):
        (x,) = inputs
        in_channels = _conv_input(x, n, name)
        check_positive(args, "out_channels", "kernel", "stride")
        k, s, p = pair(args["kernel"], n), pair(args["stride"], n), pair(args["padding"], n)
        op = pair(args["output_padding"], n)
        check_padding(p, name)
        check_padding(op, name)
        if any(o >= si for o, si in zip(op, s)):
            raise ShapeError(
                f"{name}: output_padding must be smaller than the stride, got {brief(args['output_padding'])}"
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
            "spatial_dims": n,
        }
        return Inferred([x.with_shape((x.shape[0], args["out_channels"], *spatial))], init)

    return infer


for _n in (1, 2, 3):
    _name = f"ConvTranspose{_n}d"
    register(
        Op(
            name=_name,
            doc=f"Transposed {_n}-D convolution (learned upsampling); input channels are inferred.",
            params=(
                Param("out_channels", "int", doc="number of filters"),
                Param("kernel", "ints", doc="kernel size"),
                Param("stride", "ints", 1, "upsampling factor"),
                Param("padding", "ints", 0, "implicit padding removed from the output"),
                Param("output_padding", "ints", 0, "extra size added to one side of the output"),
                Param("bias", "bool", True, "learn an additive bias"),
            ),
            infer=_convt_infer(_n, _name),
            category="layer",
            module=_conv_src(_name),
            forward=_call_module,
            prefix="deconv",
            param_count=_conv_params,
            example=f"z -> {_name}(32, kernel=4, stride=2, padding=1)",
            shape_rule=f"{_layout(_n)} -> [batch, out_channels, (L-1)s - 2p + k + output_padding ...]",
        )
    )

# ---------------------------------------------------------------- pooling


def pool_out(size: Dim, kernel: int, stride: int, padding: int, ceil_mode: bool) -> Dim:
    """PyTorch's pooling output size: conv_out, or with ceil_mode the division rounded up, less the last window
    where it would start past the input and its left padding."""
    if not ceil_mode:
        return conv_out(size, kernel, stride, padding)
    out = (size + (2 * padding - kernel + stride - 1)) // stride + 1
    if not isinstance(size, int):
        # The last window can start in the right padding only where stride > kernel - padding, and then only for
        # some sizes: the output size would depend on the size modulo the stride.
        if stride > kernel - padding:
            raise ShapeError(
                f"ceil_mode with the symbolic size '{size}' needs stride <= kernel - padding, "
                f"got stride {stride}, kernel {kernel}, padding {padding}",
                "give the input a fixed size, or use ceil_mode=false",
            )
        return out
    if (out - 1) * stride >= size + padding:
        out -= 1
    if out < 1:
        raise ShapeError(f"input size {size} is smaller than the kernel ({kernel}, padding {padding})")
    return out


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
        ceil_mode = args["ceil_mode"]
        try:
            spatial = tuple(pool_out(d, k, s, p, ceil_mode) for d, k, s, p in zip(x.shape[2:], kernel, stride, padding))
        except ShapeError as exc:
            raise ShapeError(f"{name}: {exc}", exc.hint) from None
        init = {"kernel_size": simple(kernel), "stride": simple(stride), "padding": simple(padding)}
        init["ceil_mode"] = ceil_mode
        if "count_include_pad" in args:
            init["count_include_pad"] = args["count_include_pad"]
        return Inferred([x.with_shape((*x.shape[:2], *spatial))], init)

    return infer


def _pool_options(a) -> dict[str, Any]:
    """The keyword arguments of a pooling layer that differ from PyTorch's defaults (stride: the kernel)."""
    extra = {"stride": a["stride"]} if differs(a["stride"], a["kernel_size"]) else {}
    defaults = {"padding": 0, "ceil_mode": False, "count_include_pad": True}
    return extra | {k: a[k] for k, d in defaults.items() if k in a and differs(a[k], d)}


_POOL_PARAMS = (
    Param("kernel", "ints", doc="window size"),
    Param("stride", "ints", None, "step between windows (default: kernel)"),
    Param("padding", "ints", 0, "implicit padding"),
    Param("ceil_mode", "bool", False, "round the output size up; a window must still start inside the input"),
)
_AVG_PARAMS = (*_POOL_PARAMS, Param("count_include_pad", "bool", True, "average the zero padding in too"))

for _n in (1, 2):
    for _kind, _fn, _params in (("Max", "max_pool", _POOL_PARAMS), ("Avg", "avg_pool", _AVG_PARAMS)):
        _name = f"{_kind}Pool{_n}d"
        register(
            Op(
                name=_name,
                doc=f"{_kind.lower()}imum-style pooling over {_n}-D windows; stride defaults to the kernel size."
                if _kind == "Max"
                else f"Average pooling over {_n}-D windows; stride defaults to the kernel size.",
                params=_params,
                infer=_pool_infer(_n, _name),
                category="layer",
                module=lambda a, c=_name: pycall(f"nn.{c}", a["kernel_size"], **_pool_options(a)),
                functional=lambda xs, a, f=f"F.{_fn}{_n}d": pycall(f, Src(xs[0]), a["kernel_size"], **_pool_options(a)),
                prefix="pool",
                example=f"x -> {_name}(2)",
                shape_rule=f"{_layout(_n)} -> [batch, channels, floor((L + 2p - k) / s) + 1 ...]; ceil_mode: "
                "rounded up, less one where the last window would start past L + p",
            )
        )


def _adaptive_infer(n: int, name: str):
    def infer(args, inputs):
        (x,) = inputs
        expect_rank(x, (n + 2,), name, _layout(n))
        check_positive(args, "output_size")
        size = pair(args["output_size"], n)
        return Inferred([x.with_shape((*x.shape[:2], *size))], {"output_size": simple(size)})

    return infer


for _n in (1, 2):
    for _kind, _what in (("Avg", "Average"), ("Max", "Maximum")):
        _name, _fn = f"Adaptive{_kind}Pool{_n}d", f"F.adaptive_{_kind.lower()}_pool{_n}d"
        register(
            Op(
                name=_name,
                doc=f"{_what} pooling to a fixed output size, whatever the input size (1 = global pooling).",
                params=(Param("output_size", "ints", 1, "output size"),),
                infer=_adaptive_infer(_n, _name),
                category="layer",
                module=lambda a, c=_name: pycall(f"nn.{c}", a["output_size"]),
                functional=lambda xs, a, f=_fn: pycall(f, Src(xs[0]), a["output_size"]),
                prefix="pool",
                example=f"x -> {_name}(1)",
                shape_rule=f"{_layout(_n)} -> [batch, channels, output_size ...]",
            )
        )

# ---------------------------------------------------------------- padding

_PAD_MODES = {"Zero": "constant", "Constant": "constant", "Reflection": "reflect", "Replication": "replicate"}
_PAD_ORDER = {1: "(left, right)", 2: "(left, right, top, bottom)"}
_PAD_RULE = {1: "length + left + right", 2: "height + top + bottom, width + left + right"}


def _pad_infer(n: int, name: str, mode: str):
    def infer(args, inputs):
        (x,) = inputs
        expect_rank(x, (n + 1, n + 2), name, f"{_layout(n)} or [channels, {_SPATIAL[n]}]")
        padding = args["padding"]
        if isinstance(padding, tuple) and len(padding) != 2 * n:
            raise ShapeError(f"{name}: padding takes one integer or {_PAD_ORDER[n]}, got {brief(padding)}")
        padding = pair(padding, 2 * n)
        check_padding(padding, name)
        # PyTorch's order pads the last dimension first: (left, right) of the width, then (top, bottom).
        sides = [padding[2 * i : 2 * i + 2] for i in range(n)][::-1]
        spatial = x.shape[-n:]
        at_least = []
        if mode == "reflect":
            for axis, (size, (before, after)) in enumerate(zip(spatial, sides), start=x.rank - n):
                if isinstance(size, int) and max(before, after) >= size:
                    raise ShapeError(
                        f"{name}: reflection padding must be smaller than the input size, got padding "
                        f"{max(before, after)} for size {size} (dimension {axis})",
                        "pad less, or use ReplicationPad or ZeroPad",
                    )
                at_least += reflected_sizes(size, before, after, axis)
        init = {"padding": padding}
        if name.startswith("Constant"):
            value = args["value"]
            if not x.is_float and not float(value).is_integer():
                raise ShapeError(f"{name}: an {x.dtype} tensor cannot be padded with {brief(value)}")
            init["value"] = value
        out = tuple(size + before + after for size, (before, after) in zip(spatial, sides))
        return Inferred([x.with_shape((*x.shape[:-n], *out))], init, at_least)

    return infer


def _pad_module(cls: str):
    def src(a):
        return pycall(f"nn.{cls}", simple(a["padding"]), *([a["value"]] if "value" in a else []))

    return src


def _pad_functional(mode: str):
    def functional(xs, a):
        extra = {"mode": mode} if mode != "constant" else {}
        if differs(a.get("value", 0.0), 0.0):
            extra["value"] = a["value"]
        return pycall("F.pad", Src(xs[0]), a["padding"], **extra)

    return functional


_PAD_DOCS = {
    "Zero": "zeros",
    "Constant": "a constant value",
    "Reflection": "the input's reflection (the edge not repeated; padding smaller than the size)",
    "Replication": "copies of the edge values",
}

for _n in (1, 2):
    for _kind, _mode in _PAD_MODES.items():
        _name = f"{_kind}Pad{_n}d"
        _value = (Param("value", "float", doc="the fill value"),) if _kind == "Constant" else ()
        register(
            Op(
                name=_name,
                doc=f"Pads the last {'2 dimensions' if _n == 2 else 'dimension'} with {_PAD_DOCS[_kind]}.",
                params=(Param("padding", "ints", doc=f"an int for every side, or {_PAD_ORDER[_n]}"), *_value),
                infer=_pad_infer(_n, _name, _mode),
                category="layer",
                module=_pad_module(_name),
                functional=_pad_functional(_mode),
                prefix="pad",
                example=f"x -> {_name}({'(1, 2, 0, 1)' if _n == 2 else 2}{', 0.5' if _value else ''})",
                shape_rule=f"[..., {_SPATIAL[_n]}] -> [..., {_PAD_RULE[_n]}]",
            )
        )

# ---------------------------------------------------------------- resizing

_RESIZE_RANKS = {"nearest": (3, 4), "linear": (3,), "bilinear": (4,)}
_SCALE_DENOMINATOR = 64  # scales exact in binary (2, 0.5, 1.5): PyTorch (double) and ONNX (float) size alike


def _scale(value: Any, name: str) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ShapeError(f"{name}: scale_factor must be a positive number or a tuple of them, got {brief(value)}")
    exact = Fraction(plain(value))
    if exact.denominator > _SCALE_DENOMINATOR:
        raise ShapeError(
            f"{name}: scale_factor {brief(value)} is not a multiple of 1/{_SCALE_DENOMINATOR}, so PyTorch and ONNX "
            "could round the output size differently",
            "use a scale such as 2, 0.5 or 1.5, or give size=",
        )
    return exact


def _resize_infer(name: str):
    def infer(args, inputs):
        (x,) = inputs
        expect_float(x, name)
        mode = plain(args["mode"])
        layouts = " or ".join(_layout(r - 2) for r in _RESIZE_RANKS[mode])
        expect_rank(x, _RESIZE_RANKS[mode], f"{name} (mode {mode!r})", layouts)
        n = x.rank - 2
        if (args["size"] is None) == (args["scale_factor"] is None):
            raise ShapeError(f"{name}: give exactly one of size and scale_factor")
        if mode == "nearest" and args["align_corners"] is not None:
            raise ShapeError(f"{name}: align_corners is for the linear and bilinear modes, not {mode!r}")
        if args["size"] is not None:
            check_positive(args, "size")
            spatial = pair(args["size"], n)
        else:
            factor = args["scale_factor"]
            if isinstance(factor, tuple) and len(factor) != n:
                raise ShapeError(f"{name}: scale_factor takes 1 or {n} numbers, got {brief(factor)}")
            scales = [_scale(s, name) for s in pair(factor, n)]
            spatial = tuple((s.numerator * d) // s.denominator for s, d in zip(scales, x.shape[2:]))
            for d, out in zip(x.shape[2:], spatial):
                if isinstance(out, int) and out < 1:
                    raise ShapeError(f"{name}: scale_factor {brief(factor)} resizes size {d} to {out}")
        init = {
            "size": None if args["size"] is None else simple(pair(args["size"], n)),
            "scale_factor": args["scale_factor"],
            "mode": mode,
            "align_corners": args["align_corners"],
        }
        return Inferred([x.with_shape((*x.shape[:2], *spatial))], init)

    return infer


def _resize_options(a) -> dict[str, Any]:
    return {
        k: a[k]
        for k, d in (("size", None), ("scale_factor", None), ("mode", "nearest"), ("align_corners", None))
        if differs(a[k], d)
    }


_RESIZE_PARAMS = (
    Param("size", "ints", None, "output size: an int or one per spatial dimension"),
    Param("scale_factor", "any", None, "multiplier of the spatial sizes (a multiple of 1/64): one, or one per axis"),
    Param("mode", "str", "nearest", "nearest, linear (3-D input) or bilinear (4-D input)", tuple(_RESIZE_RANKS)),
    Param("align_corners", "bool", None, "linear modes: corner pixels aligned (default false)"),
)
_RESIZE_RULE = "[batch, channels, L ...] -> [batch, channels, size ...] or [batch, channels, floor(L * scale) ...]"

register(
    Op(
        name="Upsample",
        doc="Resizes the spatial dimensions (nearest, linear, bilinear) to `size` or by `scale_factor`.",
        params=_RESIZE_PARAMS,
        infer=_resize_infer("Upsample"),
        category="layer",
        module=lambda a: pycall("nn.Upsample", **_resize_options(a)),
        forward=_call_module,
        prefix="upsample",
        example='x -> Upsample(scale_factor=2, mode="bilinear")',
        shape_rule=_RESIZE_RULE,
    )
)
register(
    Op(
        name="interpolate",
        doc="F.interpolate: resizes the spatial dimensions as Upsample does.",
        params=_RESIZE_PARAMS,
        infer=_resize_infer("interpolate"),
        category="function",
        module=lambda a: pycall("nn.Upsample", **_resize_options(a)),
        functional=lambda xs, a: pycall("F.interpolate", Src(xs[0]), **_resize_options(a)),
        prefix="upsample",
        example="interpolate(x, size=(32, 32))",
        shape_rule=_RESIZE_RULE,
    )
)

# ---------------------------------------------------------------- ONNX lowerings (dslc.lower_onnx)


def _ints(value, n: int) -> list[int]:
    return [int(v) for v in pair(plain(value), n)]


def _weights(g, key: str, a) -> list[str]:
    return [g.weight(f"{key}weight"), *([g.weight(f"{key}bias")] if a["bias"] else [])]


@lowering("Conv1d", "Conv2d", "Conv3d")
def _conv_onnx(g, xs, outs, a, key):
    n = a["spatial_dims"]
    attrs = {
        "kernel_shape": _ints(a["kernel_size"], n),
        "strides": _ints(a["stride"], n),
        "dilations": _ints(a["dilation"], n),
        "group": int(plain(a["groups"])),
    }
    padding = plain(a["padding"])
    if "causal_padding" in a:
        attrs["pads"] = [int(plain(a["causal_padding"])), 0]
    elif padding == "same":  # PyTorch pads an odd total's extra row at the end, as SAME_UPPER does
        attrs["auto_pad"] = "SAME_UPPER"
    else:
        attrs["pads"] = ([0] * n if padding == "valid" else _ints(padding, n)) * 2
    return g.node("Conv", [xs[0].name, *_weights(g, key, a)], **attrs)


@lowering("ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d")
def _conv_transpose_onnx(g, xs, outs, a, key):
    n = a["spatial_dims"]
    return g.node(
        "ConvTranspose",
        [xs[0].name, *_weights(g, key, a)],
        kernel_shape=_ints(a["kernel_size"], n),
        strides=_ints(a["stride"], n),
        pads=_ints(a["padding"], n) * 2,
        output_padding=_ints(a["output_padding"], n),
    )


def _pool_onnx(op_type: str, n: int):
    def lower(g, xs, outs, a, key):
        x = xs[0]
        kernel, stride, padding = (_ints(a[k], n) for k in ("kernel_size", "stride", "padding"))
        attrs = {"kernel_shape": kernel, "strides": stride, "pads": padding * 2}
        include_pad = op_type == "AveragePool" and bool(plain(a["count_include_pad"]))
        if op_type == "AveragePool":
            attrs["count_include_pad"] = int(include_pad)
        sizes, out_sizes = x.type.shape[2:], outs[0].shape[2:]
        ceil_mode = bool(plain(a["ceil_mode"]))
        drops = ceil_mode and any(
            isinstance(d, int) and (d + 2 * p - k + s - 1) // s + 1 != out
            for d, k, s, p, out in zip(sizes, kernel, stride, padding, out_sizes)
        )
        if not drops:
            return g.node(op_type, [x.name], ceil_mode=int(ceil_mode), **attrs)
        # PyTorch drops a last window that would start in the right padding; ONNX's shape rule keeps it. Floor mode
        # with the end padding that leaves exactly PyTorch's windows. An average that counts the padding counts it
        # up to L + p only: those zeros become input, and what lies past them is not counted.
        name, begin = x.name, padding
        if include_pad:
            if any(padding):
                name = g.one("Pad", [name, g.ints([0, 0, *padding] * 2, "pads")])
                sizes, begin = [d + 2 * p for d, p in zip(sizes, padding)], [0] * n
            attrs["count_include_pad"] = 0
        ends = [
            max(0, (out - 1) * s + k - d - b)
            if isinstance(d, int)
            else b + s - 1  # floor((d + b + e - k) / s) + 1 == out
            for d, k, s, b, out in zip(sizes, kernel, stride, begin, out_sizes)
        ]
        return g.node(op_type, [name], **(attrs | {"pads": begin + ends}))

    return lower


for _n in (1, 2):
    lowering(f"MaxPool{_n}d")(_pool_onnx("MaxPool", _n))
    lowering(f"AvgPool{_n}d")(_pool_onnx("AveragePool", _n))


def _adaptive_onnx(kind: str):
    """Adaptive pooling: global, a regular pooling where the bins are even, else PyTorch's uneven bins (start
    floor(i*n/m), end ceil((i+1)*n/m)) written out per axis: as constants for a fixed size, computed from the size at
    run time for a symbolic one."""

    def lower(g, xs, outs, a, key):
        x = xs[0]
        rank = x.type.rank
        size = _ints(a["output_size"], rank - 2)
        spatial = list(x.type.shape[2:])
        if all(s == 1 for s in size):
            return g.node(f"Global{kind}Pool", [x.name])
        if all(isinstance(d, int) and d % s == 0 for d, s in zip(spatial, size)):
            kernel = [d // s for d, s in zip(spatial, size)]
            return g.node(f"{kind}Pool", [x.name], kernel_shape=kernel, strides=kernel)
        y = x.name
        for axis in reversed(range(2, rank)) if kind == "Average" else range(2, rank):
            d, m = spatial[axis - 2], size[axis - 2]
            if kind == "Average":  # a matrix per axis: y = P_h y P_w^T
                y = _average_axis(g, y, axis, rank, d if isinstance(d, int) else g.length(d, x.name, axis), m)
            elif isinstance(d, int):
                y = _max_axis_fixed(g, y, axis, d, m)
            else:
                y = _max_axis_symbolic(g, y, axis, rank, g.length(d, x.name, axis), m)
        return [y]

    return lower


def _average_axis(g, y: str, axis: int, rank: int, n: int | str, m: int) -> str:
    """Average over the bins of `axis` (the last or the one before it): a MatMul with the bins' [m, n] matrix."""
    from dslc.onnx_graph import ONNX_DTYPES

    last = axis == rank - 1
    if isinstance(n, int):
        matrix = g.constant(_bins(n, m).T if last else _bins(n, m), "float32", "pool_bins")
    else:
        inside, start, end = _runtime_bins(g, n, m, transposed=last)
        counts = g.one("Cast", [g.one("Sub", [end, start])], to=ONNX_DTYPES["float32"])
        matrix = g.one("Div", [g.one("Cast", [inside], to=ONNX_DTYPES["float32"]), counts])
    return g.one("MatMul", [y, matrix] if last else [matrix, y])


def _max_axis_fixed(g, y: str, axis: int, n: int, m: int) -> str:
    """Max is separable over a rectangle: per axis, gather each bin's positions ([m, longest bin], the short bins
    repeating their last position, which leaves the maximum as it is) and reduce them."""
    bins = [_bin(i, n, m) for i in range(m)]
    longest = max(len(b) for b in bins)
    index = [list(b) + [b[-1]] * (longest - len(b)) for b in bins]
    gathered = g.one("Gather", [y, g.constant(index, "int64", "pool_bins")], axis=axis)
    return g.one("ReduceMax", [gathered, g.ints([axis + 1], "axes")], keepdims=0)


def _max_axis_symbolic(g, y: str, axis: int, rank: int, n: str, m: int) -> str:
    """Max over bins known at run time: y repeated per bin ([..., m, n, ...]) with the positions outside the bin
    replaced by y's minimum over the axis (not -inf, which a float16 graph cannot hold), then reduced."""
    inside, _, _ = _runtime_bins(g, n, m, transposed=False)
    trailing = rank - 1 - axis
    if trailing:
        inside = g.one("Unsqueeze", [inside, g.ints(list(range(2, 2 + trailing)), "axes")])
    lowest = g.one("ReduceMin", [y, g.ints([axis], "axes")], keepdims=1)
    picked = g.one(
        "Where",
        [inside, g.one("Unsqueeze", [y, g.ints([axis], "axes")]), g.one("Unsqueeze", [lowest, g.ints([axis], "axes")])],
    )
    return g.one("ReduceMax", [picked, g.ints([axis + 1], "axes")], keepdims=0)


def _runtime_bins(g, n: str, m: int, transposed: bool) -> tuple[str, str, str]:
    """For a length `n` known at run time (a 1-D int64 [n]): bool [m, n] (`transposed`: [n, m]), whether position p
    lies in bin i, and the bins' starts and ends ([m, 1] or [1, m])."""
    import numpy as np

    def build() -> list[str]:
        shape = (1, m) if transposed else (m, 1)
        index = np.arange(m, dtype=np.int64).reshape(shape)
        start = g.one("Div", [g.one("Mul", [g.constant(index, "int64", "bin"), n]), g.ints([m])])
        end = g.one("Mul", [g.constant(index + 1, "int64", "bin_end"), n])
        end = g.one("Div", [g.one("Add", [end, g.ints([m - 1])]), g.ints([m])])  # ceil((i + 1) * n / m)
        zero, one = g.constant(0, "int64", "zero"), g.constant(1, "int64", "one")
        positions = g.one("Range", [zero, g.one("Squeeze", [n]), one])
        if transposed:
            positions = g.one("Unsqueeze", [positions, g.ints([1], "axes")])
        inside = g.one("And", [g.one("GreaterOrEqual", [positions, start]), g.one("Less", [positions, end])])
        return [inside, start, end]

    inside, start, end = g.memo(("adaptive_bins", n, m, transposed), build)  # once per size and bin count
    return inside, start, end


def _bin(i: int, n: int, m: int) -> range:
    """The input positions of PyTorch's adaptive pooling bin i of m over n positions."""
    return range((i * n) // m, -((-(i + 1) * n) // m))


def _bins(n: int, m: int):
    """[m, n]: row i averages the positions of bin i."""
    import numpy as np

    matrix = np.zeros((m, n), dtype=np.float32)
    for i in range(m):
        positions = _bin(i, n, m)
        matrix[i, positions.start : positions.stop] = 1.0 / len(positions)
    return matrix


lowering("AdaptiveAvgPool1d", "AdaptiveAvgPool2d")(_adaptive_onnx("Average"))
lowering("AdaptiveMaxPool1d", "AdaptiveMaxPool2d")(_adaptive_onnx("Max"))


def _pad_onnx(mode: str):
    def lower(g, xs, outs, a, key):
        x = xs[0]
        n = len(a["padding"]) // 2
        sides = [_ints(a["padding"][2 * i : 2 * i + 2], 2) for i in range(n)][::-1]  # the axes in order
        leading = [0] * (x.type.rank - n)
        pads = leading + [before for before, _ in sides] + leading + [after for _, after in sides]
        inputs = [x.name, g.ints(pads, "pads")]
        if mode == "constant":
            inputs.append(g.constant(plain(a.get("value", 0)), x.type.dtype, "pad_value"))
        return g.node("Pad", inputs, mode={"replicate": "edge"}.get(mode, mode))

    return lower


for _n in (1, 2):
    for _kind, _mode in _PAD_MODES.items():
        lowering(f"{_kind}Pad{_n}d")(_pad_onnx(_mode))


@lowering("Upsample", "interpolate")
def _resize_onnx(g, xs, outs, a, key):
    """Resize over the spatial axes, with PyTorch's coordinates: nearest takes floor(out / scale), linear modes
    map pixel centres (half_pixel) or corners (align_corners)."""
    x = xs[0]
    axes = list(range(2, x.type.rank))
    if plain(a["mode"]) == "nearest":
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    else:
        corners = "align_corners" if plain(a["align_corners"]) else "half_pixel"
        attrs = {"mode": "linear", "coordinate_transformation_mode": corners}
    if a["size"] is not None:
        inputs = [x.name, "", "", g.ints(_ints(a["size"], len(axes)), "sizes")]
    else:  # the scales, not the sizes: PyTorch maps coordinates by the scale factor it was given
        scales = [float(plain(s)) for s in pair(plain(a["scale_factor"]), len(axes))]
        inputs = [x.name, "", g.constant(scales, "float32", "scales")]
    return g.node("Resize", inputs, axes=axes, **attrs)
