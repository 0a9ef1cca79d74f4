"""KV-cache graphs of a decoder: `<model>.prefill.onnx` and `<model>.decode_step.onnx`, lowered from the IR.

A model is a decoder when one of its integer `[batch, time]` inputs (the *stepped* input: the tokens being
generated) reaches a causal attention's queries and keys, and every attention over it is causal. Lowered with
a `DecodeCache`, each causal attention concatenates `past_key_values.N.key`/`.value` ([batch, kv_heads, past,
head_size]) in front of its keys and values and returns them as `present.N.key`/`.value`; positions and
rotary embeddings of stepped values count from the past length. That one lowering gives both graphs:

- `decode_step`: tokens [batch, new] and the past in; logits for the new positions and the present out. What
  does not depend on the tokens (an encoder's memory) is cut off at `memory.N` inputs.
- `prefill`: the same graph on an empty past, which also returns the `memory.N` values for decode_step.

Input and output names are the ones HuggingFace's ONNX exports use; runtime/README.md documents them.
Both graphs are verified token by token against the PyTorch module's full forward pass (dslc.verify_decoding).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper

from dslc import ir
from dslc.onnx_files import checksums, infer_shapes, save
from dslc.onnx_graph import ONNX_DTYPES, Graph, NotLowerableError

PAST = "past_key_values.{}.{}"
PRESENT = "present.{}.{}"
MEMORY = "memory.{}"


class NotCacheableError(NotLowerableError):
    """The model has no KV-cache form: an attention over the stepped tokens looks ahead, or none is causal."""


@dataclass
class CachedLayer:
    index: int
    kv_heads: int
    head_size: int


@dataclass
class DecodeCache:
    """What the lowering of one decoder needs: which values are stepped, and the cached layers so far."""

    stepped_input: str
    stepped: set[str] = field(default_factory=set)
    layers: list[CachedLayer] = field(default_factory=list)
    _past_length: str | None = None

    def __post_init__(self) -> None:
        self.stepped.add(self.stepped_input)

    def saw(self, inputs: list[str], outputs: list[str]) -> None:
        """A node was added: its outputs are stepped when an input is."""
        if any(name in self.stepped for name in inputs):
            self.stepped.update(outputs)

    def is_stepped(self, name: str) -> bool:
        return name in self.stepped

    def past_length(self, g: Graph) -> str:
        """The number of cached positions (an int64 scalar), read off the first layer's past keys."""
        if self._past_length is None:
            shape = g.one("Shape", [PAST.format(0, "key")])
            self._past_length = g.one("Squeeze", [g.one("Gather", [shape, g.ints([2])], axis=0)])
            self.stepped.add(self._past_length)
        return self._past_length

    def attend(self, g: Graph, inputs: list[Any], k: str, v: str, kv_heads: int, head_size: int) -> tuple[str, str]:
        """A causal attention's keys and values [batch, kv_heads, new, d] with the past in front of them."""
        cached = self.past(g, inputs, kv_heads, head_size)
        if cached is None:
            return k, v
        past_key, past_value, present_key, present_value = cached
        keys = g.node("Concat", [past_key, k], [present_key], axis=2)[0]
        values = g.node("Concat", [past_value, v], [present_value], axis=2)[0]
        return keys, values

    def past(self, g: Graph, inputs: list[Any], kv_heads: int, head_size: int) -> tuple[str, str, str, str] | None:
        """A new cached layer's past_key_values.N.key/.value and present.N.key/.value names, for a causal attention
        over the generated tokens (None when its inputs do not depend on them): an ONNX Attention reads the past
        and writes the present itself, the written-out lowering concatenates them (`attend`)."""
        if not all(self.is_stepped(x.name) for x in inputs):
            if any(self.is_stepped(x.name) for x in inputs):
                raise NotCacheableError("a causal attention mixes the generated tokens with other values")
            return None
        i = len(self.layers)
        self.layers.append(CachedLayer(i, kv_heads, head_size))
        if i == 0:
            self.past_length(g)
        names = (PAST.format(i, "key"), PAST.format(i, "value"), PRESENT.format(i, "key"), PRESENT.format(i, "value"))
        self.stepped.update(names)
        return names

    def require_static(self, inputs: list[Any], what: str) -> None:
        """Keys that change with the generated tokens must be causal self-attention's."""
        if any(self.is_stepped(x.name) for x in inputs):
            raise NotCacheableError(f"{what} looks at later tokens, so it cannot run one token at a time")


