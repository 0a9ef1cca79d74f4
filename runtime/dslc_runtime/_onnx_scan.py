"""Minimal ONNX (protobuf wire format) scanner.

The runtime must not depend on the ``onnx`` package, yet it has to inspect untrusted files
*before* handing them to onnxruntime: reject corrupt/truncated files with a clear message,
find every tensor stored as external data (to refuse locations that escape the model folder),
check that names are valid UTF-8 and read ``metadata_props``. This module walks just the
messages needed for that, skipping all payloads (raw tensor data is never copied).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ._files import open_regular, require_regular, resolve_inside
from .errors import ModelError

_MAX_DEPTH = 100
"""Message nesting limit: protobuf's own default, so deeper files would fail in onnxruntime too."""
_MAX_FIELDS = 20_000_000
"""Fields the scanner reads before giving up (about 30 s here). Real models need far fewer,
as tensor payloads are skipped whole; a file packed with tiny fields would otherwise keep the
Python loop busy for minutes."""

# Field numbers from onnx.proto (stable since IR version 3), per message kind: the sub-messages
# the scanner walks, and the text fields it checks. onnxruntime turns names into Python strings
# and error messages; invalid UTF-8 there fails inside onnxruntime with an unreadable error
# (after printing an "EP Error" banner), so such files are refused here, saying which field.
_MESSAGES: dict[str, dict[int, str]] = {
    "model": {7: "graph", 8: "opset", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "function": {7: "node", 11: "attribute", 12: "value_info"},
    "graph": {
        1: "node",
        5: "tensor",
        11: "value_info",
        12: "value_info",
        13: "value_info",
        15: "sparse",
    },
    "node": {5: "attribute"},
    "attribute": {
        5: "tensor",
        6: "graph",
        10: "tensor",
        11: "graph",
        14: "type",
        15: "type",
        22: "sparse",
        23: "sparse",
    },
    "sparse": {1: "tensor", 2: "tensor"},
    "value_info": {2: "type"},
    "type": {
        1: "tensor_type",
        4: "sequence_type",
        5: "map_type",
        8: "tensor_type",
        9: "optional_type",
    },
    "tensor_type": {2: "shape"},
    "sequence_type": {1: "type"},
    "optional_type": {1: "type"},
    "map_type": {2: "type"},
    "shape": {1: "dim"},
}
_TEXTS: dict[str, dict[int, str]] = {
    "model": {2: "producer_name", 3: "producer_version", 4: "domain", 6: "doc_string"},
    "opset": {1: "opset domain"},
    "function": {
        1: "function name",
        4: "function input",
        5: "function output",
        6: "function attribute",
        10: "function domain",
    },
    "graph": {2: "graph name", 10: "graph doc_string"},
    "node": {
        1: "node input",
        2: "node output",
        3: "node name",
        4: "op_type",
        6: "node doc_string",
        7: "node domain",
    },
    "attribute": {1: "attribute name", 13: "attribute doc_string", 21: "ref_attr_name"},
    "tensor": {8: "tensor name", 12: "tensor doc_string"},
    "value_info": {1: "input/output name", 3: "input/output doc_string"},
    "type": {6: "type denotation"},
    "dim": {2: "dimension name", 3: "dimension denotation"},
}
_MODEL_IR_VERSION, _MODEL_GRAPH, _MODEL_METADATA = 1, 7, 14
_GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT = 5, 11, 12
_VALUE_NAME, _VALUE_TYPE, _TYPE_TENSOR, _TENSOR_ELEM_TYPE, _TENSOR_SHAPE = 1, 2, 1, 1, 2
_SHAPE_DIM, _DIM_VALUE, _DIM_PARAM = 1, 1, 2
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA = 8, 13
_ENTRY_KEY, _ENTRY_VALUE = 1, 2


class _Truncated(Exception):
    pass


@dataclass
class ExternalRef:
    """One tensor whose data lives in a separate file."""

    tensor: str
    location: str


@dataclass(frozen=True)
class PortScan:
    """A graph input or output as the file declares it: ONNX's element type number (0: not a tensor or not
    given) and dims (a size, a dim_param name, or None), or no shape at all."""

    name: str
    elem_type: int
    shape: tuple[int | str | None, ...] | None


@dataclass
class ModelScan:
    """What the scanner learnt about a model file."""

    ir_version: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    external: list[ExternalRef] = field(default_factory=list)
    inputs: list[PortScan] = field(default_factory=list)  # the main graph's, initializers left out
    outputs: list[PortScan] = field(default_factory=list)


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Truncated
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield ``(field_number, wire_type, a, b)``.

    For length-delimited fields ``(a, b)`` is the payload span, for varints ``a`` is the value.
    """
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Truncated
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, 0
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise _Truncated
            yield number, wire, pos, pos + length
            pos += length
        elif wire == 1:
            pos += 8
            if pos > end:
                raise _Truncated
        elif wire == 5:
            pos += 4
            if pos > end:
                raise _Truncated
        else:  # groups (3, 4) are not used by ONNX; anything else is garbage
            raise _Truncated


def _utf8(buf: memoryview, a: int, b: int, what: str) -> str:
    try:
        return bytes(buf[a:b]).decode("utf-8")
    except UnicodeDecodeError:
        raise ModelError(f"the model's {what} is not valid UTF-8 (corrupt file?)") from None


def _entry(buf: memoryview, a: int, b: int, what: str) -> tuple[str, str]:
    """A ``StringStringEntryProto`` (metadata, external data): ``(key, value)``."""
    key = value = ""
    for number, wire, x, y in _fields(buf, a, b):
        if wire == 2 and number == _ENTRY_KEY:
            key = _utf8(buf, x, y, f"{what} key")
        elif wire == 2 and number == _ENTRY_VALUE:
            value = _utf8(buf, x, y, f"{what} {key!r}")
    return key, value


class _Scanner:
    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.result = ModelScan()
        self.budget = _MAX_FIELDS

    def fields(self, a: int, b: int) -> Iterator[tuple[int, int, int, int]]:
        """:func:`_fields`, counted against the scan's field budget."""
        for item in _fields(self.buf, a, b):
            self.budget -= 1
            if self.budget < 0:
                raise ModelError(
                    f"the file holds more than {_MAX_FIELDS:,} protobuf fields; refusing to scan it"
                )
            yield item

    def model(self) -> ModelScan:
        buf, has_graph = self.buf, False
        for number, wire, a, b in self.fields(0, len(buf)):
            if number == _MODEL_IR_VERSION and wire == 0:
                self.result.ir_version = a
            elif number == _MODEL_METADATA and wire == 2:
                key, value = _entry(buf, a, b, "metadata")
                self.result.metadata[key] = value
            else:
                if number == _MODEL_GRAPH and wire == 2:
                    has_graph = True
                    self.ports(a, b)
                self.field("model", number, wire, a, b, 1)
        if not has_graph:
            raise ModelError("not an ONNX model: no graph found")
        return self.result

    def ports(self, a: int, b: int) -> None:
        """The main graph's inputs (those no initializer gives a value) and outputs."""
        initialized, inputs, outputs = set(), [], []
        for number, wire, x, y in self.fields(a, b):
            if wire != 2:
                continue
            if number == _GRAPH_INITIALIZER:
                initialized.add(self.tensor_name(x, y))
            elif number in (_GRAPH_INPUT, _GRAPH_OUTPUT):
                (inputs if number == _GRAPH_INPUT else outputs).append(self.port(x, y))
        self.result.inputs = [p for p in inputs if p.name not in initialized]
        self.result.outputs = outputs

    def tensor_name(self, a: int, b: int) -> str:
        for number, wire, x, y in self.fields(a, b):
            if number == _TENSOR_NAME and wire == 2:
                return _utf8(self.buf, x, y, "tensor name")
        return ""

    def port(self, a: int, b: int) -> PortScan:
        """A ValueInfoProto: its name, and its tensor type's element type and shape."""
        name, elem_type, shape = "", 0, None
        for number, wire, x, y in self.fields(a, b):
            if wire == 2 and number == _VALUE_NAME:
                name = _utf8(self.buf, x, y, "input/output name")
            elif wire == 2 and number == _VALUE_TYPE:
                for t_number, t_wire, tx, ty in self.fields(x, y):
                    if t_wire == 2 and t_number == _TYPE_TENSOR:
                        elem_type, shape = self.tensor_type(tx, ty)
        return PortScan(name, elem_type, shape)

    def tensor_type(self, a: int, b: int) -> tuple[int, tuple[int | str | None, ...] | None]:
        elem_type, shape = 0, None
        for number, wire, x, y in self.fields(a, b):
            if wire == 0 and number == _TENSOR_ELEM_TYPE:
                elem_type = x
            elif wire == 2 and number == _TENSOR_SHAPE:
                shape = tuple(
                    self.dim(dx, dy)
                    for d_number, d_wire, dx, dy in self.fields(x, y)
                    if d_wire == 2 and d_number == _SHAPE_DIM
                )
        return elem_type, shape

    def dim(self, a: int, b: int) -> int | str | None:
        for number, wire, x, y in self.fields(a, b):
            if wire == 0 and number == _DIM_VALUE:
                return x if x < 1 << 63 else None  # a negative int64 (two's complement): no size
            if wire == 2 and number == _DIM_PARAM:
                return _utf8(self.buf, x, y, "dimension name")
        return None

    def message(self, kind: str, a: int, b: int, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise ModelError(f"ONNX model nesting is too deep (more than {_MAX_DEPTH} levels)")
        if kind == "tensor":
            self.tensor(a, b)
            return
        for number, wire, x, y in self.fields(a, b):
            self.field(kind, number, wire, x, y, depth)

    def field(self, kind: str, number: int, wire: int, a: int, b: int, depth: int) -> None:
        if wire != 2:
            return
        text = _TEXTS.get(kind, {}).get(number)
        if text is not None:
            _utf8(self.buf, a, b, text)
            return
        inner = _MESSAGES.get(kind, {}).get(number)
        if inner is not None:
            self.message(inner, a, b, depth + 1)

    def tensor(self, a: int, b: int) -> None:
        name, location = "", None
        for number, wire, x, y in self.fields(a, b):
            if wire != 2:
                continue
            if number == _TENSOR_NAME:
                name = _utf8(self.buf, x, y, "tensor name")
            elif number == _TENSOR_EXTERNAL_DATA:
                key, value = _entry(self.buf, x, y, f"external data of tensor {name!r}")
                if key == "location":
                    location = value
            else:
                self.field("tensor", number, wire, x, y, 0)
        if location is not None:
            self.result.external.append(ExternalRef(name, location))


def scan_bytes(data: bytes | memoryview | mmap.mmap, *, source: str = "<bytes>") -> ModelScan:
    """Scan a serialized ModelProto; raise :class:`ModelError` if it is not a valid one."""
    if len(data) == 0:
        raise ModelError(f"{source}: file is empty, not an ONNX model")
    # Errors are raised outside the ``except`` blocks so that no traceback keeps views of an
    # mmap alive (which would make closing the map fail).
    problem: str | None = None
    try:
        return _Scanner(memoryview(data)).model()
    except _Truncated:
        problem = "file is truncated or corrupt (invalid protobuf); re-export or re-download it"
    except ModelError as exc:
        problem = str(exc)
    raise ModelError(f"{source}: {problem}")


def scan_file(path: Path) -> ModelScan:
    """Scan an ONNX file without copying its payloads (memory-mapped)."""
    with open_regular(path, "model file", ModelError) as fh:
        try:
            if os.fstat(fh.fileno()).st_size == 0:
                return scan_bytes(b"", source=str(path))
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return scan_bytes(mm, source=str(path))
        except OSError as exc:
            raise ModelError(f"cannot read model file {path}: {exc.strerror or exc}") from None


def check_external_data(path: Path, scan: ModelScan) -> None:
    """Refuse external data that is absolute, uses ``..``, leaves the folder or is no regular file."""
    folder = path.resolve().parent
    for ref in scan.external:
        what = f"tensor {ref.tensor!r} external data location"
        try:
            target = resolve_inside(folder, ref.location, what, "the model's folder", ModelError)
        except ModelError as exc:
            raise ModelError(f"{path}: refusing to load: {exc}") from None
        if not os.path.exists(target):
            raise ModelError(
                f"{path}: external data file {ref.location!r} for tensor {ref.tensor!r} is missing "
                f"(expected next to the model, at {target})"
            )
        require_regular(target, f"external data file of tensor {ref.tensor!r}", ModelError)
