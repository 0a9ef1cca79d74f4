"""The layers of today's decoder-only language models, as HuggingFace writes them.

`attention` is scaled dot-product attention as a function of already projected queries, keys and values
(so a spec keeps GPT-2's fused `c_attn` or LLaMA's `q_proj`/`k_proj`/`v_proj` under their own names), with
grouped-query heads (`kv_heads`) and a causal mask. `rotary` is LLaMA's rotary position embedding in
HuggingFace's rotate-half layout. `Conv1D` is GPT-2's linear layer, whose weight is stored `[in, out]`.

A causal `attention` is where a decoder's KV cache lives: dslc.decoding lowers it with past keys and values
(`past_key_values.N.key`) and `rotary` with positions that start after them.
"""

from __future__ import annotations

import math
from typing import Any

from dslc.layers.base import (
    Inferred,
    Op,
    Param,
    ShapeError,
    check_positive,
    differs,
    expect_float,
    expect_rank,
    helper,
    lowering,
    pycall,
    register,
    static,
)
from dslc.pytext import py_literal
from dslc.traced import plain

# ---------------------------------------------------------------- Conv1D: a linear layer stored [in, out]

helper(
    "Conv1D",
    '''
class Conv1D(nn.Module):
    """A linear layer whose weight is stored [in, out] (GPT-2's layout): y = x W + b."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(nn.init.normal_(torch.empty(in_features, out_features), std=0.02))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight
        return y + self.bias if self.bias is not None else y
''',
)


def _conv1d_linear_infer(args, inputs):
    (x,) = inputs
    check_positive(args, "out_features")
    expect_float(x, "Conv1D")
    expect_rank(x, (2, 3), "Conv1D", "[batch, N] or [batch, time, N]")
    in_features = static(x.shape[-1], "input size (last dimension)", "Conv1D")
    return Inferred([x.with_shape((*x.shape[:-1], args["out_features"]))], {"in_features": in_features, **args})


register(
    Op(
        name="Conv1D",
        doc="GPT-2's linear layer: `y = x W + b` over the last dimension with the weight stored [in, out] "
        "(HuggingFace's `Conv1D`; not a convolution: see Conv1d for that).",
        params=(
            Param("out_features", "int", doc="output size"),
            Param("bias", "bool", True, "learn an additive bias"),
        ),
        infer=_conv1d_linear_infer,
        category="layer",
        module=lambda a: pycall(
            "Conv1D", a["in_features"], a["out_features"], **({} if a["bias"] else {"bias": False})
        ),
        prefix="proj",
        helpers=("Conv1D",),
        param_count=lambda a: a["in_features"] * a["out_features"] + a["out_features"] * a["bias"],
        weights=lambda a: {
            "weight": (a["in_features"], a["out_features"]),
            **({"bias": (a["out_features"],)} if a["bias"] else {}),
        },
        example="qkv = x -> c_attn: Conv1D(3 * d)",
        shape_rule="[batch, (time,) in] -> [batch, (time,) out_features]; weight [in, out]",
    )
)


@lowering("Conv1D")
def _conv1d_linear_onnx(g, xs, outs, a, key):
    product = g.one("MatMul", [xs[0].name, g.weight(f"{key}weight")])
    return [g.one("Add", [product, g.weight(f"{key}bias")])] if a["bias"] else [product]


# ---------------------------------------------------------------- attention

