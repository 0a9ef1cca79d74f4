"""Dense, embedding, normalisation, dropout and reshaping layers."""

from __future__ import annotations

import math

from dslc.layers.base import (
    Inferred,
    Op,
    Param,
    ShapeError,
    check_positive,
    expect_float,
    expect_rank,
    helper,
    lowering,
    non_default,
    pycall,
    reads_first_input,
    register,
    resolve_axis,
    static,
)
from dslc.pytext import py_literal
from dslc.shapes import Sym, TensorType, numel


def pair_of(value) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _call_module(module: str, inputs: list[str], init: dict) -> str:
    return f"{module}({', '.join(inputs)})"


# ---------------------------------------------------------------- Linear


def _linear_infer(args, inputs):
    (x,) = inputs
    check_positive(args, "out_features")
    expect_float(x, "Linear")
    if x.rank < 2 or x.rank > 3:
        hint = "flatten first?" if x.rank > 3 else "add a batch dimension"
        raise ShapeError(f"Linear expects [batch, N] or [batch, time, N], got {x.shape_str()}", hint)
    if not isinstance(x.shape[-1], int):
        raise ShapeError(
            f"Linear needs a fixed input size (last dimension), but it is the symbolic size '{x.shape[-1]}'",
            f"pool over it first, e.g. mean(h, dim={x.shape[-1]}) or AdaptiveAvgPool1d(1) -> Flatten",
        )
    in_features = static(x.shape[-1], "input size (last dimension)", "Linear")
    out = x.with_shape((*x.shape[:-1], args["out_features"]))
    return Inferred([out], {"in_features": in_features, **args})


register(
    Op(
        name="Linear",
        doc="Fully connected layer `y = x W^T + b` over the last dimension; the input size is inferred.",
        params=(
            Param("out_features", "int", doc="output size"),
            Param("bias", "bool", True, "learn an additive bias"),
        ),
        infer=_linear_infer,
        category="layer",
        module=lambda a: pycall("nn.Linear", a["in_features"], a["out_features"], **non_default(a, bias=True)),
        forward=_call_module,
        prefix="fc",
        param_count=lambda a: a["in_features"] * a["out_features"] + a["out_features"] * a["bias"],
        weights=lambda a: {
            "weight": (a["out_features"], a["in_features"]),
            **({"bias": (a["out_features"],)} if a["bias"] else {}),
        },
        aliases=("Dense",),
        example="x -> Linear(128)",
        shape_rule="[batch, (time,) in] -> [batch, (time,) out_features]",
    )
)


@lowering("Linear")
def _linear_onnx(g, xs, outs, a, key):
    x = xs[0]
    bias = [g.weight(f"{key}bias")] if a["bias"] else []
    if x.type.rank == 2:  # one Gemm; [batch, time, in] is a MatMul by the transposed weight
        return g.node("Gemm", [x.name, g.weight(f"{key}weight"), *bias], transB=1)
    if g.is_shared(f"{key}weight"):  # tied (an embedding's table): one initializer, so Gemm over the positions
        rows = g.one("Reshape", [x.name, g.ints([-1, int(a["in_features"])])])
        product = g.one("Gemm", [rows, g.weight(f"{key}weight"), *bias], transB=1)
        batch_time = g.one("Slice", [g.one("Shape", [x.name]), g.ints([0]), g.ints([2])])
        return [g.one("Reshape", [product, g.one("Concat", [batch_time, g.ints([-1])], axis=0)])]
    product = g.one("MatMul", [x.name, g.weight(f"{key}weight", transposed=True)])
    return [g.one("Add", [product, *bias])] if bias else [product]


# ---------------------------------------------------------------- Embedding


def _embedding_infer(args, inputs):
    (x,) = inputs
    check_positive(args, "num_embeddings", "embedding_dim")
    if x.dtype not in ("int64", "int32"):
        raise ShapeError(f"Embedding expects integer token ids, got {x.dtype}", "declare the input as int64[...]")
    return Inferred([TensorType("float32", (*x.shape, args["embedding_dim"]))], dict(args))


