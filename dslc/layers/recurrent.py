"""Recurrent layers (batch-first) and multi-head attention."""

from __future__ import annotations

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
    non_default,
    pycall,
    reads_first_input,
    register,
    static,
)
from dslc.params import brief
from dslc.pytext import py_literal
from dslc.shapes import TensorType

RETURNS = ("sequence", "last", "state", "all")

helper(
    "final_hidden",
    '''
def final_hidden(h_n: torch.Tensor, num_directions: int) -> torch.Tensor:
    """The last layer's final hidden state, directions concatenated: [batch, directions * hidden]."""
    return torch.cat(list(h_n[-num_directions:]), dim=-1)
''',
)

helper(
    "flat_lstm",
    '''
def flat_lstm(result: tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]):
    """(output, (h_n, c_n)) -> (output, h_n, c_n)."""
    output, (h_n, c_n) = result
    return output, h_n, c_n
''',
)


def _rnn_infer(name: str):
    n_state = 2 if name == "LSTM" else 1

    def infer(args, inputs):
        x, *state = inputs
        expect_float(x, name)
        expect_rank(x, (3,), name, "[batch, time, features]", "recurrent layers are batch-first")
        check_positive(args, "hidden_size", "layers")
        if args["returns"] not in RETURNS:
            raise ShapeError(f"{name}: returns must be one of {', '.join(RETURNS)}, got {brief(args['returns'])}")
        if state and len(state) != n_state:
            raise ShapeError(f"{name} takes the input and {n_state} initial state tensor(s), got {len(state)}")
        if name == "RNN" and args["nonlinearity"] not in ("tanh", "relu"):
            raise ShapeError(f"RNN nonlinearity must be 'tanh' or 'relu', got {brief(args['nonlinearity'])}")
        batch, hidden = x.shape[0], args["hidden_size"]
        directions = 2 if args["bidirectional"] else 1
        state_type = TensorType(x.dtype, (args["layers"] * directions, batch, hidden))
        for s in state:
            if s.shape != state_type.shape:
                raise ShapeError(f"{name} initial state must be {state_type.shape_str()}, got {s.shape_str()}")
        sequence = TensorType(x.dtype, (batch, x.shape[1], directions * hidden))
        last = TensorType(x.dtype, (batch, directions * hidden))
        outputs = {
            "sequence": [sequence],
            "last": [last],
            "state": [state_type] * n_state,
            "all": [sequence] + [state_type] * n_state,
        }[args["returns"]]
        init = {
            "input_size": static(x.shape[2], "feature size (last dimension)", name),
            "directions": directions,
            "has_state": bool(state),
            **args,
        }
        return Inferred(outputs, init)

    return infer


def _rnn_module(name: str):
    def src(a):
        extra = non_default(a, layers=1, bias=True, dropout=0.0, bidirectional=False)
        if "layers" in extra:
            extra["num_layers"] = extra.pop("layers")
        if name == "RNN" and differs(a["nonlinearity"], "tanh"):
            extra["nonlinearity"] = a["nonlinearity"]
        return pycall(f"nn.{name}", a["input_size"], a["hidden_size"], batch_first=True, **extra)

    return src


def _rnn_forward(name: str):
    def forward(module, inputs, a):
        x, *state = inputs
        if name == "LSTM" and state:
            call = f"{module}({x}, ({state[0]}, {state[1]}))"
        else:
            call = f"{module}({', '.join([x, *state])})"
        returns = a["returns"]
        if returns == "sequence":
            return f"{call}[0]"
        if returns == "last":
            h_n = f"{call}[1][0]" if name == "LSTM" else f"{call}[1]"
            return f"final_hidden({h_n}, {py_literal(a['directions'])})"
        if returns == "state":
            return f"{call}[1]"
        return f"flat_lstm({call})" if name == "LSTM" else call

    return forward


def _rnn_params(name: str):
    gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[name]

    def count(a) -> int:
        hidden, directions = a["hidden_size"], a["directions"]

        def layer(inputs: int) -> int:
            return directions * (gates * hidden * (inputs + hidden) + 2 * gates * hidden * a["bias"])

        # closed form: `layers` can be any integer the spec gives, so no loop over it
        return layer(a["input_size"]) + (a["layers"] - 1) * layer(directions * hidden)

    return count