helper(
    "multi_head_attention",
    '''
def multi_head_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    kv_heads: int | None = None,
    causal: bool = False,
    dropout: float = 0.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention over [batch, time, heads * head_size] tensors. With kv_heads < heads, each
    key and value head serves heads // kv_heads query heads (grouped-query attention). A mask broadcasts to
    [batch, heads, queries, keys]: true where a query may look (bool), or added to the scores (float)."""
    kv_heads = kv_heads or heads
    batch, length = q.size(0), q.size(1)
    q = q.reshape(batch, length, heads, -1).transpose(1, 2)
    k = k.reshape(batch, k.size(1), kv_heads, -1).transpose(1, 2)
    v = v.reshape(batch, v.size(1), kv_heads, -1).transpose(1, 2)
    if kv_heads != heads:
        k, v = k.repeat_interleave(heads // kv_heads, dim=1), v.repeat_interleave(heads // kv_heads, dim=1)
    if mask is not None and causal:  # scaled_dot_product_attention takes one or the other: both in the mask
        seen = torch.ones(q.size(2), k.size(2), dtype=torch.bool, device=q.device).tril()
        mask = mask & seen if mask.dtype == torch.bool else mask.masked_fill(~seen, float("-inf"))
        causal = False
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)
    return out.transpose(1, 2).reshape(batch, length, -1)
''',
)


def _attention_infer(args, inputs):
    q, k, v = inputs[:3]
    for t in inputs[:3]:
        expect_float(t, "attention")
        expect_rank(t, (3,), "attention", "[batch, time, heads * head_size]")
    check_positive(args, "heads")
    heads = args["heads"]
    kv_heads = heads if args["kv_heads"] is None else args["kv_heads"]
    if args["kv_heads"] is not None:
        check_positive(args, "kv_heads")
    width = static(q.shape[2], "query size", "attention")
    if width % heads:
        raise ShapeError(f"attention: {heads} heads do not divide the query size {width}")
    if heads % kv_heads:
        raise ShapeError(f"attention: {kv_heads} key/value heads do not divide the {heads} query heads")
    head_size = width // heads
    for name, t in (("keys", k), ("values", v)):
        if t.shape[2] != kv_heads * head_size:
            raise ShapeError(
                f"attention: {name} {t.shape_str()} need {kv_heads} heads of {head_size} "
                f"(size {kv_heads * head_size}) for queries {q.shape_str()} with {heads} heads"
            )
    if k.shape[1] != v.shape[1]:
        raise ShapeError(f"attention: keys {k.shape_str()} and values {v.shape_str()} differ in length")
    if not q.shape[0] == k.shape[0] == v.shape[0]:
        raise ShapeError(f"attention: queries {q.shape_str()}, keys and values differ in batch size")
    if args["causal"] and q.shape[1] != k.shape[1]:
        raise ShapeError("attention: causal=true needs queries and keys of the same length")
    if len(inputs) == 4:
        _check_mask(inputs[3], (q.shape[0], args["heads"], q.shape[1], k.shape[1]))
    init = {**args, "kv_heads": args["kv_heads"] if args["kv_heads"] != heads else None, "head_size": head_size}
    return Inferred([q], init)


def _check_mask(mask, scores: tuple) -> None:
    """A mask broadcasts to the scores [batch, heads, queries, keys]: bool (true: may attend) or float (added)."""
    from dslc.shapes import broadcast

    if mask.dtype != "bool" and not mask.is_float:
        raise ShapeError(f"attention: a mask is bool or float, got {mask.dtype}")
    if not 2 <= mask.rank <= 4 or broadcast(mask.shape, scores) != scores:
        shown = "[" + ", ".join(str(d) for d in scores) + "]"
        raise ShapeError(
            f"attention: the mask {mask.shape_str()} does not broadcast to the scores {shown}",
            "a padding mask over the keys is [batch, 1, 1, keys]",
        )


def _attention_functional(xs, a) -> str:
    extra = {"kv_heads": a["kv_heads"]} if a["kv_heads"] is not None else {}
    if differs(a["causal"], False):  # a block parameter is passed on as it is
        extra["causal"] = a["causal"]
    parts = [*xs[:3], f"heads={py_literal(a['heads'])}", *(f"{k}={py_literal(v)}" for k, v in extra.items())]
    if differs(a["dropout"], 0.0):
        parts.append(f"dropout={py_literal(a['dropout'])} if self.training else 0.0")
    if len(xs) == 4:
        parts.append(f"mask={xs[3]}")
    return f"multi_head_attention({', '.join(parts)})"


