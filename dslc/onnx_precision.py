"""`dslc build --precision fp16|bf16`: a float32 graph rewritten to compute in float16 or bfloat16.

Weights, constants and every float tensor inside the graph become 16-bit; the graph's inputs and outputs stay
float32 (a Cast after each input and before each output), so an application feeds and reads the same arrays as the
float32 file. Ops onnxruntime's CPU provider has no float16 kernel for, and ops whose 16-bit result would lose
too much (a sum over many values), keep float32 between Casts. The caller verifies the result against PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Half:
    """A 16-bit float type a graph can compute in."""

    name: str  # as messages say it
    elem_type: int  # TensorProto's
    largest: float  # a weight beyond it would become infinite
    # onnxruntime 1.31's CPU provider crashes (a segmentation fault) fusing a float16 Transpose into a MatMul; it
    # has no bfloat16 kernels at all, so the bfloat16 graph keeps its Transposes 16-bit
    float32_transposes: bool

    def array(self, values: np.ndarray) -> np.ndarray:
        if self.elem_type == TensorProto.BFLOAT16:
            import ml_dtypes  # onnx's own dependency; numpy has no bfloat16

            return values.astype(ml_dtypes.bfloat16)
        return values.astype(np.float16)


FLOAT16 = Half("float16", TensorProto.FLOAT16, FLOAT16_MAX, float32_transposes=True)
BFLOAT16 = Half("bfloat16", TensorProto.BFLOAT16, float(np.finfo(np.float32).max), float32_transposes=False)
HALVES = {half.name: half for half in (FLOAT16, BFLOAT16)}


class PrecisionError(Exception):
    """The graph cannot be written in this precision; the message says why."""


RECURRENT_OPS = ("LSTM", "GRU", "RNN", "Scan")


def float32_layers(model: onnx.ModelProto) -> list[str]:
    """The recurrent ops a 16-bit graph of `model` keeps float32 (with their weights), each type once."""
    return list(dict.fromkeys(n.op_type for n in model.graph.node if n.op_type in RECURRENT_OPS))


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` computing in float16 (see the module docstring). Raises PrecisionError for a weight
    beyond float16's range (65504), which would become infinite."""
    return to_half(model, FLOAT16)


def to_bfloat16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` computing in bfloat16: float32's range, 8 significant bits."""
    return to_half(model, BFLOAT16)


def to_half(model: onnx.ModelProto, half: Half) -> onnx.ModelProto:
    model = _copy(model)
    graph = model.graph
    _convert_initializers(graph, half)
    inputs = {i.name for i in graph.input if i.type.tensor_type.elem_type == TensorProto.FLOAT}
    outputs = {o.name for o in graph.output if o.type.tensor_type.elem_type == TensorProto.FLOAT}
    renamed = {name: f"{name}_{half.name}" for name in inputs | outputs}  # float32 at the boundary, 16-bit inside
    nodes = [_cast(name, renamed[name], half.elem_type) for name in sorted(inputs)]
    fed_to_matmul = {name for node in graph.node if node.op_type in ("MatMul", "Gemm") for name in node.input}
    for node in graph.node:
        transpose = node.op_type == "Transpose" and node.output[0] in fed_to_matmul
        keep = node.op_type in FLOAT32_OPS or (transpose and half.float32_transposes)
        node.input[:] = [renamed.get(name, name) for name in node.input]
        node.output[:] = [renamed.get(name, name) for name in node.output]
        if keep:
            nodes += _keep_float32(node, half)
            continue
        _convert_node(node, half)
        inputs_fp32 = [i for i in FLOAT32_INPUTS.get(node.op_type, ()) if i < len(node.input) and node.input[i]]
        nodes += [_widen_input(node, i) for i in inputs_fp32]
        nodes.append(node)
    nodes += [_cast(renamed[name], name, TensorProto.FLOAT) for name in sorted(outputs)]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # float32 types of the values inside: inferred again
    model.metadata_props.add(key="dslc.precision", value=half.name)  # the runtime's hint when a provider lacks it
    return infer_shapes(model)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _cast(source: str, target: str, to: int) -> onnx.NodeProto:
    return helper.make_node("Cast", [source], [target], name=f"cast_{target}", to=to)


def _convert_initializers(graph: onnx.GraphProto, half: Half) -> None:
    for index, tensor in enumerate(graph.initializer):
        if tensor.data_type == TensorProto.FLOAT:
            graph.initializer[index].CopyFrom(_narrow(tensor, half))


def _narrow(tensor: onnx.TensorProto, half: Half) -> onnx.TensorProto:
    values = numpy_helper.to_array(tensor)
    largest = float(np.abs(values).max(initial=0.0))
    if largest > half.largest:
        raise PrecisionError(
            f"'{tensor.name}' holds {largest:.3g}, beyond {half.name}'s largest value ({half.largest:g})"
        )
    return numpy_helper.from_array(half.array(values), tensor.name)


def _convert_node(node: onnx.NodeProto, half: Half) -> None:
    """Float32 attributes of a node that make tensors (Constant values, Cast targets) become 16-bit."""
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == TensorProto.FLOAT:
            attribute.t.CopyFrom(_narrow(attribute.t, half))
        elif node.op_type in ("Cast", "CastLike") and attribute.name == "to" and attribute.i == TensorProto.FLOAT:
            attribute.i = half.elem_type
        elif attribute.type == onnx.AttributeProto.GRAPH:
            raise PrecisionError(f"{node.op_type} holds a subgraph, which a {half.name} graph does not convert")


def _widen_input(node: onnx.NodeProto, index: int) -> onnx.NodeProto:
    """A Cast to float32 of the node's input `index`, which the node then reads."""
    wide = f"{node.input[index]}_fp32_for_{node.output[0]}"
    cast = _cast(node.input[index], wide, TensorProto.FLOAT)
    node.input[index] = wide
    return cast


def _keep_float32(node: onnx.NodeProto, half: Half) -> list[onnx.NodeProto]:
    """`node` between Casts: its float inputs up to float32, its outputs back down to 16 bits (integer inputs and
    left-out optional ones as they are)."""
    indices = [i for i, name in enumerate(node.input) if name and not _integer_input(node, i)]
    before, after = [_widen_input(node, i) for i in indices], []
    for index, name in enumerate(node.output):
        if name:
            wide = f"{name}_fp32"
            after.append(_cast(wide, name, half.elem_type))
            node.output[index] = wide
    return [*before, node, *after]


def _integer_input(node: onnx.NodeProto, index: int) -> bool:
    """Inputs that hold integers whatever the precision: axes, sequence lengths."""
    integer_inputs = {"ReduceSum": {1}, "ReduceSumSquare": {1}, "ReduceLogSumExp": {1}, "CumSum": {1}}
    integer_inputs |= {"LSTM": {4}, "GRU": {4}, "RNN": {4}}
    return index in integer_inputs.get(node.op_type, set())
