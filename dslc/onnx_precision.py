"""`dslc build --precision fp16`: a float32 graph rewritten to compute in float16.

Weights, constants and every float tensor inside the graph become float16; the graph's inputs and outputs stay
float32 (a Cast after each input and before each output), so an application feeds and reads the same arrays as the
float32 file. Ops onnxruntime's CPU provider has no float16 kernel for, and ops whose float16 result would lose
too much (a sum over many values), keep float32 between Casts. The caller verifies the result against PyTorch.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dslc.onnx_files import infer_shapes

# Ops that stay float32: no float16 kernel in onnxruntime's CPU provider (RNNs; the Scan of an RNN's steps, whose body
# holds float32 weights), or an accumulation whose float16 result overflows or loses its low bits (long reductions;
# Exp before a sum).
FLOAT32_OPS = frozenset(
    {"LSTM", "GRU", "RNN", "Scan", "ReduceSum", "ReduceSumSquare", "ReduceLogSumExp", "CumSum", "Exp"}
)
# Inputs the ONNX standard types float32 whatever the data's type: Resize's roi and scales.
FLOAT32_INPUTS = {"Resize": (1, 2)}
FLOAT16_MAX = float(np.finfo(np.float16).max)


class PrecisionError(Exception):
    """The graph cannot be written in this precision; the message says why."""


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` computing in float16 (see the module docstring). Raises PrecisionError for a weight
    beyond float16's range (65504), which would become infinite."""
    model = _copy(model)
    graph = model.graph
    _convert_initializers(graph)
    inputs = {i.name for i in graph.input if i.type.tensor_type.elem_type == TensorProto.FLOAT}
    outputs = {o.name for o in graph.output if o.type.tensor_type.elem_type == TensorProto.FLOAT}
    renamed = {name: f"{name}_fp16" for name in inputs | outputs}  # float32 at the boundary, float16 inside
    nodes = [_cast(name, renamed[name], TensorProto.FLOAT16) for name in sorted(inputs)]
    fed_to_matmul = {name for node in graph.node if node.op_type in ("MatMul", "Gemm") for name in node.input}
    for node in graph.node:
        # onnxruntime 1.31's CPU provider crashes (a segmentation fault) fusing a float16 Transpose into a MatMul
        keep = node.op_type in FLOAT32_OPS or (node.op_type == "Transpose" and node.output[0] in fed_to_matmul)
        node.input[:] = [renamed.get(name, name) for name in node.input]
        node.output[:] = [renamed.get(name, name) for name in node.output]
        if keep:
            nodes += _keep_float32(node)
            continue
        _convert_node(node)
        inputs_fp32 = [i for i in FLOAT32_INPUTS.get(node.op_type, ()) if i < len(node.input) and node.input[i]]
        nodes += [_widen_input(node, i) for i in inputs_fp32]
        nodes.append(node)
    nodes += [_cast(renamed[name], name, TensorProto.FLOAT) for name in sorted(outputs)]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # float32 types of the values inside: inferred again
    return infer_shapes(model)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _cast(source: str, target: str, to: int) -> onnx.NodeProto:
    return helper.make_node("Cast", [source], [target], name=f"cast_{target}", to=to)


def _convert_initializers(graph: onnx.GraphProto) -> None:
    for index, tensor in enumerate(graph.initializer):
        if tensor.data_type == TensorProto.FLOAT:
            graph.initializer[index].CopyFrom(_half(tensor))


def _half(tensor: onnx.TensorProto) -> onnx.TensorProto:
    values = numpy_helper.to_array(tensor)
    largest = float(np.abs(values).max(initial=0.0))
    if largest > FLOAT16_MAX:
        raise PrecisionError(f"'{tensor.name}' holds {largest:.3g}, beyond float16's largest value ({FLOAT16_MAX:g})")
    return numpy_helper.from_array(values.astype(np.float16), tensor.name)


def _convert_node(node: onnx.NodeProto) -> None:
    """Float32 attributes of a node that make tensors (Constant values, Cast targets) become float16."""
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == TensorProto.FLOAT:
            attribute.t.CopyFrom(_half(attribute.t))
        elif node.op_type in ("Cast", "CastLike") and attribute.name == "to" and attribute.i == TensorProto.FLOAT:
            attribute.i = TensorProto.FLOAT16
        elif attribute.type == onnx.AttributeProto.GRAPH:
            raise PrecisionError(f"{node.op_type} holds a subgraph, which --precision fp16 does not convert")


def _widen_input(node: onnx.NodeProto, index: int) -> onnx.NodeProto:
    """A Cast to float32 of the node's input `index`, which the node then reads."""
    wide = f"{node.input[index]}_fp32_for_{node.output[0]}"
    cast = _cast(node.input[index], wide, TensorProto.FLOAT)
    node.input[index] = wide
    return cast


def _keep_float32(node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """`node` between Casts: its float inputs up to float32, its outputs back down to float16 (integer inputs and
    left-out optional ones as they are)."""
    indices = [i for i, name in enumerate(node.input) if name and not _integer_input(node, i)]
    before, after = [_widen_input(node, i) for i in indices], []
    for index, name in enumerate(node.output):
        if name:
            wide = f"{name}_fp32"
            after.append(_cast(wide, name, TensorProto.FLOAT16))
            node.output[index] = wide
    return [*before, node, *after]


def _integer_input(node: onnx.NodeProto, index: int) -> bool:
    """Inputs that hold integers whatever the precision: axes, sequence lengths."""
    integer_inputs = {"ReduceSum": {1}, "ReduceSumSquare": {1}, "ReduceLogSumExp": {1}, "CumSum": {1}}
    integer_inputs |= {"LSTM": {4}, "GRU": {4}, "RNN": {4}}
    return index in integer_inputs.get(node.op_type, set())