_RNN_DOC = {
    "RNN": "Elman RNN, h_t = tanh(W x_t + U h_(t-1) + b), stacked and optionally bidirectional.",
    "LSTM": "Long short-term memory, stacked and optionally bidirectional.",
    "GRU": "Gated recurrent unit, stacked and optionally bidirectional.",
}

for _name in ("RNN", "LSTM", "GRU"):
    _params = [
        Param("hidden_size", "int", doc="hidden state size per direction"),
        Param("layers", "int", 1, "stacked layers"),
        Param("bidirectional", "bool", False, "also run right to left; outputs are concatenated"),
        Param("dropout", "float", 0.0, "dropout between stacked layers"),
        Param("bias", "bool", True, "learn biases"),
        Param(
            "returns",
            "str",
            "sequence",
            "sequence: every step's output; last: the final hidden state; state: the final state "
            "tensors (h, and c for LSTM); all: the sequence and the state",
            choices=RETURNS,
        ),
    ]
    if _name == "RNN":
        _params.append(Param("nonlinearity", "str", "tanh", "tanh or relu", choices=("tanh", "relu")))
    register(
        Op(
            name=_name,
            doc=_RNN_DOC[_name] + " Extra inputs are the initial state.",
            params=tuple(_params),
            infer=_rnn_infer(_name),
            category="layer",
            module=_rnn_module(_name),
            forward=_rnn_forward(_name),
            inputs=(1, 3 if _name == "LSTM" else 2),
            prefix=_name.lower(),
            param_count=_rnn_params(_name),
            helpers=("final_hidden", "flat_lstm") if _name == "LSTM" else ("final_hidden",),
            example=f'x -> {_name}(128, bidirectional=true, returns="last")',
            shape_rule="[batch, time, F] -> [batch, time, D*hidden] (sequence) | [batch, D*hidden] (last) "
            "| [layers*D, batch, hidden] (state)",
        )
    )

# ---------------------------------------------------------------- attention

helper(
    "MultiheadAttention",
    '''
class MultiheadAttention(nn.Module):
    """Multi-head scaled dot-product attention, batch-first.

    Written out (rather than nn.MultiheadAttention) so that every size stays dynamic in ONNX.
    """

    def __init__(
        self,
        embed_dim: int,
        heads: int,
        kdim: int | None = None,
        vdim: int | None = None,
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(kdim or embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(vdim or embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, causal: bool = False
    ) -> torch.Tensor:
        batch, length = query.size(0), query.size(1)
        q = self.q_proj(query).reshape(batch, length, self.heads, -1).transpose(1, 2)
        k = self.k_proj(key).reshape(batch, key.size(1), self.heads, -1).transpose(1, 2)
        v = self.v_proj(value).reshape(batch, value.size(1), self.heads, -1).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
        if causal:
            future = torch.ones(length, key.size(1), dtype=torch.bool, device=query.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        weights = F.dropout(torch.softmax(scores, dim=-1), self.dropout, self.training)
        return self.out_proj((weights @ v).transpose(1, 2).reshape(batch, length, -1))
''',
)


def _mha_infer(args, inputs):
    q = inputs[0]
    k = inputs[1] if len(inputs) > 1 else q
    v = inputs[2] if len(inputs) > 2 else k
    for t in (q, k, v):
        expect_float(t, "MultiheadAttention")
        expect_rank(t, (3,), "MultiheadAttention", "[batch, time, features]")
    check_positive(args, "heads")
    embed = static(q.shape[2], "feature size", "MultiheadAttention")
    if embed % args["heads"]:
        raise ShapeError(f"MultiheadAttention: {args['heads']} heads do not divide the feature size {embed}")
    if k.shape[1] != v.shape[1]:
        raise ShapeError(f"MultiheadAttention: keys {k.shape_str()} and values {v.shape_str()} differ in length")
    if q.shape[0] != k.shape[0]:
        raise ShapeError(f"MultiheadAttention: query batch {q.shape[0]} differs from key batch {k.shape[0]}")
    if args["causal"] and q.shape[1] != k.shape[1]:
        raise ShapeError("MultiheadAttention: causal=true needs queries and keys of the same length")
    init = {
        "embed_dim": embed,
        "kdim": static(k.shape[2], "key size", "MultiheadAttention"),
        "vdim": static(v.shape[2], "value size", "MultiheadAttention"),
        **args,
    }
    return Inferred([q], init)