@dataclass
class DecoderGraphs:
    stepped_input: str
    prefill: onnx.ModelProto
    decode_step: onnx.ModelProto
    layers: list[CachedLayer]
    memory: list[str]  # the memory.N names, in order


def candidates(module: ir.ModuleIR) -> list[str]:
    """The inputs that could be a decoder's tokens: integer [batch, time] with a symbolic time."""
    return [
        p.name
        for p in module.inputs
        if p.type.dtype in ("int64", "int32") and p.type.rank == 2 and not isinstance(p.type.shape[1], int)
    ]


def lower_decoder(program: ir.ProgramIR, module: ir.ModuleIR, weights: dict[str, np.ndarray]) -> DecoderGraphs | None:
    """The prefill and decode_step graphs of a decoder; None when the model is none (no input reaches a causal
    attention, or one that does also reaches an attention that looks ahead)."""
    from dslc.lower_onnx import lowered_graph, ops_used

    if not any(
        op in ("attention", "MultiheadAttention") and init.get("causal") for op, init in ops_used(program, module)
    ):
        return None  # no causal attention: no cache, and no second lowering to find that out
    for name in candidates(module):
        cache = DecodeCache(name)
        try:
            graph = lowered_graph(program, module, Graph(weights=weights, cache=cache))
        except NotCacheableError:
            continue
        if not cache.layers:
            continue
        decode = _decode_model(module, graph, cache)
        return _split(decode, module, cache)
    return None


def _decode_model(module: ir.ModuleIR, graph: Graph, cache: DecodeCache) -> onnx.ModelProto:
    """The whole graph, every model input and the past in, every output and the present out, shapes inferred."""
    from dslc.lower_onnx import IR_VERSION, OPSET, value_info

    batch = module.inputs[[p.name for p in module.inputs].index(cache.stepped_input)].type.shape[0]
    batch_name = str(batch).replace(" ", "") if not isinstance(batch, int) else batch
    cached = [
        helper.make_tensor_value_info(fmt.format(layer.index, kind), ONNX_DTYPES["float32"], shape)
        for layer in cache.layers
        for kind in ("key", "value")
        for fmt, shape in (
            (PAST, [batch_name, layer.kv_heads, "past_sequence_length", layer.head_size]),
            (PRESENT, [batch_name, layer.kv_heads, "total_sequence_length", layer.head_size]),
        )
    ]
    inputs = [value_info(p.name, p.type) for p in module.inputs] + [v for v in cached if v.name.startswith("past")]
    outputs = [value_info(p.name, p.type) for p in module.outputs] + [v for v in cached if v.name.startswith("pres")]
    onnx_graph = helper.make_graph(graph.nodes, module.spec_name, inputs, outputs, list(graph.initializers.values()))
    model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    return infer_shapes(model)


def _split(model: onnx.ModelProto, module: ir.ModuleIR, cache: DecodeCache) -> DecoderGraphs:
    """decode_step: the graph cut at the memory values, fed as inputs; prefill: the graph on an empty past, also
    returning the memory."""
    past = [v.name for v in model.graph.input if v.name.startswith("past_key_values.")]
    stepped = _stepped(model.graph, {cache.stepped_input, *past})
    memory, kept_static = _memory(model.graph, stepped)
    renamed = {name: MEMORY.format(i) for i, name in enumerate(memory)}
    memory_info = [_typed(model.graph, name, renamed[name]) for name in memory]
    decode = _decode_graph(model, cache, stepped, kept_static, renamed, memory_info)
    prefill = _prefill_graph(model, cache, renamed, memory_info)
    decode, prefill = infer_shapes(decode), infer_shapes(prefill)
    return DecoderGraphs(cache.stepped_input, prefill, decode, list(cache.layers), list(renamed.values()))


def _memory(g: onnx.GraphProto, stepped: set[str]) -> tuple[list[str], set[str]]:
    """The float values computed without the tokens that the stepped part reads (an encoder's output), in graph
    order, and the names of the nodes decode_step keeps to recompute integer values (shapes) from them."""
    producers = {out: node for node in g.node for out in node.output}
    order = {out: i for i, node in enumerate(g.node) for out in node.output}
    initializers = {t.name for t in g.initializer}
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
    memory: list[str] = []
    kept_static: set[str] = set()  # node names, unique in a lowered graph
    pending = [name for node in g.node if set(node.input) & stepped for name in node.input]
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if not name or name in seen or name in stepped or name in initializers or name not in producers:
            continue
        seen.add(name)
        if types.get(name) not in (ONNX_DTYPES["int64"], ONNX_DTYPES["bool"]):
            memory.append(name)
            continue
        kept_static.add(producers[name].name)
        pending.extend(producers[name].input)
    return sorted(memory, key=order.__getitem__), kept_static


