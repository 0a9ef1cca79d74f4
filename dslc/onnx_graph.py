"""A small ONNX graph builder for the native lowering (dslc.lower_onnx): nodes, initializers and the
IR type of every value, with fresh names. Torch-free: weights arrive as numpy arrays.

Each op's lowering (the `onnx` field of its registry entry) receives a `Graph`, the ONNX names of its
inputs with their dslc types, and returns the names of its outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dslc.shapes import TensorType

ONNX_DTYPES = {
    "float32": TensorProto.FLOAT,
    "float64": TensorProto.DOUBLE,
    "float16": TensorProto.FLOAT16,
    "bfloat16": TensorProto.BFLOAT16,
    "int64": TensorProto.INT64,
    "int32": TensorProto.INT32,
    "int8": TensorProto.INT8,
    "uint8": TensorProto.UINT8,
    "bool": TensorProto.BOOL,
}
NUMPY_DTYPES = {
    "float32": np.float32,
    "float64": np.float64,
    "float16": np.float16,
    "int64": np.int64,
    "int32": np.int32,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
}


def fill_value(value: Any, dtype: str) -> TensorProto:
    """A one-element tensor, the `value` attribute of ConstantOfShape."""
    return helper.make_tensor("value", ONNX_DTYPES[dtype], [1], [value])


class NotLowerableError(Exception):
    """The native lowering has no ONNX form for this (an op without one, a pattern it cannot write)."""


@dataclass
class Value:
    """An ONNX value name with the dslc type the checker inferred for it."""

    name: str
    type: TensorType


@dataclass
class Graph:
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: dict[str, onnx.TensorProto] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # state_dict key -> array
    used: set[str] = field(default_factory=set)
    _weight_names: dict[tuple[int, bool, tuple[int, ...] | None], str] = field(default_factory=dict)  # see weight
    _memo: dict[Any, list[str]] = field(default_factory=dict)
    _last_suffix: dict[str, int] = field(default_factory=dict)  # see fresh
    cache: Any = None  # a dslc.decoding.DecodeCache when lowering a decoder's KV-cache graphs
    types: dict[str, TensorType] = field(default_factory=dict)  # the checker's type of each value the IR names
    inputs: list[str] = field(default_factory=list)  # the graph's inputs, which every node may read
    read: set[int] = field(default_factory=set)  # ids of the weight arrays live nodes use (record_live_weights)

    def fresh(self, stem: str) -> str:
        stem = "".join(c if c.isalnum() or c == "_" else "_" for c in stem) or "v"
        name, n = stem, self._last_suffix.get(stem, 1)
        while name in self.used:  # from the stem's last suffix: numbering 17,000 Relu nodes stays linear
            n += 1
            name = f"{stem}_{n}"
        self._last_suffix[stem] = n
        self.used.add(name)
        return name

    def node(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, **attributes: Any) -> list[str]:
        """Add a node; `outputs` is a count (fresh names) or the names to write."""
        names = [self.fresh(op_type.lower()) for _ in range(outputs)] if isinstance(outputs, int) else list(outputs)
        attrs = {k: v for k, v in attributes.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, inputs, names, name=self.fresh(f"n_{op_type}"), **attrs))
        if self.cache is not None:
            self.cache.saw(inputs, names)
        return names

    def one(self, op_type: str, inputs: list[str], **attributes: Any) -> str:
        return self.node(op_type, inputs, 1, **attributes)[0]

    def constant(self, value: Any, dtype: str, stem: str = "const") -> str:
        """An initializer holding `value` (a number or a nested list) as `dtype`."""
        array = np.asarray(value, dtype=NUMPY_DTYPES[dtype])
        name = self.fresh(stem)
        self.initializers[name] = numpy_helper.from_array(array, name)
        return name

    def ints(self, values: list[int] | tuple[int, ...], stem: str = "shape") -> str:
        return self.constant(list(values), "int64", stem)

    def array(self, key: str) -> np.ndarray:
        """The state_dict entry `key`, for a lowering that computes its own constants from it (recorded as used)."""
        array = self._array(key)
        self.read.add(id(array))
        return array

    def _array(self, key: str) -> np.ndarray:
        if key not in self.weights:
            raise NotLowerableError(f"no weight '{key}' in the state dict")
        return self.weights[key]

    def record_live_weights(self) -> None:
        """Add the arrays behind the initializers still in the graph to `read` (after the dead nodes are gone)."""
        self.read.update(cache[0] for cache, name in self._weight_names.items() if name in self.initializers)

    def weight(self, key: str, transposed: bool = False, shape: tuple[int, ...] | None = None) -> str:
        """The initializer of the state_dict entry `key` (`transposed`: of a matrix's transpose; `shape`: reshaped,
        such as a per-channel [C] to [C, 1, 1] that broadcasts over [N, C, H, W]); a tensor shared by two keys (tied
        weights) is stored once."""
        array = self._array(key)
        cache = (id(array), transposed, shape)
        if cache not in self._weight_names:
            name = self.fresh(f"{key}_t" if transposed else key)
            data = array.T if transposed else array
            data = data if shape is None else data.reshape(shape)
            self.initializers[name] = numpy_helper.from_array(np.ascontiguousarray(data), name)
            self._weight_names[cache] = name
        return self._weight_names[cache]

    def length(self, size: Any, name: str, axis: int) -> str:
        """A 1-D int64 [size] of the dimension `axis` of `name`: a constant when the checker knows it, else one Shape
        per symbolic size, of a graph input with that size where there is one (at the graph's start, so that every
        node may read it), or of `name` (where it is, and shared with no other value's)."""
        if isinstance(size, int):
            return self.ints([size])
        source = next(
            (
                (i, self.types[i].shape.index(size))
                for i in self.inputs
                if i in self.types and size in self.types[i].shape
            ),
            None,
        )
        if source is None:
            return self.one("Shape", [name], start=axis, end=axis + 1)

        def build() -> list[str]:
            out = self.fresh("length")
            start, end = source[1], source[1] + 1
            self.nodes.insert(
                0, helper.make_node("Shape", [source[0]], [out], name=self.fresh("n_Shape"), start=start, end=end)
            )
            if self.cache is not None:
                self.cache.saw([source[0]], [out])
            return [out]

        return self.memo(("length", str(size)), build)[0]

    def memo(self, key: Any, build: Any) -> list[str]:
        """The values `build()` adds, built once per `key` (a causal mask per pair of symbolic lengths)."""
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]

    def is_shared(self, key: str) -> bool:
        """Whether another state_dict key holds the same tensor (tied weights)."""
        array = self.weights.get(key)
        return array is not None and sum(a is array for a in self.weights.values()) > 1

    def has_weight(self, key: str) -> bool:
        return key in self.weights
