"""Graph rewrites after the native lowering (dslc.lower_onnx), each exact and each fewer nodes: what the lowering
can do because the checker knows every value's shape, and onnxruntime's optimizer would otherwise redo (or not) at
every session start.

- `fuse_written_attention`: scaled dot-product attention a spec writes out, softmax(q @ transpose(k) * s + mask)
  @ v (BERT's and ViT's layout), becomes one Attention node (opset 23) on the heads' [batch, time, heads * d]
  projections when they are split and merged by Reshape/Transpose, else on the 4D heads.
- `fold_sibling_matmuls`: projections of one input by constant matrices (q/k/v, gate/up), with or without a bias,
  become one MatMul on the concatenated weights (and one Add) and a Split.
- `fold_position_tables`: an embedding of positions 0 .. n-1 (Gather of the table at Range(0, n)) is the table's
  first n rows: one Slice.
- `fold_shape_slices`: Gather or Slice of a Shape at constant places is a Shape with start and end.
- `drop_dead_nodes`: nodes whose results nothing reads, and initializers nothing reads.

Torch-free, like the lowering. Every pass works on dslc.onnx_graph.Graph (nodes in topological order) and keeps
the values that `keep` names (the graph's outputs).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from dslc.onnx_graph import Graph
from dslc.shapes import TensorType

FLOAT32_MAX = float(np.finfo(np.float32).max)


class _Index:
    """Producers and consumer counts of a graph's values, rebuilt after each rewrite."""

    def __init__(self, graph: Graph, keep: set[str]) -> None:
        self.graph, self.keep = graph, keep
        self.producer = {out: node for node in graph.nodes for out in node.output}
        self.readers = Counter(name for node in graph.nodes for name in node.input)

    def only_reader(self, name: str) -> bool:
        """Whether one node reads `name` and it is no output: a rewrite may drop it."""
        return self.readers[name] == 1 and name not in self.keep

    def made_by(self, name: str, *op_types: str) -> onnx.NodeProto | None:
        node = self.producer.get(name)
        return node if node is not None and node.op_type in op_types else None

    def constant(self, name: str) -> np.ndarray | None:
        init = self.graph.initializers.get(name)
        return numpy_helper.to_array(init) if init is not None else None

    def scalar(self, name: str) -> float | None:
        value = self.constant(name)
        return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def _attribute(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _same(a: Any, b: Any) -> bool:
    return str(a) == str(b)


# ---------------------------------------------------------------- attention written out


def fuse_written_attention(graph: Graph, keep: set[str]) -> None:
    """softmax(q @ transpose(k) (* or / a constant) (+ mask)) @ v over [batch, heads, time, d] becomes one Attention.

    Exact where PyTorch's answer is defined: the fused op gives 0 for a query whose every score is -inf, where the
    written-out softmax gives NaN, so a mask is fused only when its values are provably finite (computed from
    integer or bool inputs and finite constants, as BERT's (1 - mask) * -10000); another mask keeps the softmax."""
    while True:
        index = _Index(graph, keep)
        match = next((m for node in graph.nodes if (m := _attention_match(index, node)) is not None), None)
        if match is None:
            return
        _rewrite_attention(graph, index, match)


def _attention_match(index: _Index, softmax: onnx.NodeProto) -> dict[str, Any] | None:
    types = index.graph.types
    if softmax.op_type != "Softmax" or not index.only_reader(softmax.output[0]):
        return None
    scores_type = types.get(softmax.output[0])
    if scores_type is None or scores_type.rank not in (3, 4) or scores_type.dtype != "float32":
        return None
    rank = scores_type.rank  # 4: [batch, heads, queries, keys]; 3: one head, [batch, queries, keys]
    if _attribute(softmax, "axis", -1) not in (-1, 3):
        return None
    readers = [n for n in index.graph.nodes if softmax.output[0] in n.input]
    weighted = readers[0]
    if weighted.op_type != "MatMul" or list(weighted.input).index(softmax.output[0]) != 0:
        return None
    chain, mask, scores = [softmax], None, _scores(index, softmax.input[0], rank)
    add = index.made_by(softmax.input[0], "Add")
    if scores is None and add is not None and index.only_reader(softmax.input[0]):
        for side in (0, 1):
            scores = _scores(index, add.input[side], rank)
            if scores is not None:
                mask = add.input[1 - side]
                break
        if mask is None or not _finite(index, mask) or types.get(mask) is None or types[mask].dtype != "float32":
            return None
        if rank == 3 and types[mask].rank == 3:  # Attention would broadcast its batch over the heads
            return None
        chain.append(add)
    if scores is None:
        return None
    product, transpose, scale, scaling = scores
    chain += [n for n in (scaling, product) if n is not None]
    q = product.input[0]
    k, v = transpose.input[0], weighted.input[1]
    shapes = [types.get(n) for n in (q, k, v)]
    if any(t is None or t.rank != rank or t.dtype != "float32" for t in shapes):
        return None
    (qt, kt, vt) = [t if rank == 4 else t.with_shape((t.shape[0], 1, *t.shape[1:])) for t in shapes]
    if not (
        _same(qt.shape[0], kt.shape[0])
        and _same(kt.shape[0], vt.shape[0])
        and _same(qt.shape[1], kt.shape[1])
        and _same(kt.shape[1], vt.shape[1])
        and _same(kt.shape[2], vt.shape[2])
        and _same(qt.shape[3], kt.shape[3])
        and isinstance(qt.shape[1], int)
    ):
        return None  # heads broadcast by MatMul, or shapes the checker does not know: left written out
    return {
        "rank": rank,
        "qt": qt,
        "kt": kt,
        "chain": chain,
        "weighted": weighted,
        "q": q,
        "k": k,
        "v": v,
        "mask": mask,
        "scale": scale,
    }


def _scores(index: _Index, name: str, rank: int) -> tuple | None:
    """(the MatMul q @ kT, the Transpose kT of k, the scale, the Mul or Div node scaling it or None) when `name` is
    q @ transpose(k), optionally times or over a constant, and nothing else reads those values."""
    scale, scaling = 1.0, index.made_by(name, "Mul", "Div")
    if scaling is not None:
        constant = 1 if scaling.op_type == "Div" or index.scalar(scaling.input[1]) is not None else 0
        factor = index.scalar(scaling.input[constant])
        if factor is None or not math.isfinite(factor) or factor == 0 or not index.only_reader(name):
            return None
        scale = factor if scaling.op_type == "Mul" else 1.0 / factor
        name = scaling.input[1 - constant]
    product = index.made_by(name, "MatMul")
    if product is None or not index.only_reader(name):
        return None
    transpose = index.made_by(product.input[1], "Transpose")
    if transpose is None or list(_attribute(transpose, "perm")) != ([0, 1, 3, 2] if rank == 4 else [0, 2, 1]):
        return None
    if not index.only_reader(product.input[1]):
        return None
    return product, transpose, scale, scaling


def _finite(index: _Index, name: str, depth: int = 0) -> bool:
    """Whether a value is provably finite: its largest possible magnitude is below float32's largest."""
    return _bound(index, name, depth) < FLOAT32_MAX


def _bound(index: _Index, name: str, depth: int) -> float:
    """An upper bound of |value| from how it is computed; infinity where unknown."""
    value = index.constant(name)
    if value is not None:
        return float(np.abs(value).max(initial=0.0)) if np.isfinite(value).all() else math.inf
    node = index.producer.get(name)
    if node is None or depth > 32:
        return math.inf
    op = node.op_type
    if op == "Cast":
        source = index.graph.types.get(node.input[0])
        if source is None:
            return math.inf
        return {"bool": 1.0, "uint8": 255.0, "int8": 128.0, "int32": 2.0**31, "int64": 2.0**63}.get(
            source.dtype, math.inf
        )
    if op in ("Unsqueeze", "Squeeze", "Reshape", "Expand", "Transpose", "Identity", "Neg", "Slice", "Gather"):
        return _bound(index, node.input[0], depth + 1)
    if op in ("Add", "Sub"):
        return _bound(index, node.input[0], depth + 1) + _bound(index, node.input[1], depth + 1)
    if op == "Mul":
        return _bound(index, node.input[0], depth + 1) * _bound(index, node.input[1], depth + 1)
    if op == "Where":
        return max(_bound(index, node.input[1], depth + 1), _bound(index, node.input[2], depth + 1))
    return math.inf


def _split_heads_input(index: _Index, name: str, heads: int) -> str | None:
    """x when `name` is Transpose(Reshape(x), perm 0 2 1 3) of a [batch, time, heads * d] x, else None."""
    types = index.graph.types
    transpose = index.made_by(name, "Transpose")
    if transpose is None or list(_attribute(transpose, "perm")) != [0, 2, 1, 3]:
        return None
    reshape = index.made_by(transpose.input[0], "Reshape")
    if reshape is None:
        return None
    x, split = types.get(reshape.input[0]), types.get(reshape.output[0])
    if x is None or split is None or x.rank != 3 or split.rank != 4:
        return None
    if not (_same(x.shape[0], split.shape[0]) and _same(x.shape[1], split.shape[1]) and split.shape[2] == heads):
        return None
    if not isinstance(x.shape[2], int) or not isinstance(split.shape[3], int) or x.shape[2] != heads * split.shape[3]:
        return None
    return reshape.input[0]


def _merged_output(index: _Index, name: str, heads: int) -> onnx.NodeProto | None:
    """The Reshape giving [batch, time, heads * d] of Transpose(name, perm 0 2 1 3), name's only reader."""
    types = index.graph.types
    readers = [n for n in index.graph.nodes if name in n.input]
    if len(readers) != 1 or name in index.keep or readers[0].op_type != "Transpose":
        return None
    transpose = readers[0]
    if list(_attribute(transpose, "perm")) != [0, 2, 1, 3] or not index.only_reader(transpose.output[0]):
        return None
    reshape = next((n for n in index.graph.nodes if transpose.output[0] in n.input), None)
    if reshape is None or reshape.op_type != "Reshape" or reshape.input[0] != transpose.output[0]:
        return None
    heads_type, merged = types.get(name), types.get(reshape.output[0])
    if heads_type is None or merged is None or merged.rank != 3 or not isinstance(heads_type.shape[3], int):
        return None
    if not (_same(merged.shape[0], heads_type.shape[0]) and _same(merged.shape[1], heads_type.shape[2])):
        return None
    return reshape if merged.shape[2] == heads * heads_type.shape[3] else None


def _rewrite_attention(graph: Graph, index: _Index, m: dict[str, Any]) -> None:
    qt, kt = m["qt"], m["kt"]
    heads = int(qt.shape[1])
    if m["rank"] == 3:  # one head: the inputs and the result are already [batch, time, d]
        flat, merged = [m["q"], m["k"], m["v"]], m["weighted"]
    else:
        flat = [_split_heads_input(index, m[n], heads) for n in ("q", "k", "v")]
        merged = _merged_output(index, m["weighted"].output[0], heads)
    three_d = all(f is not None for f in flat) and merged is not None
    inputs = flat if three_d else [m["q"], m["k"], m["v"]]
    new: list[onnx.NodeProto] = []
    mask = ""
    if m["mask"] is not None:
        mask = _full_mask(graph, new, m["mask"], inputs[0], inputs[1], qt, kt, time_axis=1 if three_d else 2)
    attributes: dict[str, Any] = {"scale": float(m["scale"])}
    if three_d:
        attributes |= {"q_num_heads": heads, "kv_num_heads": heads}
    output = merged.output[0] if three_d else m["weighted"].output[0]
    names = [*inputs, mask] if mask else inputs
    new.append(helper.make_node("Attention", names, [output], name=graph.fresh("n_Attention"), **attributes))
    removed = {id(n) for n in [*m["chain"], m["weighted"]]}
    last = merged if three_d else m["weighted"]
    nodes = []
    for node in graph.nodes:
        if node is last:
            nodes.extend(new)
        elif id(node) not in removed:
            nodes.append(node)
    graph.nodes[:] = nodes
    drop_dead_nodes(graph, index.keep)


def _full_mask(
    graph: Graph, new: list, mask: str, q: str, k: str, qt: TensorType, kt: TensorType, time_axis: int
) -> str:
    """The mask with its query and key dimensions in full (onnxruntime's Attention does not broadcast them)."""
    mt = graph.types[mask]
    if mt.rank >= 2 and _same(mt.shape[-2], qt.shape[2]) and _same(mt.shape[-1], kt.shape[2]):
        return mask
    memo_key = ("full_mask", mask, str(qt.shape[2]), str(kt.shape[2]))
    if memo_key in graph._memo:
        return graph._memo[memo_key][0]
    lengths = []
    for size, name in ((qt.shape[2], q), (kt.shape[2], k)):
        if isinstance(size, int) or any(i in graph.types and size in graph.types[i].shape for i in graph.inputs):
            lengths.append(graph.length(size, name, time_axis))  # a constant, or a graph input's (at the start)
            continue
        lengths.append(graph.fresh("shape"))
        new.append(
            helper.make_node(
                "Shape", [name], [lengths[-1]], name=graph.fresh("n_Shape"), start=time_axis, end=time_axis + 1
            )
        )
    shape, full = graph.fresh("concat"), graph.fresh("expand")
    new.append(helper.make_node("Concat", lengths, [shape], name=graph.fresh("n_Concat"), axis=0))
    new.append(helper.make_node("Expand", [mask, shape], [full], name=graph.fresh("n_Expand")))
    graph._memo[memo_key] = [full]
    graph.types[full] = mt.with_shape((*mt.shape[:-2], qt.shape[2], kt.shape[2])) if mt.rank >= 2 else mt
    return full


# ---------------------------------------------------------------- sibling projections


def fold_sibling_matmuls(graph: Graph, keep: set[str]) -> None:
    """MatMuls of one input by constant [in, out_i] matrices, each with its constant bias Add or each without,
    become one MatMul by the matrices side by side (one Add of the biases side by side) and a Split."""
    index = _Index(graph, keep)
    groups: dict[tuple[str, bool, int], list[tuple[onnx.NodeProto, onnx.NodeProto | None]]] = {}
    for node in graph.nodes:
        if node.op_type != "MatMul":
            continue
        weight = index.constant(node.input[1])
        if weight is None or weight.ndim != 2 or weight.dtype != np.float32:
            continue
        bias = _bias_of(index, node, weight.shape[1])
        groups.setdefault((node.input[0], bias is not None, weight.shape[0]), []).append((node, bias))
    rewritten = False
    for (x, biased, _), members in groups.items():
        if len(members) < 2:
            continue
        _fold_group(graph, index, x, members, biased)
        rewritten = True
    if rewritten:
        drop_dead_nodes(graph, keep)


def _bias_of(index: _Index, matmul: onnx.NodeProto, width: int) -> onnx.NodeProto | None:
    """The Add of a constant [width] bias that alone reads the MatMul's result, if any."""
    out = matmul.output[0]
    if not index.only_reader(out):
        return None
    add = next((n for n in index.graph.nodes if out in n.input), None)
    if add is None or add.op_type != "Add":
        return None
    other = add.input[1] if add.input[0] == out else add.input[0]
    bias = index.constant(other)
    return add if bias is not None and bias.shape == (width,) and bias.dtype == np.float32 else None


def _fold_group(graph: Graph, index: _Index, x: str, members: list, biased: bool) -> None:
    weights = [index.constant(m.input[1]) for m, _ in members]
    widths = [int(w.shape[1]) for w in weights]
    stem = members[0][0].input[1]
    new = [
        helper.make_node(
            "MatMul",
            [x, graph.constant(np.concatenate(weights, axis=1), "float32", f"{stem}_cat")],
            [graph.fresh("matmul")],
            name=graph.fresh("n_MatMul"),
        )
    ]
    if biased:
        biases = []
        for matmul, add in members:
            other = add.input[1] if add.input[0] == matmul.output[0] else add.input[0]
            biases.append(index.constant(other))
        bias = graph.constant(np.concatenate(biases), "float32", f"{stem}_cat_bias")
        new.append(helper.make_node("Add", [new[-1].output[0], bias], [graph.fresh("add")], name=graph.fresh("n_Add")))
    outputs = [(add if biased else matmul).output[0] for matmul, add in members]
    new.append(
        helper.make_node(
            "Split", [new[-1].output[0], graph.ints(widths, "split")], outputs, name=graph.fresh("n_Split"), axis=-1
        )
    )
    first = members[0][0]
    removed = {id(n) for pair in members for n in pair if n is not None}
    nodes = []
    for node in graph.nodes:
        if node is first:
            nodes.extend(new)
        if id(node) not in removed:
            nodes.append(node)
    graph.nodes[:] = nodes


# ---------------------------------------------------------------- positions and shapes


def fold_position_tables(graph: Graph, keep: set[str]) -> None:
    """Gather(table, Range(0, n, 1)) with n = Gather(Shape(x), i) is Slice(table, 0, Shape(x)[i:i+1])."""
    index = _Index(graph, keep)
    for node in graph.nodes:
        if node.op_type != "Gather" or _attribute(node, "axis", 0) != 0 or index.constant(node.input[0]) is None:
            continue
        positions = index.made_by(node.input[1], "Range")
        if positions is None or index.scalar(positions.input[0]) != 0 or index.scalar(positions.input[2]) != 1:
            continue
        size = index.made_by(positions.input[1], "Gather")
        shape = index.made_by(size.input[0], "Shape") if size is not None else None
        place = index.constant(size.input[1]) if size is not None else None
        if shape is None or place is None or place.ndim != 0 or len(shape.attribute) or _attribute(size, "axis", 0):
            continue
        i = int(place)
        source = graph.types.get(shape.input[0])
        if i < 0 or source is None or i >= source.rank:
            continue
        size = source.shape[i]
        if isinstance(size, int) or any(n in graph.types and size in graph.types[n].shape for n in graph.inputs):
            end = graph.length(size, shape.input[0], i)  # a constant, or one Shape at the start for every reader
        else:
            end = graph.fresh("shape")
            sliced = helper.make_node("Shape", [shape.input[0]], [end], name=graph.fresh("n_Shape"), start=i, end=i + 1)
            graph.nodes.insert(graph.nodes.index(node), sliced)
        node.op_type = "Slice"
        node.input[:] = [node.input[0], graph.ints([0], "start"), end, graph.ints([0], "axes")]
        del node.attribute[:]
    drop_dead_nodes(graph, keep)


def fold_shape_slices(graph: Graph, keep: set[str]) -> None:
    """Gather(Shape(x), [i]) and Slice(Shape(x), [a], [b]) with constant places are Shape(x, start, end)."""
    index = _Index(graph, keep)
    for node in graph.nodes:
        shape = index.made_by(node.input[0], "Shape") if node.input else None
        if shape is None or len(shape.attribute):
            continue
        rank = graph.types[shape.input[0]].rank if shape.input[0] in graph.types else None
        span = None
        if node.op_type == "Gather" and _attribute(node, "axis", 0) == 0:
            place = index.constant(node.input[1])
            if place is not None and place.shape == (1,):
                span = (int(place[0]), int(place[0]) + 1)
        elif node.op_type == "Slice" and 3 <= len(node.input) <= 5:
            starts, ends = index.constant(node.input[1]), index.constant(node.input[2])
            axes_steps = [index.constant(n) for n in node.input[3:]]  # axes [0] and steps [1] only
            plain = all(e is not None and e.shape == (1,) and int(e[0]) == (0, 1)[i] for i, e in enumerate(axes_steps))
            if plain and starts is not None and ends is not None and starts.shape == ends.shape == (1,):
                span = (int(starts[0]), min(int(ends[0]), rank or 0))
        if span is None or rank is None or not (0 <= span[0] < span[1] <= rank):
            continue
        node.op_type = "Shape"
        node.input[:] = [shape.input[0]]
        del node.attribute[:]
        node.attribute.extend([helper.make_attribute("start", span[0]), helper.make_attribute("end", span[1])])
    drop_dead_nodes(graph, keep)


# ---------------------------------------------------------------- dead nodes


def drop_dead_nodes(graph: Graph, keep: set[str]) -> None:
    """Drop the nodes whose results nothing reads (and that are no output), then unread initializers. One sweep
    from the last node back (the nodes are in order), so a dead chain of any length goes at once."""
    needed = set(keep)
    alive = []
    for node in reversed(graph.nodes):
        if any(o in needed for o in node.output):
            alive.append(node)
            needed.update(node.input)
    graph.nodes[:] = alive[::-1]
    for name in [n for n in graph.initializers if n not in needed]:
        del graph.initializers[name]


def fold_add_chains(graph: Graph, keep: set[str]) -> None:
    """Add(Add(a, b), c), the inner one read only there, is Sum(a, b, c) (float values only: Sum is float)."""
    while True:
        index = _Index(graph, keep)
        for node in graph.nodes:
            if node.op_type not in ("Add", "Sum") or graph.types.get(node.output[0]) is None:
                continue
            if not graph.types[node.output[0]].is_float:
                continue
            inner = next((index.made_by(i, "Add", "Sum") for i in node.input if index.only_reader(i)), None)
            if inner is None or inner.output[0] not in node.input:
                continue
            position = list(node.input).index(inner.output[0])
            inputs = [*node.input[:position], *inner.input, *node.input[position + 1 :]]
            node.op_type = "Sum"
            node.input[:] = inputs
            graph.nodes.remove(inner)
            break
        else:
            return


__all__ = [
    "drop_dead_nodes",
    "fold_add_chains",
    "fold_position_tables",
    "fold_shape_slices",
    "fold_sibling_matmuls",
    "fuse_written_attention",
]