def _decode_graph(
    model: onnx.ModelProto,
    cache: DecodeCache,
    stepped: set[str],
    kept_static: set[str],
    renamed: dict[str, str],
    memory_info: list[onnx.ValueInfoProto],
) -> onnx.ModelProto:
    decode = onnx.ModelProto()
    decode.CopyFrom(model)
    nodes = [n for n in decode.graph.node if set(n.input) & stepped or n.name in kept_static]
    _keep_needed(decode, nodes, {o.name for o in decode.graph.output}, set(renamed))
    for node in decode.graph.node:
        node.input[:] = [renamed.get(n, n) for n in node.input]
    needed = {n for node in decode.graph.node for n in node.input}
    graph_inputs = [v for v in decode.graph.input if v.name in needed or v.name == cache.stepped_input]
    del decode.graph.input[:]
    decode.graph.input.extend([*graph_inputs, *memory_info])
    _prune_initializers(decode)
    del decode.graph.value_info[:]
    return decode


def _prefill_graph(
    model: onnx.ModelProto, cache: DecodeCache, renamed: dict[str, str], memory_info: list[onnx.ValueInfoProto]
) -> onnx.ModelProto:
    prefill = onnx.ModelProto()
    prefill.CopyFrom(model)
    nodes = [*_empty_past(prefill, cache), *prefill.graph.node]
    nodes += [helper.make_node("Identity", [name], [alias], name=f"n_{alias}") for name, alias in renamed.items()]
    del prefill.graph.node[:]
    prefill.graph.node.extend(nodes)
    del prefill.graph.input[:]
    prefill.graph.input.extend([v for v in model.graph.input if not v.name.startswith("past_key_values.")])
    prefill.graph.output.extend(memory_info)
    del prefill.graph.value_info[:]
    return prefill


def _stepped(g: onnx.GraphProto, roots: set[str]) -> set[str]:
    stepped = set(roots)
    for node in g.node:  # nodes are in topological order
        if set(node.input) & stepped:
            stepped.update(node.output)
    return stepped


def _keep_needed(model: onnx.ModelProto, nodes: list[onnx.NodeProto], outputs: set[str], cut: set[str]) -> None:
    """Keep the nodes among `nodes` that the outputs need, in order, stopping at the `cut` values."""
    producers = {out: node for node in nodes for out in node.output}
    needed: set[str] = set()
    stack = [o for o in outputs]
    keep: set[str] = set()
    while stack:
        name = stack.pop()
        if name in needed or name in cut:
            continue
        needed.add(name)
        node = producers.get(name)
        if node is not None and node.name not in keep:
            keep.add(node.name)
            stack.extend(node.input)
    missing = [o for o in outputs if o not in needed]
    if missing:
        raise NotLowerableError(f"decode_step cannot compute {missing}")
    kept = [n for n in model.graph.node if n.name in keep]
    del model.graph.node[:]
    model.graph.node.extend(kept)


def _prune_initializers(model: onnx.ModelProto) -> None:
    used = {n for node in model.graph.node for n in node.input}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def _typed(g: onnx.GraphProto, name: str, new_name: str) -> onnx.ValueInfoProto:
    info = next(v for v in [*g.value_info, *g.output] if v.name == name)
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(info)
    copy.name = new_name
    return copy


def _empty_past(model: onnx.ModelProto, cache: DecodeCache) -> list[onnx.NodeProto]:
    """Nodes writing each `past_key_values.N.*` as an empty [batch, kv_heads, 0, head_size] tensor."""
    from onnx import numpy_helper

    batch = "prefill_batch"
    nodes = [
        helper.make_node("Shape", [cache.stepped_input], [batch], start=0, end=1, name="n_prefill_batch"),
    ]
    for layer in cache.layers:
        rest = f"prefill_past_shape_{layer.index}"
        model.graph.initializer.append(
            numpy_helper.from_array(np.array([layer.kv_heads, 0, layer.head_size], dtype=np.int64), rest)
        )
        shape = f"prefill_past_{layer.index}"
        nodes.append(helper.make_node("Concat", [batch, rest], [shape], axis=0, name=f"n_{shape}"))
        for kind in ("key", "value"):
            nodes.append(
                helper.make_node(
                    "ConstantOfShape", [shape], [PAST.format(layer.index, kind)], name=f"n_empty_{kind}_{layer.index}"
                )
            )
    return nodes