def _mha_module(a):
    """`MultiheadAttention(d, heads)`, with the key and value sizes, dropout and bias where not the defaults."""
    extra = non_default(a, dropout=0.0, bias=True)
    if differs(a["kdim"], a["embed_dim"]) or differs(a["vdim"], a["embed_dim"]):
        extra = {"kdim": a["kdim"], "vdim": a["vdim"], **extra}
    return pycall("MultiheadAttention", a["embed_dim"], a["heads"], **extra)


def _mha_forward(module, inputs, a):
    q = inputs[0]
    k = inputs[1] if len(inputs) > 1 else q
    v = inputs[2] if len(inputs) > 2 else k
    causal = ", causal=True" if a["causal"] else ""
    return f"{module}({q}, {k}, {v}{causal})"


register(
    Op(
        name="MultiheadAttention",
        doc="Scaled dot-product attention with several heads. One input attends to itself; with two, "
        "the first queries the second; with three: query, key, value.",
        params=(
            Param("heads", "int", doc="number of heads (must divide the feature size)"),
            Param("dropout", "float", 0.0, "dropout on the attention weights"),
            Param("bias", "bool", True, "learn projection biases"),
            Param("causal", "bool", False, "mask future positions (decoder self-attention)"),
        ),
        infer=_mha_infer,
        category="layer",
        module=_mha_module,
        forward=_mha_forward,
        reads_twice=reads_first_input,  # self-attention passes its one input as query, key and value
        inputs=(1, 3),
        prefix="attn",
        param_count=lambda a: (
            a["embed_dim"] * (a["embed_dim"] + a["kdim"] + a["vdim"])
            + 3 * a["embed_dim"] * a["bias"]
            + a["embed_dim"] * a["embed_dim"]
            + a["embed_dim"] * a["bias"]
        ),
        helpers=("MultiheadAttention",),
        example="(x, memory) -> MultiheadAttention(8)",
        shape_rule="[batch, Tq, E] (+ [batch, Tk, Ek], [batch, Tk, Ev]) -> [batch, Tq, E]",
    )
)


# ---------------------------------------------------------------- ONNX lowerings (dslc.lower_onnx)

# PyTorch's gate order within a weight matrix, as positions of ONNX's: LSTM (i, f, g, o) -> (i, o, f, c),
# GRU (r, z, n) -> (z, r, h).
_ONNX_GATES = {"RNN": [0], "LSTM": [0, 3, 1, 2], "GRU": [1, 0, 2]}


def _stacked(g, key: str, name: str, layer: int, directions: int, part: str):
    """W, R or B of one layer for ONNX: [directions, gates * hidden, ...] in ONNX's gate order."""
    import numpy as np

    order = _ONNX_GATES[name]
    mats = []
    for d in range(directions):
        suffix = f"l{layer}" + ("_reverse" if d else "")
        if part == "B":
            halves = [g.array(f"{key}bias_{kind}_{suffix}") for kind in ("ih", "hh")]
            mats.append(np.concatenate([np.split(h, len(order))[i] for h in halves for i in order]))
            continue
        matrix = g.array(f"{key}weight_{'ih' if part == 'W' else 'hh'}_{suffix}")
        mats.append(np.concatenate([np.split(matrix, len(order))[i] for i in order]))
    return g.constant(np.stack(mats), "float32", f"{key}{part}_l{layer}")