register(
    Op(
        name="attention",
        doc="Scaled dot-product attention softmax(q k^T / sqrt(head_size)) v of projected queries, keys and "
        "values [batch, time, heads * head_size], split into heads; `kv_heads` fewer key/value heads for grouped-"
        "query (or, with 1, multi-query) attention; `causal=true` for a decoder, whose exported KV-cache graphs "
        "keep this layer's keys and values. A fourth input masks the scores [batch, heads, queries, keys] it "
        "broadcasts to: bool (true where a query may look) or float (added, e.g. -10000 at padding).",
        params=(
            Param("heads", "int", doc="number of query heads (must divide the query size)"),
            Param("kv_heads", "int", None, "number of key/value heads (default: heads); must divide heads"),
            Param("causal", "bool", False, "mask future positions (decoder self-attention)"),
            Param("dropout", "float", 0.0, "dropout on the attention weights, in training", low=0.0, high=1.0),
        ),
        infer=_attention_infer,
        category="function",
        functional=_attention_functional,
        inputs=(3, 4),
        prefix="attended",
        helpers=("multi_head_attention",),
        example="a = attention(q, k, v, heads=32, kv_heads=8, causal=true)",
        shape_rule="[batch, Tq, H*d], [batch, Tk, G*d], [batch, Tk, G*d] (, mask) -> [batch, Tq, H*d]",
    )
)


def split_heads(g, x, heads: int, perm=(0, 2, 1, 3)) -> str:
    """[batch, time, heads * d] -> [batch, heads, time, d]."""
    return g.one("Transpose", [g.one("Reshape", [x, g.ints([0, 0, heads, -1])])], perm=list(perm))


def repeat_heads(g, x: str, kv_heads: int, groups: int, head_size: int) -> str:
    """[batch, kv_heads, time, d] -> [batch, kv_heads * groups, time, d], each head repeated `groups` times in
    place (torch's repeat_interleave along the heads)."""
    if groups == 1:
        return x
    wide = g.one("Expand", [g.one("Unsqueeze", [x, g.ints([2])]), g.ints([1, 1, groups, 1, 1])])  # [b, G, r, t, d]
    return g.one("Reshape", [wide, g.ints([0, kv_heads * groups, -1, head_size])])


def causal_mask(g, queries: str, keys: str, cached: bool) -> list[str]:
    """A bool [Tq, Tk] mask of the keys each query must not see, and -inf: query i sits at position
    Tk - Tq + i (after the cached keys, if any), and sees the keys up to it."""
    from dslc.onnx_graph import ONNX_DTYPES, fill_value

    def length(t: str) -> str:
        return g.one("Gather", [g.one("Shape", [t]), g.ints([2])], axis=0)

    tq, tk = length(queries), length(keys)
    ones = g.one("ConstantOfShape", [g.one("Concat", [tq, tk], axis=0)], value=fill_value(1, "int64"))
    offset = g.constant(1, "int64", "k")
    if cached:
        offset = g.one("Add", [g.one("Sub", [g.one("Squeeze", [tk]), g.one("Squeeze", [tq])]), offset])
    future = g.one("Trilu", [ones, offset], upper=1)
    return [g.one("Cast", [future], to=ONNX_DTYPES["bool"]), g.constant(float("-inf"), "float32", "minus_inf")]