helper(
    "normal_embedding",
    '''
def normal_embedding(
    num_embeddings: int, embedding_dim: int, std: float, padding_idx: int | None = None
) -> nn.Embedding:
    """nn.Embedding whose vectors start from N(0, std^2), as GPT-2 and LLaMA initialise theirs (std 0.02)."""
    layer = nn.Embedding(num_embeddings, embedding_dim, padding_idx=padding_idx)
    nn.init.normal_(layer.weight, std=std)
    if padding_idx is not None:
        nn.init.zeros_(layer.weight[padding_idx])
    return layer
''',
)


def _embedding_module(a) -> str:
    """`nn.Embedding(n, d)`, or `normal_embedding(n, d, std=...)` with a chosen initial spread."""
    if a.get("std") is None:
        return pycall("nn.Embedding", a["num_embeddings"], a["embedding_dim"], **non_default(a, padding_idx=None))
    return pycall(
        "normal_embedding", a["num_embeddings"], a["embedding_dim"], std=a["std"], **non_default(a, padding_idx=None)
    )


register(
    Op(
        name="Embedding",
        doc="Lookup table of learned vectors, one per token id.",
        params=(
            Param("num_embeddings", "int", doc="vocabulary size"),
            Param("embedding_dim", "int", doc="vector size"),
            Param("padding_idx", "int", None, "id whose vector stays zero"),
            Param("std", "float", None, "initial vectors drawn from N(0, std^2); none: PyTorch's N(0, 1)", low=0.0),
        ),
        infer=_embedding_infer,
        category="layer",
        module=_embedding_module,
        helpers=("normal_embedding",),
        forward=_call_module,
        prefix="embedding",
        param_count=lambda a: a["num_embeddings"] * a["embedding_dim"],
        weights=lambda a: {"weight": (a["num_embeddings"], a["embedding_dim"])},
        id_limit=lambda a: a["num_embeddings"],
        example="tokens -> Embedding(10000, 100)",
        shape_rule="int[...] -> float32[..., embedding_dim]",
    )
)


@lowering("Embedding")
def _embedding_onnx(g, xs, outs, a, key):
    return g.node("Gather", [g.weight(f"{key}weight"), xs[0].name], axis=0)


# ---------------------------------------------------------------- normalisation and dropout


def _batchnorm_infer(ranks, name):
    def infer(args, inputs):
        (x,) = inputs
        expect_float(x, name)
        layout = {(2, 3): "[batch, C] or [batch, C, L]", (4,): "[batch, C, H, W]"}[ranks]
        expect_rank(x, ranks, name, layout)
        return Inferred([x], {"num_features": static(x.shape[1], "channel count", name), **args})

    return infer


for _name, _ranks in (("BatchNorm1d", (2, 3)), ("BatchNorm2d", (4,))):
    register(
        Op(
            name=_name,
            doc="Batch normalisation over the channel dimension (dimension 1); channels are inferred.",
            params=(
                Param("eps", "float", 1e-5, "added to the variance", low=0.0, high=1.0),
                Param("momentum", "float", 0.1, "running-statistics momentum", low=0.0, high=1.0),
                Param("affine", "bool", True, "learn scale and shift"),
            ),
            infer=_batchnorm_infer(_ranks, _name),
            category="layer",
            module=lambda a, n=_name: pycall(
                f"nn.{n}", a["num_features"], **non_default(a, eps=1e-5, momentum=0.1, affine=True)
            ),
            forward=_call_module,
            prefix="bn",
            changes_state=lambda a: True,  # running statistics, updated by each call in training
            param_count=lambda a: 2 * a["num_features"] * a["affine"],
            example=f"x -> {_name}",
            shape_rule="unchanged",
        )
    )


def _scale_and_shift(g, a, key: str, dtype: str) -> list[str]:
    """A channel normalisation's learned scale and shift, or ones and zeros where it learns none (affine=false)."""
    if a["affine"]:
        return [g.weight(f"{key}weight"), g.weight(f"{key}bias")]
    n = a["num_features"]
    return [g.constant([1.0] * n, dtype, "ones"), g.constant([0.0] * n, dtype, "zeros")]