# ---------------------------------------------------------------- export and verification (with torch)

PROMPT, STEPS = 3, 5  # verification: a prompt of 3 tokens, then 5 single-token steps and one of 2 tokens


@dataclass
class DecoderReport:
    """What the manifest says of a decoder's cache graphs."""

    prefill: dict[str, Any]  # manifest entries (name, onnx, onnx_sha256, inputs, outputs, nodes, ...)
    decode_step: dict[str, Any]
    tokens: str
    logits: str
    layers: int
    memory: list[str]
    max_abs_diff: float

    def summary(self, folder: Any) -> str:
        """The line `dslc build` and `dslc train` print for the cache graphs written into `folder`."""
        layers = f"{self.layers} attention layer{'s' if self.layers != 1 else ''}"
        return (
            f"wrote {folder / self.prefill['onnx']} and {self.decode_step['onnx']}: KV cache of {layers}; "
            f"token by token they match PyTorch (max abs diff {self.max_abs_diff:.1e})"
        )

    def manifest(self) -> dict[str, Any]:
        return {
            "prefill": self.prefill["name"],
            "decode_step": self.decode_step["name"],
            "tokens": self.tokens,
            "logits": self.logits,
            "layers": self.layers,
            "memory": self.memory,
            "max_abs_diff": self.max_abs_diff,
        }


def logits_output(module: ir.ModuleIR, tokens: str) -> str | None:
    """The output scoring every position: float [batch, time, vocab] over the tokens' time axis."""
    time = next(p for p in module.inputs if p.name == tokens).type.shape[1]
    return next(
        (p.name for p in module.outputs if p.type.is_float and p.type.rank == 3 and p.type.shape[1] == time), None
    )


def export_decoder(torch_module: Any, program: ir.ProgramIR, module: ir.ModuleIR, folder: Any) -> DecoderReport | None:
    """Write `<model>.prefill.onnx` and `<model>.decode_step.onnx` into `folder` and verify them, for a decoder;
    None for any other model. Raises VerifyError when the graphs do not reproduce the module."""
    from dslc.export_onnx import state_arrays

    graphs = lower_decoder(program, module, state_arrays(torch_module))
    if graphs is None or longest_sequence(module, graphs.stepped_input) < 3:
        return None  # not a decoder, or a context too short to decode in steps
    logits = logits_output(module, graphs.stepped_input)
    if logits is None:
        return None
    entries, paths, written = {}, [], []
    for kind, model in (("prefill", graphs.prefill), ("decode_step", graphs.decode_step)):
        name = f"{module.spec_name}.{kind}"
        _stamp(model, program, module, name)
        paths.append(folder / f"{name}.onnx")
        written += save(model, paths[-1])  # with the full check; verified from the files, as applications load them
        entries[kind] = {
            "name": name,
            "class": module.class_name,
            "params": module.param_count,
            "inputs": [_port(v) for v in model.graph.input],
            "outputs": [_port(v) for v in model.graph.output],
            "onnx": f"{name}.onnx",
            **checksums(paths[-1]),
            "nodes": len(model.graph.node),
            "verified": True,
        }
    try:
        diff = verify_decoder(torch_module, program, module, graphs, logits, paths)
    except VerifyError:
        for path in written:  # not published: the build goes on without them
            path.unlink(missing_ok=True)
        raise
    for entry in entries.values():
        entry["max_abs_diff"] = diff
    return DecoderReport(
        entries["prefill"],
        entries["decode_step"],
        graphs.stepped_input,
        logits,
        len(graphs.layers),
        graphs.memory,
        diff,
    )


class VerifyError(Exception):
    """The cache graphs do not reproduce the module's logits; the message says where."""


def longest_sequence(module: ir.ModuleIR, tokens: str) -> int:
    """The tokens verification decodes: PROMPT + STEPS + 2, or fewer where the model's position table is shorter."""
    time = next(p for p in module.inputs if p.name == tokens).type.shape[1]
    return min(PROMPT + STEPS + 2, ir.largest_sizes(module).get(str(time), PROMPT + STEPS + 2))