def scaled_attention(
    g, q: str, k: str, v: str, heads: int, kv_heads: int, head_size: int, causal: tuple | None, mask: Any = None
) -> str:
    """softmax(q k^T) v over [batch, heads, time, d] (q already scaled), merged back to [batch, time, heads * d].
    `causal` identifies the mask, None for none: layers whose queries and keys have the same lengths share one."""
    groups = heads // kv_heads
    keys = repeat_heads(g, k, kv_heads, groups, head_size)
    scores = g.one("MatMul", [q, g.one("Transpose", [keys], perm=[0, 1, 3, 2])])
    if mask is not None:  # bool: true where a query may look; float: added
        if mask.type.dtype == "bool":
            minus_inf = g.constant(float("-inf"), "float32", "minus_inf")
            scores = g.one("Where", [mask.name, scores, minus_inf])
        else:
            scores = g.one("Add", [scores, mask.name])
    if causal is not None:
        future, minus_inf = g.memo(("causal", *causal), lambda: causal_mask(g, q, k, cached=causal[-1]))
        scores = g.one("Where", [future, minus_inf, scores])
    weights = g.one("Softmax", [scores], axis=-1)
    if mask is not None:  # a query whose every key is masked attends to nothing (0), as PyTorch's SDPA answers
        weights = g.one("Where", [g.one("IsNaN", [weights]), g.constant(0.0, "float32", "zero"), weights])
    merged = g.one(
        "Transpose", [g.one("MatMul", [weights, repeat_heads(g, v, kv_heads, groups, head_size)])], perm=[0, 2, 1, 3]
    )
    return g.one("Reshape", [merged, g.ints([0, 0, -1])])


@lowering("attention")
def _attention_onnx(g, xs, outs, a, key):
    heads = int(plain(a["heads"]))
    kv_heads = int(plain(a["kv_heads"])) if a["kv_heads"] is not None else heads
    head_size = int(plain(a["head_size"]))
    mask = xs[3] if len(xs) == 4 else None
    causal = bool(plain(a["causal"]))
    if fusable(xs, mask):
        return [fused_attention(g, xs[:3], [x.name for x in xs[:3]], heads, kv_heads, head_size, causal, mask)]
    scale = g.constant(1.0 / math.sqrt(head_size), "float32", "scale")
    q = split_heads(g, g.one("Mul", [xs[0].name, scale]), heads)
    k, v = split_heads(g, xs[1].name, kv_heads), split_heads(g, xs[2].name, kv_heads)
    if a["causal"] and g.cache is not None:
        if mask is not None:
            g.cache.require_static(xs, "a masked causal attention")  # its mask would have to grow with the cache
        k, v = g.cache.attend(g, xs[:3], k, v, kv_heads, head_size)
    elif g.cache is not None:
        g.cache.require_static(xs[1:], "attention without causal=true")
    causal_key = mask_key(g, xs, k, causal)
    return [scaled_attention(g, q, k, v, heads, kv_heads, head_size, causal_key, mask)]


def fusable(inputs: list, mask: Any) -> bool:
    """Whether one ONNX Attention (opset 23) computes this attention as PyTorch does: float32 queries, keys and
    values, and a bool mask or a float32 one. onnxruntime's CPU kernel then matches PyTorch's SDPA in every case
    dslc's tests check: grouped-query heads, causal (with the past, aligned to the last key), bool and additive
    masks, and a query whose every key is masked (a zero row, as SDPA gives). Other dtypes keep the written-out
    lowering (its constants are float32, and onnxruntime's Attention kernels are float and float16 only)."""
    if any(x.type.dtype != "float32" for x in inputs[:3]):
        return False
    return mask is None or mask.type.dtype in ("bool", "float32")