@lowering("BatchNorm1d", "BatchNorm2d")
def _batchnorm_onnx(g, xs, outs, a, key):
    x = xs[0]
    stats = [g.weight(f"{key}running_mean"), g.weight(f"{key}running_var")]
    inputs = [x.name, *_scale_and_shift(g, a, key, x.type.dtype), *stats]
    return g.node("BatchNormalization", inputs, epsilon=float(a["eps"]))


def _trailing_infer(name: str):
    """The shape rule of a normalisation over the last `dims` dimensions, whose sizes it infers."""

    def infer(args, inputs):
        (x,) = inputs
        expect_float(x, name)
        n = args["dims"]
        if not 1 <= n <= x.rank:
            raise ShapeError(f"{name}: dims={n} is out of range for {x.shape_str()}", f"dims is 1 to {x.rank} here")
        shape = tuple(static(d, "normalised size", name) for d in x.shape[-n:])
        return Inferred([x], {"normalized_shape": shape[0] if n == 1 else shape, **args})

    return infer


def _trailing_size(a) -> int:
    return math.prod(pair_of(a["normalized_shape"]))


_DIMS = Param("dims", "int", 1, "how many trailing dimensions to normalise")

register(
    Op(
        name="LayerNorm",
        doc="Layer normalisation over the last `dims` dimensions (sizes inferred).",
        params=(
            _DIMS,
            Param("eps", "float", 1e-5, "added to the variance", low=0.0, high=1.0),
            Param("elementwise_affine", "bool", True, "learn scale and shift"),
            Param("bias", "bool", True, "learn the shift too (with elementwise_affine); false: a scale only"),
        ),
        infer=_trailing_infer("LayerNorm"),
        category="layer",
        module=lambda a: pycall(
            "nn.LayerNorm", a["normalized_shape"], **non_default(a, eps=1e-5, elementwise_affine=True, bias=True)
        ),
        forward=_call_module,
        prefix="norm",
        param_count=lambda a: (1 + a["bias"]) * _trailing_size(a) * a["elementwise_affine"],
        example="x -> LayerNorm(eps=1e-12)",
        shape_rule="unchanged",
    )
)


@lowering("LayerNorm")
def _layernorm_onnx(g, xs, outs, a, key):
    x = xs[0]
    affine = a["elementwise_affine"]
    scale = g.weight(f"{key}weight") if affine else g.constant([1.0] * _trailing_size(a), x.type.dtype, "ones")
    shift = [g.weight(f"{key}bias")] if affine and a["bias"] else []  # LayerNormalization's bias is optional
    return g.node("LayerNormalization", [x.name, scale, *shift], axis=-a["dims"], epsilon=float(a["eps"]))


register(
    Op(
        name="RMSNorm",
        doc="Root-mean-square normalisation over the last `dims` dimensions, `x / sqrt(mean(x^2) + eps) * weight`, "
        "as in LLaMA; no mean subtracted, no bias.",
        params=(
            _DIMS,
            Param(
                "eps", "float", None, "added to the mean square; none: PyTorch's, float32's epsilon", low=0.0, high=1.0
            ),
            Param("elementwise_affine", "bool", True, "learn a scale"),
        ),
        infer=_trailing_infer("RMSNorm"),
        category="layer",
        module=lambda a: pycall(
            "nn.RMSNorm", a["normalized_shape"], **non_default(a, eps=None, elementwise_affine=True)
        ),
        forward=_call_module,
        prefix="norm",
        param_count=lambda a: _trailing_size(a) * a["elementwise_affine"],
        example="x -> RMSNorm(eps=1e-6)",
        shape_rule="unchanged",
    )
)


