"""Minimal ONNX (protobuf wire format) scanner.

The runtime must not depend on the ``onnx`` package, yet it has to inspect untrusted files
*before* handing them to onnxruntime: reject corrupt/truncated files with a clear message,
find every tensor stored as external data (to refuse locations that escape the model folder)
and read ``metadata_props``. This module walks just the fields needed for that, skipping all
payloads (raw tensor data is never copied).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ._files import open_regular, require_regular, resolve_inside
from .errors import ModelError

_MAX_DEPTH = 64

# Field numbers from onnx.proto (stable since IR version 3).
_MODEL_IR_VERSION, _MODEL_GRAPH, _MODEL_METADATA, _MODEL_TRAINING, _MODEL_FUNCTIONS = (
    1,
    7,
    14,
    20,
    25,
)
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 5, 15
_NODE_ATTRIBUTE = 5
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA = 8, 13
_TRAINING_INIT, _TRAINING_ALGO = 1, 2
_FUNCTION_NODE = 7
_ENTRY_KEY, _ENTRY_VALUE = 1, 2


class _Truncated(Exception):
    pass


@dataclass
class ExternalRef:
    """One tensor whose data lives in a separate file."""

    tensor: str
    location: str


@dataclass
class ModelScan:
    """What the scanner learnt about a model file."""

    ir_version: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    external: list[ExternalRef] = field(default_factory=list)


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


def _text(buf: memoryview, a: int, b: int) -> str:
    return bytes(buf[a:b]).decode("utf-8", errors="replace")


def _entry(buf: memoryview, a: int, b: int) -> tuple[str, str]:
    key = value = ""
    for number, wire, x, y in _fields(buf, a, b):
        if wire == 2 and number == _ENTRY_KEY:
            key = _text(buf, x, y)
        elif wire == 2 and number == _ENTRY_VALUE:
            value = _text(buf, x, y)
    return key, value


class _Scanner:
    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.result = ModelScan()

    def model(self) -> ModelScan:
        buf, has_graph = self.buf, False
        for number, wire, a, b in _fields(buf, 0, len(buf)):
            if number == _MODEL_IR_VERSION and wire == 0:
                self.result.ir_version = a
            elif wire != 2:
                continue
            elif number == _MODEL_GRAPH:
                has_graph = True
                self.graph(a, b, 1)
            elif number == _MODEL_METADATA:
                key, value = _entry(buf, a, b)
                self.result.metadata[key] = value
            elif number == _MODEL_FUNCTIONS:
                self.nodes_of(a, b, _FUNCTION_NODE, 1)
            elif number == _MODEL_TRAINING:
                for n, w, x, y in _fields(buf, a, b):
                    if w == 2 and n in (_TRAINING_INIT, _TRAINING_ALGO):
                        self.graph(x, y, 2)
        if not has_graph:
            raise ModelError("not an ONNX model: no graph found")
        return self.result

    def graph(self, a: int, b: int, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise ModelError("ONNX graph nesting is too deep")
        for number, wire, x, y in _fields(self.buf, a, b):
            if wire != 2:
                continue
            if number == _GRAPH_NODE:
                self.node(x, y, depth)
            elif number == _GRAPH_INITIALIZER:
                self.tensor(x, y)
            elif number == _GRAPH_SPARSE_INITIALIZER:
                self.sparse(x, y)

    def nodes_of(self, a: int, b: int, node_field: int, depth: int) -> None:
        for number, wire, x, y in _fields(self.buf, a, b):
            if wire == 2 and number == node_field:
                self.node(x, y, depth)

    def node(self, a: int, b: int, depth: int) -> None:
        for number, wire, x, y in _fields(self.buf, a, b):
            if wire == 2 and number == _NODE_ATTRIBUTE:
                self.attribute(x, y, depth)

    def attribute(self, a: int, b: int, depth: int) -> None:
        for number, wire, x, y in _fields(self.buf, a, b):
            if wire != 2:
                continue
            if number in (_ATTR_G, _ATTR_GRAPHS):
                self.graph(x, y, depth + 1)
            elif number in (_ATTR_T, _ATTR_TENSORS):
                self.tensor(x, y)
            elif number in (_ATTR_SPARSE, _ATTR_SPARSES):
                self.sparse(x, y)

    def sparse(self, a: int, b: int) -> None:
        for number, wire, x, y in _fields(self.buf, a, b):
            if wire == 2 and number in (_SPARSE_VALUES, _SPARSE_INDICES):
                self.tensor(x, y)

    def tensor(self, a: int, b: int) -> None:
        name, location = "", None
        for number, wire, x, y in _fields(self.buf, a, b):
            if wire != 2:
                continue
            if number == _TENSOR_NAME:
                name = _text(self.buf, x, y)
            elif number == _TENSOR_EXTERNAL_DATA:
                key, value = _entry(self.buf, x, y)
                if key == "location":
                    location = value
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
        what = f"tensor {ref.tensor!r} stores its data at"
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