def fused_attention(
    g, inputs: list, qkv: list[str], heads: int, kv_heads: int, head_size: int, causal: bool, mask: Any = None
) -> str:
    """One Attention node on [batch, time, heads * head_size] queries, keys and values (`qkv`, projected from the
    layer's `inputs`), its result [batch, time, heads * head_size]. In a decoder's KV-cache graphs a causal one
    reads `past_key_values.N` and writes `present.N` itself; with past keys, is_causal aligns each query to the
    last key (query i sees the past and the keys up to i), which is the cached decoder's mask."""
    names = [*qkv, ""]
    outputs: int | list[str] = 1
    if causal and g.cache is not None:
        if mask is not None:
            g.cache.require_static(inputs, "a masked causal attention")  # its mask would have to grow with the cache
        cached = g.cache.past(g, inputs, kv_heads, head_size)
        if cached is not None:
            names += cached[:2]
            outputs = [g.fresh("attention"), *cached[2:]]
    elif g.cache is not None:
        g.cache.require_static(inputs[1:], "attention without causal=true")
    if mask is not None:
        names[3] = full_mask(g, mask, inputs[0], inputs[1], qkv[0], qkv[1])
    while names[-1] == "":
        names.pop()
    attributes = {"q_num_heads": heads, "kv_num_heads": kv_heads, "scale": 1.0 / math.sqrt(head_size)}
    return g.node("Attention", names, outputs, is_causal=1 if causal else None, **attributes)[0]


def full_mask(g, mask: Any, queries: Any, keys: Any, q: str, k: str) -> str:
    """The mask with its last two dimensions [queries, keys] in full: onnxruntime's Attention does not broadcast
    them (a padding mask [batch, 1, 1, keys] is refused), so they are expanded, once per mask and lengths."""
    tq, tk = queries.type.shape[1], keys.type.shape[1]
    shape = mask.type.shape
    if mask.type.rank >= 2 and str(shape[-2]) == str(tq) and str(shape[-1]) == str(tk):
        return mask.name

    def expand() -> list[str]:
        lengths = [g.length(size, name, 1) for size, name in ((tq, q), (tk, k))]
        return [g.one("Expand", [mask.name, g.one("Concat", lengths, axis=0)])]

    return g.memo(("full_mask", mask.name, str(tq), str(tk)), expand)[0]


def mask_key(g, inputs: list, keys: str, causal: bool) -> tuple | None:
    """What a causal mask depends on: the queries' and keys' lengths, and whether cached keys come first."""
    if not causal:
        return None
    cached = g.cache is not None and keys.startswith("present.")
    return (str(inputs[0].type.shape[1]), str(inputs[1].type.shape[1]), cached)


# ---------------------------------------------------------------- rotary position embedding

helper(
    "rotary_embedding",
    '''
def rotary_embedding(x: torch.Tensor, heads: int, base: float = 10000.0) -> torch.Tensor:
    """Rotates each head's feature pairs (i, i + d/2) of [batch, time, heads * d] by angles position * base^(-2i/d)
    (LLaMA's rotary position embedding, HuggingFace's rotate-half layout)."""
    batch, length = x.size(0), x.size(1)
    h = x.reshape(batch, length, heads, -1)
    half = h.size(-1) // 2
    inv_freq = 1.0 / base ** (torch.arange(0, 2 * half, 2, device=x.device, dtype=torch.float32) / (2 * half))
    angles = torch.arange(length, device=x.device, dtype=torch.float32)[:, None] * inv_freq
    cos, sin = angles.cos().repeat(1, 2)[:, None], angles.sin().repeat(1, 2)[:, None]  # [time, 1, d]
    rotated = torch.cat((-h[..., half:], h[..., :half]), dim=-1)
    return (h * cos + rotated * sin).to(x.dtype).reshape(batch, length, -1)
''',
)