@lowering("RMSNorm")
def _rmsnorm_onnx(g, xs, outs, a, key):
    """One RMSNormalization (opset 23), which computes in float32 (stash_type 1) as PyTorch does."""
    import numpy as np

    x = xs[0]
    dtype = x.type.dtype
    # PyTorch's default eps is the epsilon of the type it computes in: float32 for float16 and bfloat16 too
    eps = a["eps"] if a["eps"] is not None else 2.0**-52 if dtype == "float64" else 2.0**-23
    if dtype == "float32":
        shape = pair_of(a["normalized_shape"])
        ones = np.ones(shape).tolist()
        scale = g.weight(f"{key}weight") if a["elementwise_affine"] else g.constant(ones, dtype, "ones")
        return g.node("RMSNormalization", [x.name, scale], axis=-a["dims"], epsilon=float(eps), stash_type=1)
    # other types written out: float64 would be computed in float32 by RMSNormalization's stash_type
    axes = g.ints(list(range(-a["dims"], 0)), "axes")
    mean_square = g.one("ReduceMean", [g.one("Mul", [x.name, x.name]), axes], keepdims=1)
    rms = g.one("Sqrt", [g.one("Add", [mean_square, g.constant(float(eps), dtype, "eps")])])
    normed = g.one("Div", [x.name, rms])
    return g.node("Mul", [normed, g.weight(f"{key}weight")]) if a["elementwise_affine"] else [normed]


def _channels(x: TensorType, name: str) -> int:
    """The channel count of [batch, C, ...] (dimension 1, fixed)."""
    if x.rank < 2:
        raise ShapeError(f"{name} expects [batch, C, ...], got {x.shape_str()}", "add a batch dimension")
    return static(x.shape[1], "channel count (dimension 1)", name)


def _channel_shape(channels: int, x: TensorType) -> tuple[int, ...]:
    """A per-channel [C] as [C, 1, ...], which broadcasts over [batch, C, ...]."""
    return (int(channels), *[1] * (x.rank - 2))


def _one_value(name: str, x: TensorType, what: str) -> str:
    """`Inferred.at_least`'s why of a normalisation over positions: PyTorch refuses a single position."""
    positions = numel(x.shape[2:])
    return f"{what} is normalised over its {positions} positions of {x.shape_str()}, which must be at least 2"


def _groupnorm_infer(args, inputs):
    (x,) = inputs
    check_positive(args, "num_groups")
    expect_float(x, "GroupNorm")
    channels = _channels(x, "GroupNorm")
    if channels % args["num_groups"]:
        raise ShapeError(
            f"GroupNorm: {channels} channels do not split into {args['num_groups']} groups",
            "num_groups must divide the channel count (dimension 1)",
        )
    per_group = channels // args["num_groups"]
    if per_group * numel(x.shape[2:]) == 1:  # PyTorch refuses it at batch size 1
        raise ShapeError(
            f"GroupNorm({args['num_groups']}): each group of {x.shape_str()} holds one value per sample",
            "use fewer groups",
        )
    at_least = []
    if per_group == 1 and x.rank > 2:  # one channel a group: the positions must be more than one
        at_least = [(numel(x.shape[2:]), 2, _one_value("GroupNorm", x, "a group of one channel"))]
    return Inferred([x], {"num_channels": channels, **args}, at_least)


register(
    Op(
        name="GroupNorm",
        doc="Group normalisation: the channels (dimension 1, inferred) in `num_groups` groups, each normalised over "
        "its channels and the remaining dimensions; independent of the batch.",
        params=(
            Param("num_groups", "int", doc="groups of channels; must divide the channel count"),
            Param("eps", "float", 1e-5, "added to the variance", low=0.0, high=1.0),
            Param("affine", "bool", True, "learn a scale and shift per channel"),
        ),
        infer=_groupnorm_infer,
        category="layer",
        module=lambda a: pycall(
            "nn.GroupNorm", a["num_groups"], a["num_channels"], **non_default(a, eps=1e-5, affine=True)
        ),
        forward=_call_module,
        prefix="norm",
        param_count=lambda a: 2 * a["num_channels"] * a["affine"],
        example="x -> GroupNorm(8)",
        shape_rule="unchanged; [batch, C, ...] with C a multiple of num_groups",
    )
)