def _rnn_onnx(name: str):
    def lower(g, xs, outs, a, key):
        x, *state = xs
        hidden, layers, directions = int(a["hidden_size"]), int(a["layers"]), int(a["directions"])
        attrs = {"hidden_size": hidden, "direction": "bidirectional" if directions == 2 else "forward"}
        if name == "GRU":
            attrs["linear_before_reset"] = 1  # PyTorch applies the reset gate after the recurrent product
        if name == "RNN":
            attrs["activations"] = ["Relu" if a["nonlinearity"] == "relu" else "Tanh"] * directions
        sequence = g.one("Transpose", [x.name], perm=[1, 0, 2])  # ONNX's default layout: [time, batch, features]
        finals: list[list[str]] = [[], []]
        for layer in range(layers):
            initial = []
            for s in state:  # initial h (and c): this layer's directions of [layers * D, batch, H]
                rows = g.ints([layer * directions]), g.ints([(layer + 1) * directions]), g.ints([0])
                initial.append(g.one("Slice", [s.name, *rows]))
            wants_sequence = layer < layers - 1 or a["returns"] in ("sequence", "all")
            if name == "RNN":  # onnxruntime's RNN kernel takes twice PyTorch's time at batch 32, a Scan half of it
                y, *last = _rnn_scan(g, key, layer, directions, sequence, initial, a, wants_sequence)
            else:
                weights = [_stacked(g, key, name, layer, directions, part) for part in ("W", "R")]
                weights.append(_stacked(g, key, name, layer, directions, "B") if a["bias"] else "")
                names = [g.fresh(f"{name.lower()}_y") if wants_sequence else ""]  # no Y where nothing reads it
                names += [g.fresh(f"{name.lower()}_h"), *([g.fresh("lstm_c")] if name == "LSTM" else [])]
                # "": sequence_lens, every sequence has the full length
                y, *last = g.node(name, [sequence, *weights, "", *initial], names, **attrs)
            for i, value in enumerate(last):
                finals[i].append(value)
            if wants_sequence:  # [time, D, batch, H] -> [time, batch, D * H], the next layer's input
                sequence = g.one("Reshape", [g.one("Transpose", [y], perm=[0, 2, 1, 3]), g.ints([0, 0, -1])])
        h_n = finals[0][0] if layers == 1 else g.one("Concat", finals[0], axis=0)
        results = {"h": h_n}
        if a["returns"] in ("sequence", "all"):
            results["sequence"] = g.one("Transpose", [sequence], perm=[1, 0, 2])
        if name == "LSTM":
            results["c"] = finals[1][0] if layers == 1 else g.one("Concat", finals[1], axis=0)
        returns = a["returns"]
        if returns == "sequence":
            return [results["sequence"]]
        if returns == "last":  # the last layer's directions, concatenated: [batch, D * H]
            last = g.one("Slice", [h_n, g.ints([-directions]), g.ints([2**63 - 1]), g.ints([0])])
            return [g.one("Reshape", [g.one("Transpose", [last], perm=[1, 0, 2]), g.ints([0, -1])])]
        states = [results["h"], *([results["c"]] if name == "LSTM" else [])]
        return states if returns == "state" else [results["sequence"], *states]

    return lower


def _rnn_scan(g, key: str, layer: int, directions: int, sequence: str, initial: list[str], a, wants_sequence: bool):
    """One layer of a vanilla RNN as the ONNX RNN op's outputs (Y [time, D, batch, H] or "", Y_h [D, batch, H]), each
    direction a Scan over time: the input projection of every step is one MatMul before it, the step h' = act(xw_t +
    h R + b) its body, which holds R, so graph passes and the float16 rewrite see no subgraph reading outer values."""
    import numpy as np
    from onnx import helper as onnx_helper
    from onnx import numpy_helper

    activation = "Relu" if a["nonlinearity"] == "relu" else "Tanh"
    ys, hs = [], []
    for d in range(directions):
        suffix = f"l{layer}" + ("_reverse" if d else "")
        w_ih, w_hh = g.array(f"{key}weight_ih_{suffix}"), g.array(f"{key}weight_hh_{suffix}")
        hidden = w_hh.shape[0]
        bias = g.array(f"{key}bias_ih_{suffix}") + g.array(f"{key}bias_hh_{suffix}") if a["bias"] else None
        projected = g.one("MatMul", [sequence, g.constant(np.ascontiguousarray(w_ih.T), "float32", f"{key}W_{suffix}")])
        if bias is not None:
            projected = g.one("Add", [projected, g.constant(bias, "float32", f"{key}B_{suffix}")])
        if initial:
            first = g.one("Slice", [initial[0], g.ints([d]), g.ints([d + 1]), g.ints([0])])
            h0 = g.one("Squeeze", [first, g.ints([0])])
        else:
            shape = g.one("Concat", [g.one("Shape", [sequence], start=1, end=2), g.ints([hidden])], axis=0)
            h0 = g.one("ConstantOfShape", [shape], value=numpy_helper.from_array(np.zeros(1, np.float32)))
        h, xw, r, s, h_out, y_t = (g.fresh(f"rnn_{n}") for n in ("h", "xw", "R", "s", "h_out", "y"))
        body = onnx_helper.make_graph(
            [
                onnx_helper.make_node("MatMul", [h, r], [s + "_hr"], name=g.fresh("n_MatMul")),
                onnx_helper.make_node("Add", [xw, s + "_hr"], [s], name=g.fresh("n_Add")),
                onnx_helper.make_node(activation, [s], [h_out], name=g.fresh(f"n_{activation}")),
                onnx_helper.make_node("Identity", [h_out], [y_t], name=g.fresh("n_Identity")),
            ],
            g.fresh("rnn_step"),
            [onnx_helper.make_tensor_value_info(v, 1, ["batch", hidden]) for v in (h, xw)],
            [onnx_helper.make_tensor_value_info(v, 1, ["batch", hidden]) for v in (h_out, y_t)],
            [numpy_helper.from_array(np.ascontiguousarray(w_hh.T), r)],
        )
        reverse = [1] if d else None  # a reverse direction reads the steps backwards, writes them in time order
        h_last, y = g.node(
            "Scan",
            [h0, projected],
            2,
            body=body,
            num_scan_inputs=1,
            scan_input_directions=reverse,
            scan_output_directions=reverse,
        )
        hs.append(g.one("Unsqueeze", [h_last, g.ints([0])]))
        ys.append(g.one("Unsqueeze", [y, g.ints([1])]) if wants_sequence else "")
    return (_concat(g, ys, 1) if wants_sequence else ""), _concat(g, hs, 0)