def _rotary_infer(args, inputs):
    (x,) = inputs
    expect_float(x, "rotary")
    expect_rank(x, (3,), "rotary", "[batch, time, heads * head_size]")
    check_positive(args, "heads")
    width = static(x.shape[2], "feature size", "rotary")
    if width % args["heads"] or (width // args["heads"]) % 2:
        raise ShapeError(f"rotary: {args['heads']} heads of an even size do not divide the feature size {width}")
    if not plain(args["base"]) > 0:
        raise ShapeError(f"rotary: base must be positive, got {args['base']}")
    return Inferred([x], {**args, "head_size": width // args["heads"]})


def _rotary_functional(xs, a) -> str:
    base = f", base={py_literal(a['base'])}" if differs(a["base"], 10000.0) else ""
    return f"rotary_embedding({xs[0]}, heads={py_literal(a['heads'])}{base})"


register(
    Op(
        name="rotary",
        doc="Rotary position embedding (RoPE, LLaMA's) of queries or keys [batch, time, heads * head_size]: each "
        "head's feature pairs (i, i + head_size/2) rotate by position * base^(-2i/head_size), HuggingFace's "
        "rotate-half layout; positions continue after the cached keys in KV-cache graphs.",
        params=(
            Param("heads", "int", doc="number of heads the features split into"),
            Param("base", "float", 10000.0, "the frequencies' base (LLaMA's rope_theta)"),
        ),
        infer=_rotary_infer,
        category="function",
        functional=_rotary_functional,
        prefix="rotated",
        helpers=("rotary_embedding",),
        example="q = x -> q_proj: Linear(d, bias=false) -> rotary(heads=32)",
        shape_rule="[batch, time, H*d] -> [batch, time, H*d] (d even)",
    )
)


@lowering("rotary")
def _rotary_onnx(g, xs, outs, a, key):
    """One RotaryEmbedding (opset 23, rotate-half: interleaved=0) on [batch, time, heads * d] float32, its cos and
    sin [batch, time, d / 2] computed once per length (onnxruntime broadcasts neither batch nor position_ids);
    other dtypes written out (Reshape, Split, Neg, Concat, Mul, Add)."""
    import numpy as np

    heads, size = int(plain(a["heads"])), int(plain(a["head_size"]))
    x = xs[0].name
    batch, time = xs[0].type.shape[0], xs[0].type.shape[1]
    fused = xs[0].type.dtype == "float32"

    def tables() -> list[str]:
        """cos and sin of the positions of x's time axis: [batch, time, head_size / 2] (fused), or [time, 1,
        head_size] (written out)."""
        first = g.cache.past_length(g) if stepped else g.constant(0, "int64", "zero")
        length = g.one("Squeeze", [g.length(time, x, 1)])
        end = g.one("Add", [first, length]) if stepped else length
        places = g.one("Cast", [g.one("Range", [first, end, g.constant(1, "int64", "one")])], to=1)
        inv_freq = 1.0 / float(plain(a["base"])) ** (np.arange(0, size, 2, dtype=np.float32) / size)
        angles = g.one("Mul", [g.one("Unsqueeze", [places, g.ints([1])]), g.constant(inv_freq, "float32", "inv_freq")])
        if fused:
            shape = g.one("Concat", [g.length(batch, x, 0), g.length(time, x, 1), g.ints([size // 2])], axis=0)
            return [g.one("Expand", [g.one(f, [angles]), shape]) for f in ("Cos", "Sin")]
        doubled = g.one("Concat", [angles, angles], axis=-1)
        return [g.one("Unsqueeze", [g.one(f, [doubled]), g.ints([1])]) for f in ("Cos", "Sin")]

    stepped = g.cache is not None and g.cache.is_stepped(x)
    memo_key = ("rotary", str(batch), str(time), size, float(plain(a["base"])), stepped, fused)
    cos, sin = g.memo(memo_key, tables)
    if fused:
        return g.node("RotaryEmbedding", [x, cos, sin], num_heads=heads)
    h = g.one("Reshape", [x, g.ints([0, 0, heads, -1])])
    first_half, second_half = g.node("Split", [h], 2, axis=-1, num_outputs=2)
    rotated = g.one("Concat", [g.one("Neg", [second_half]), first_half], axis=-1)
    out = g.one("Add", [g.one("Mul", [h, cos]), g.one("Mul", [rotated, sin])])
    return [g.one("Reshape", [out, g.ints([0, 0, -1])])]


__all__ = ["causal_mask", "fusable", "fused_attention", "repeat_heads", "scaled_attention", "split_heads"]