@lowering("GroupNorm")
def _groupnorm_onnx(g, xs, outs, a, key):
    """Each group is one channel of x reshaped to [batch, groups, -1] for InstanceNormalization, then the per-channel
    affine. Not opset 21's GroupNormalization: onnx 1.23's shape inference gives its output no type (onnx#7157), so
    strict inference of the graph fails."""
    x = xs[0]
    groups, dtype = int(a["num_groups"]), x.type.dtype
    grouped = g.one("Reshape", [x.name, g.ints([0, groups, -1])])
    ones, zeros = g.constant([1.0] * groups, dtype, "ones"), g.constant([0.0] * groups, dtype, "zeros")
    normed = g.one("InstanceNormalization", [grouped, ones, zeros], epsilon=float(a["eps"]))
    y = g.one("Reshape", [normed, g.one("Shape", [x.name])])
    if not a["affine"]:
        return [y]
    shape = _channel_shape(a["num_channels"], x.type)
    scaled = g.one("Mul", [y, g.weight(f"{key}weight", shape=shape)])
    return g.node("Add", [scaled, g.weight(f"{key}bias", shape=shape)])


def _instancenorm_infer(rank: int, name: str):
    layout = {3: "[batch, C, L]", 4: "[batch, C, H, W]"}[rank]

    def infer(args, inputs):
        (x,) = inputs
        expect_float(x, name)
        expect_rank(x, (rank,), name, layout)
        if numel(x.shape[2:]) == 1:  # PyTorch refuses it
            raise ShapeError(f"{name} normalises over positions, and {x.shape_str()} has one per channel")
        at_least = [(numel(x.shape[2:]), 2, _one_value(name, x, "each channel"))]
        return Inferred([x], {"num_features": _channels(x, name), **args}, at_least)

    return infer


for _name, _rank in (("InstanceNorm1d", 3), ("InstanceNorm2d", 4)):
    register(
        Op(
            name=_name,
            doc="Instance normalisation: each channel of each sample normalised over its own positions; channels "
            "(dimension 1) are inferred. PyTorch's defaults: no affine, no running statistics.",
            params=(
                Param("eps", "float", 1e-5, "added to the variance", low=0.0, high=1.0),
                Param("momentum", "float", 0.1, "running-statistics momentum", low=0.0, high=1.0),
                Param("affine", "bool", False, "learn a scale and shift per channel"),
                Param("track_running_stats", "bool", False, "keep running statistics and use them at inference"),
            ),
            infer=_instancenorm_infer(_rank, _name),
            category="layer",
            module=lambda a, n=_name: pycall(
                f"nn.{n}",
                a["num_features"],
                **non_default(a, eps=1e-5, momentum=0.1, affine=False, track_running_stats=False),
            ),
            forward=_call_module,
            prefix="norm",
            param_count=lambda a: 2 * a["num_features"] * a["affine"],
            example=f"x -> {_name}(affine=true)",
            shape_rule="unchanged",
        )
    )


@lowering("InstanceNorm1d", "InstanceNorm2d")
def _instancenorm_onnx(g, xs, outs, a, key):
    if a["track_running_stats"]:  # at inference the running statistics normalise: batch normalisation
        return _batchnorm_onnx(g, xs, outs, a, key)
    x = xs[0]
    inputs = [x.name, *_scale_and_shift(g, a, key, x.type.dtype)]
    return g.node("InstanceNormalization", inputs, epsilon=float(a["eps"]))


def _prelu_infer(args, inputs):
    (x,) = inputs
    check_positive(args, "num_parameters")
    expect_float(x, "PReLU")
    n = args["num_parameters"]
    if n != 1:
        channels = _channels(x, "PReLU")
        if n != channels:
            raise ShapeError(
                f"PReLU: num_parameters={n} must be 1 or the channel count {channels} (dimension 1 of {x.shape_str()})",
                f"PReLU({channels}) learns a slope per channel, PReLU one slope for all",
            )
    return Inferred([x], dict(args))


register(
    Op(
        name="PReLU",
        doc="x if x > 0 else a * x, with the slope `a` learned: one for all channels, or one per channel "
        "(dimension 1).",
        params=(
            Param("num_parameters", "int", 1, "how many slopes: 1 or the channel count"),
            Param("init", "float", 0.25, "the slopes' initial value", low=-1e3, high=1e3),
        ),
        infer=_prelu_infer,
        category="layer",
        module=lambda a: pycall("nn.PReLU", **non_default(a, num_parameters=1, init=0.25)),
        forward=_call_module,
        prefix="prelu",
        param_count=lambda a: a["num_parameters"],
        example="x -> PReLU(64)",
        shape_rule="unchanged",
    )
)


