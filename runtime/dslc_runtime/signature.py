"""Model signatures (names, dtypes, symbolic shapes) and input validation."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InputError

Dim = int | str | None
"""A dimension: fixed size (int), symbolic name (str, ONNX dim_param) or unknown (None)."""

_ORT_TYPES = {
    "float": "float32",
    "double": "float64",
    "float16": "float16",
    "bfloat16": "bfloat16",
    "int8": "int8",
    "int16": "int16",
    "int32": "int32",
    "int64": "int64",
    "uint8": "uint8",
    "uint16": "uint16",
    "uint32": "uint32",
    "uint64": "uint64",
    "bool": "bool",
    "string": "string",
}


_ONNX_TYPES = {  # TensorProto.DataType numbers, as the graph file stores an input's type
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    8: "string",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
    16: "bfloat16",
}


def dtype_from_onnx(elem_type: int) -> str:
    """ONNX's element type number (``1``) -> ``"float32"``, as :func:`dtype_from_ort` names it."""
    return _ONNX_TYPES.get(elem_type, f"onnx type {elem_type}")


def dtype_from_ort(type_str: str) -> str:
    """``"tensor(float)"`` -> ``"float32"``; non-tensor types are returned unchanged."""
    if type_str.startswith("tensor(") and type_str.endswith(")"):
        return _ORT_TYPES.get(type_str[7:-1], type_str[7:-1])
    return type_str


def dtype_name(dtype: Any) -> str:
    """Canonical name of a numpy / torch / DLPack-producer dtype (``torch.float32`` -> float32)."""
    name = getattr(dtype, "name", None)
    if not isinstance(name, str):
        name = str(dtype)
    name = name.rsplit(".", 1)[-1]
    if name in ("bool_", "bool8"):
        return "bool"
    return name


DISPLAY_LIMIT = 120


def display(text: str, limit: int = DISPLAY_LIMIT) -> str:
    """``text`` safe to print: control and unprintable characters escaped, long text shortened.

    Names come from untrusted model files; printed raw, a newline or an escape sequence would
    forge output lines or drive the terminal, and lone surrogates would fail to encode.
    """
    if not text.isprintable():
        text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def quoted(text: str, limit: int = DISPLAY_LIMIT) -> str:
    """``repr`` of ``text`` shortened to ``limit`` (repr already escapes unprintable characters)."""
    return repr(text if len(text) <= limit else f"{text[: limit - 3]}...")


def _fmt_dim(d: Dim) -> str:
    return "?" if d is None else display(str(d))


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]
    doc: str = ""

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    @property
    def numpy_dtype(self) -> np.dtype[Any] | None:
        """The numpy dtype, or None for types numpy cannot hold (bfloat16, sequences, maps)."""
        if self.dtype == "string":
            return np.dtype(object)
        try:
            return np.dtype(self.dtype)
        except TypeError:
            return None

    def __str__(self) -> str:
        dims = ", ".join(_fmt_dim(d) for d in self.shape)
        text = f"{display(self.name)}: {display(self.dtype)}[{dims}]"
        return f"{text}  # {display(self.doc)}" if self.doc else text

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "doc": self.doc}


@dataclass(frozen=True)
class Signature:
    """Inputs and outputs of a model, in graph order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_sizes: dict[str, int] = field(default_factory=dict)
    """The largest value of a named dim (``{"time": 128}``: a position table's rows), checked before a run."""
    _by_name: dict[str, TensorSpec] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_name.update({s.name: s for s in (*self.inputs, *self.outputs)})

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def __getitem__(self, name: str) -> TensorSpec:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no input or output named {name!r}; signature: {self}") from None

    def describe(self, indent: str = "  ") -> str:
        lines = [f"{indent}inputs:"]
        lines += [f"{indent}  {s}" for s in self.inputs] or [f"{indent}  (none)"]
        lines.append(f"{indent}outputs:")
        lines += [f"{indent}  {s}" for s in self.outputs] or [f"{indent}  (none)"]
        if self.max_sizes:
            largest = ", ".join(f"{display(k)} <= {v}" for k, v in self.max_sizes.items())
            lines.append(f"{indent}sizes: {largest}")
        return "\n".join(lines)

    def __str__(self) -> str:
        ins = ", ".join(str(TensorSpec(s.name, s.dtype, s.shape)) for s in self.inputs)
        outs = ", ".join(str(TensorSpec(s.name, s.dtype, s.shape)) for s in self.outputs)
        return f"({ins}) -> ({outs})"

    def to_json(self) -> dict[str, Any]:
        largest = {"max_sizes": dict(self.max_sizes)} if self.max_sizes else {}
        return {
            "inputs": [s.to_json() for s in self.inputs],
            "outputs": [s.to_json() for s in self.outputs],
            **largest,
        }


def merge_spec(
    name: str, dtype: str, shape: Sequence[Any], declared: Mapping[str, Any] | None
) -> TensorSpec:
    """Build a spec from the graph, enriched by declared metadata (doc, names of unknown dims)."""
    dims: list[Dim] = [d if isinstance(d, int | str) else None for d in shape]
    doc = ""
    if declared:
        doc = str(declared.get("doc") or "")
        decl_shape = declared.get("shape")
        if isinstance(decl_shape, list) and len(decl_shape) == len(dims):
            dims = [
                dd if d is None and isinstance(dd, int | str) else d
                for d, dd in zip(dims, decl_shape, strict=True)
            ]
    return TensorSpec(name, dtype, tuple(dims), doc)


def input_error(signature: Signature, problems: Iterable[str], got: str = "") -> InputError:
    lines = ["invalid model inputs:"]
    lines += [f"  - {p}" for p in problems]
    if got:
        lines.append(f"got:\n  {got}")
    lines.append("expected signature:")
    lines.append(signature.describe())
    return InputError("\n".join(lines))


def describe_values(values: Mapping[str, Any]) -> str:
    parts = []
    for name, value in values.items():
        shape = getattr(value, "shape", None)
        dtype = getattr(value, "dtype", None)
        if callable(shape):  # OrtValue
            shape, dtype = value.shape(), dtype_from_ort(value.data_type())
        if shape is None:
            parts.append(f"{display(str(name))}: {type(value).__name__}")
        else:
            dims = ", ".join(str(d) for d in shape)
            parts.append(f"{display(str(name))}: {dtype_name(dtype)}[{dims}]")
    return ", ".join(parts)