def _concat(g, values: list[str], axis: int) -> str:
    return values[0] if len(values) == 1 else g.one("Concat", values, axis=axis)


for _name in ("RNN", "LSTM", "GRU"):
    lowering(_name)(_rnn_onnx(_name))


@lowering("MultiheadAttention")
def _mha_onnx(g, xs, outs, a, key):
    """The projections, one ONNX Attention (opset 23) and the output projection; a decoder's KV-cache graphs keep
    its keys and values (the Attention reads the past and writes the present). Projections that read the same
    input become one MatMul (dslc.lower_onnx's sibling fold). Other dtypes than float32: written out."""
    from dslc.layers.decoder import fusable, fused_attention

    q_in = xs[0]
    k_in = xs[1] if len(xs) > 1 else q_in
    v_in = xs[2] if len(xs) > 2 else k_in
    heads = int(a["heads"])
    head_size = int(a["embed_dim"]) // heads
    causal = bool(a["causal"])

    def project(x, name):
        y = g.one("MatMul", [x.name, g.weight(f"{key}{name}.weight", transposed=True)])
        return g.one("Add", [y, g.weight(f"{key}{name}.bias")]) if a["bias"] else y

    if fusable([q_in, k_in, v_in], None):
        qkv = [project(x, name) for x, name in ((q_in, "q_proj"), (k_in, "k_proj"), (v_in, "v_proj"))]
        merged = fused_attention(g, [q_in, k_in, v_in], qkv, heads, heads, head_size, causal)
    else:
        merged = _mha_written_out(g, key, a, q_in, k_in, v_in, heads, head_size)
    out = g.one("MatMul", [merged, g.weight(f"{key}out_proj.weight", transposed=True)])
    return [g.one("Add", [out, g.weight(f"{key}out_proj.bias")])] if a["bias"] else [out]


def _mha_written_out(g, key, a, q_in, k_in, v_in, heads: int, head_size: int) -> str:
    """Scaled dot-product attention written out: projections, heads, scores, the causal mask, softmax."""
    import math

    from dslc.layers.decoder import mask_key, scaled_attention, split_heads

    def project(x, name, factor=1.0):
        """x W^T + b split into heads; the query's projection takes the 1/sqrt(dh) of the scores (folded)."""
        weight = g.array(f"{key}{name}.weight").T
        y = g.one("MatMul", [x.name, g.constant(weight * factor, "float32", f"{key}{name}.weight")])
        if a["bias"]:
            y = g.one("Add", [y, g.constant(g.array(f"{key}{name}.bias") * factor, "float32", f"{key}{name}.bias")])
        return split_heads(g, y, heads)  # [batch, heads, time, dh]

    q = project(q_in, "q_proj", 1.0 / math.sqrt(head_size))
    k, v = project(k_in, "k_proj"), project(v_in, "v_proj")
    if g.cache is not None and a["causal"]:
        k, v = g.cache.attend(g, [q_in, k_in, v_in], k, v, heads, head_size)
    elif g.cache is not None:
        g.cache.require_static([k_in, v_in], "MultiheadAttention without causal=true")
    return scaled_attention(g, q, k, v, heads, heads, head_size, mask_key(g, [q_in, k_in], k, bool(a["causal"])))