@lowering("PReLU")
def _prelu_onnx(g, xs, outs, a, key):
    x, n = xs[0], a["num_parameters"]
    slope = g.weight(f"{key}weight", shape=_channel_shape(n, x.type) if n != 1 else None)  # [1] broadcasts as is
    return g.node("PRelu", [x.name, slope])


def _dropout_infer(args, inputs):
    if not 0.0 <= args["p"] < 1.0:
        raise ShapeError(f"Dropout probability must be in [0, 1), got {args['p']}")
    return Inferred([inputs[0]], dict(args))


register(
    Op(
        name="Dropout",
        doc="Zeroes elements with probability `p` during training; identity at inference and in ONNX.",
        params=(Param("p", "float", 0.5, "drop probability"),),
        infer=_dropout_infer,
        category="layer",
        module=lambda a: pycall("nn.Dropout", **non_default(a, p=0.5)),
        forward=_call_module,
        prefix="dropout",
        changes_state=lambda a: True,  # a draw per call in training
        example="x -> Dropout(0.1)",
        shape_rule="unchanged",
    )
)


@lowering("Dropout")
def _identity_onnx(g, xs, outs, a, key):
    return [xs[0].name]  # dropout is off at inference: no node


# ---------------------------------------------------------------- reshaping


def _flatten_infer(args, inputs):
    (x,) = inputs
    start = resolve_axis(args["start_dim"], x, "Flatten")
    end = resolve_axis(args["end_dim"], x, "Flatten")
    if start > end:
        raise ShapeError(f"Flatten: start_dim {start} is after end_dim {end}")
    merged = numel(x.shape[start : end + 1])
    return Inferred([x.with_shape((*x.shape[:start], merged, *x.shape[end + 1 :]))], dict(args))


def _flatten_src(a):
    return pycall("nn.Flatten", **non_default(a, start_dim=1, end_dim=-1))


register(
    Op(
        name="Flatten",
        doc="Merges dimensions `start_dim..end_dim` into one (by default all but the batch dimension).",
        params=(
            Param("start_dim", "axis", 1, "first dimension to merge"),
            Param("end_dim", "axis", -1, "last dimension to merge"),
        ),
        infer=_flatten_infer,
        category="shape",
        module=_flatten_src,
        functional=lambda xs, a: (
            f"{xs[0]}.flatten({py_literal(a['start_dim'])}, {py_literal(a['end_dim'])})"
            if (a["start_dim"], a["end_dim"]) != (1, -1)
            else f"{xs[0]}.flatten(1)"
        ),
        prefix="flatten",
        aliases=("flatten",),
        example="x -> Flatten",
        shape_rule="[batch, C, H, W] -> [batch, C*H*W]",
    )
)


@lowering("Flatten")
def _flatten_onnx(g, xs, outs, a, key):
    from dslc.lower_onnx import reshape

    x = xs[0]
    start = resolve_axis(a["start_dim"], x.type, "Flatten")
    end = resolve_axis(a["end_dim"], x.type, "Flatten")
    target = [("size", i) for i in range(start)] + [-1]
    target += [d if isinstance(d, int) else ("size", i) for i, d in enumerate(x.type.shape) if i > end]
    return [reshape(g, x, target)]


def _reshape_infer(args, inputs):
    (x,) = inputs
    shape = list(args["shape"])
    if not shape:
        raise ShapeError("Reshape needs the target shape, e.g. Reshape(batch, 1, 28, 28)")
    total = numel(x.shape)
    free = [i for i, d in enumerate(shape) if d == -1]
    if len(free) > 1:
        raise ShapeError("Reshape: at most one dimension may be -1")
    known = numel([d for d in shape if not (isinstance(d, int) and d == -1)])
    if free:
        inferred = _exact_div(total, known)
        if inferred is None:
            raise ShapeError(
                f"Reshape: cannot infer -1, {x.shape_str()} has {total} elements, not a multiple of {known}"
            )
        shape[free[0]] = inferred
    elif known != total:
        raise ShapeError(
            f"Reshape: {x.shape_str()} has {total} elements, target [{', '.join(map(str, shape))}] has {known}"
        )
    out = x.with_shape(shape)
    # In code, keep symbolic sizes dynamic by copying them from the input at run time.
    return Inferred([out], {"target": [_dim_source(d, x) for d in args["shape"]]})