def decode_spans(length: int) -> list[tuple[int, int]]:
    """(start, stop) of the prompt, then of each decode step, over `length` tokens: single steps, and a last one
    of two tokens where there is room."""
    prompt = min(PROMPT, length - 2)
    last = length - 2 if length - prompt >= 3 else length
    return [(0, prompt), *((t, t + 1) for t in range(prompt, last)), *([(last, length)] if last < length else [])]


def verify_decoder(
    torch_module: Any, program: ir.ProgramIR, module: ir.ModuleIR, graphs: DecoderGraphs, logits: str, files: list[Any]
) -> float:
    """Run prefill on a prompt and decode_step token by token (then two tokens at once), comparing each step's
    logits with the module's full forward pass over the whole sequence; the largest difference. `files`: the
    prefill and decode_step graphs as written."""
    import torch

    from dslc.export_onnx import example_inputs
    from dslc.verify import TOLERANCE, Float64Reference, _float_difference, output_scale, session

    spans = decode_spans(longest_sequence(module, graphs.stepped_input))
    tokens = next(p for p in module.inputs if p.name == graphs.stepped_input)
    sizes = dict(ir.example_sizes(module))
    sizes[str(tokens.type.shape[1])] = spans[-1][1]
    inputs = dict(zip([p.name for p in module.inputs], example_inputs(module, sizes, seed=7, program=program)))
    torch_module.eval()
    with torch.no_grad():
        expected = torch_module(*inputs.values())
    expected = expected if isinstance(expected, tuple) else (expected,)
    index = [p.name for p in module.outputs].index(logits)
    want = expected[index].numpy()
    exact = Float64Reference(torch_module, tuple(inputs.values()))
    sessions = [session(path) for path in files]
    feeds = {name: x.numpy() for name, x in inputs.items()}
    sequence = feeds[graphs.stepped_input]
    worst = 0.0
    allowed = TOLERANCE * output_scale(want)
    state: dict[str, np.ndarray] = {}
    for step, (start, stop) in enumerate(spans):
        sess = sessions[0 if step == 0 else 1]
        wanted = {i.name for i in sess.get_inputs()}
        feed = {k: v for k, v in {**feeds, **state}.items() if k in wanted}
        feed[graphs.stepped_input] = sequence[:, start:stop]
        names = [o.name for o in sess.get_outputs()]
        out = dict(zip(names, sess.run(names, feed)))
        got, wanted = out[logits], want[:, start:stop]
        diff = _float_difference(wanted.astype(np.float64), got.astype(np.float64))
        if not diff <= allowed and not exact.accepts(index, wanted, got, allowed, np.s_[:, start:stop]):
            graph = "prefill" if step == 0 else "decode_step"
            raise VerifyError(
                f"the KV-cache graphs differ from the model: {graph}'s '{logits}' at positions {start}..{stop - 1} "
                f"by {diff:.3g} (> {allowed:.3g})"
            )
        worst = max(worst, diff)
        state.update({PAST.format(*k.split(".")[1:]): v for k, v in out.items() if k.startswith("present.")})
        state.update({k: v for k, v in out.items() if k.startswith("memory.")})
    return worst


def _port(v: onnx.ValueInfoProto) -> dict[str, Any]:
    t = v.type.tensor_type
    dtype = next(k for k, code in ONNX_DTYPES.items() if code == t.elem_type)
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    return {"name": v.name, "dtype": dtype, "shape": shape, "doc": _DOCS.get(v.name.split(".")[0], "")}


_DOCS = {
    "past_key_values": "cached keys or values of one attention layer [batch, kv_heads, past, head_size]",
    "present": "the past with the new positions appended; feed back as past_key_values",
    "memory": "computed once by prefill from the inputs that do not change while generating; feed to decode_step",
}


def _stamp(model: onnx.ModelProto, program: ir.ProgramIR, module: ir.ModuleIR, name: str) -> None:
    """dslc's metadata, with this graph's own ports."""
    import json

    from dslc import __version__
    from dslc.export_onnx import metadata

    model.producer_name, model.producer_version = "dslc", __version__
    model.doc_string = f"{module.spec_name}'s KV-cache graph: {name.rsplit('.', 1)[1]}"
    props = metadata(program, module)
    props["dslc.model"] = name
    props["dslc.inputs"] = json.dumps([_port(v) for v in model.graph.input])
    props["dslc.outputs"] = json.dumps([_port(v) for v in model.graph.output])
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