def _exact_div(total, known):
    if isinstance(known, int) and known == 0:
        return None
    if isinstance(total, int) and isinstance(known, int):
        return total // known if total % known == 0 else None
    if isinstance(known, int):
        result = Sym.lift(total) // known
        return None if isinstance(result, Sym) and any("//" in a for a in result.atoms()) else result
    # Symbolic divisor: divide out matching monomials (e.g. batch*784 / batch).
    for atom in known.atoms() if isinstance(known, Sym) else ():
        if isinstance(total, Sym) and all(atom in m for m in total.terms):
            reduced = Sym({tuple(a for i, a in enumerate(m) if i != m.index(atom)): c for m, c in total.terms.items()})
            rest_known = Sym(
                {tuple(a for i, a in enumerate(m) if i != m.index(atom)): c for m, c in known.terms.items()}
            )
            return _exact_div(reduced.simplify(), rest_known.simplify())
    return None


def _dim_source(d, x: TensorType):
    """-1 and fixed sizes stay literal; a symbolic size becomes `x.size(i)` of a matching input dim."""
    if isinstance(d, int):
        return d
    for i, xd in enumerate(x.shape):
        if xd == d:
            return ("size", i)
    return -1


def _reshape_src(xs, a):
    parts = [f"{xs[0]}.size({t[1]})" if isinstance(t, tuple) else py_literal(t) for t in a["target"]]
    return f"{xs[0]}.reshape({', '.join(parts)})"


register(
    Op(
        name="Reshape",
        doc="Gives the tensor a new shape with the same number of elements; one size may be -1.",
        params=(Param("shape", "dims", (), "target sizes, symbolic names allowed (batch, time)"),),
        infer=_reshape_infer,
        category="shape",
        functional=_reshape_src,
        reads_twice=reads_first_input,
        prefix="reshape",
        aliases=("reshape",),
        example="z -> Reshape(batch, 1, 28, 28)",
        shape_rule="[...] -> shape",
    )
)


@lowering("Reshape")
def _reshape_onnx(g, xs, outs, a, key):
    from dslc.lower_onnx import reshape

    return [reshape(g, xs[0], a["target"])]


def _permute_infer(args, inputs):
    (x,) = inputs
    dims = [resolve_axis(d, x, "Permute") for d in args["dims"]]
    if sorted(dims) != list(range(x.rank)):
        raise ShapeError(f"Permute needs a permutation of 0..{x.rank - 1} for {x.shape_str()}, got {args['dims']}")
    return Inferred([x.with_shape([x.shape[d] for d in dims])], {"dims": dims})


register(
    Op(
        name="Permute",
        doc="Reorders dimensions, e.g. Permute(0, 2, 1) swaps the last two of a rank-3 tensor.",
        params=(Param("dims", "axes", (), "the new order"),),
        infer=_permute_infer,
        category="shape",
        functional=lambda xs, a: f"{xs[0]}.permute({', '.join(map(py_literal, a['dims']))})",
        prefix="permute",
        aliases=("permute",),
        example="x -> Permute(0, 2, 1)",
        shape_rule="dims reordered",
    )
)


@lowering("Permute")
def _permute_onnx(g, xs, outs, a, key):
    return g.node("Transpose", [xs[0].name], perm=[int(d) for d in a["dims"]])


register(
    Op(
        name="Identity",
        doc="Returns its input unchanged.",
        params=(),
        infer=lambda a, xs: Inferred([xs[0]], {}),
        category="shape",
        module=lambda a: "nn.Identity()",
        functional=lambda xs, a: xs[0],
        prefix="identity",
        example="x -> Identity",
        shape_rule="unchanged",
    )
)


lowering("Identity")(_identity_onnx)
