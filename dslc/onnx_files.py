"""dslc's ONNX files at any size: protobuf serializes at most 2 GiB, so a graph whose weights pass
EXTERNAL_DATA_BYTES keeps them in one file beside it, `<file>.onnx.data` (ONNX's external data, which onnxruntime
and `onnx.load` read from the .onnx file's folder). Shape inference and the full check work at any size too."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import onnx
from onnx import TensorProto

EXTERNAL_DATA_BYTES = 1 << 30  # of initializers: below protobuf's 2 GiB with room for the graph and metadata
SMALL_TENSOR_BYTES = 1024  # kept in the graph: shapes and axes (shape inference reads them), scalars
# Past this, shape inference runs on a copy without weight values: onnx serializes the model it infers, twice over.
INFER_WITHOUT_WEIGHTS_BYTES = 16 << 20


def data_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.data")


def file_bytes(path: Path) -> int:
    """The size of an ONNX file with its external data."""
    data = data_path(path)
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def checksums(path: Path) -> dict[str, str]:
    """The manifest's record of an ONNX file: its sha256 and, when it has one, its data file's name and sha256, so
    the runtime can tell a damaged or swapped copy of either."""
    record = {"onnx_sha256": _sha256(path)}
    data = data_path(path)
    if data.exists():
        record.update(onnx_data=data.name, onnx_data_sha256=_sha256(data))
    return record


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):  # a data file can be many GiB
            digest.update(block)
    return digest.hexdigest()


def weight_bytes(model: onnx.ModelProto) -> int:
    return sum(_tensor_bytes(t) for t in model.graph.initializer)


def _tensor_bytes(tensor: TensorProto) -> int:
    if tensor.raw_data:
        return len(tensor.raw_data)
    count = 1
    for d in tensor.dims:
        count *= d
    return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def is_large(model: onnx.ModelProto) -> bool:
    return weight_bytes(model) > EXTERNAL_DATA_BYTES


def save(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Write `model` to `path` (a staging file: the caller publishes it whole), its weights to `data_path(path)` when
    large; then the full ONNX check of what was written. Returns the files written. A large model's weights leave
    the ModelProto (onnx moves them to the file), so read the file again to use them."""
    data = data_path(path)
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    if is_large(model):
        onnx.save_model(
            model,
            path,
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data.name,
            size_threshold=SMALL_TENSOR_BYTES,
        )
        align_data_mode(path)
        onnx.checker.check_model(str(path), full_check=True)  # by path: the check of a ModelProto serializes it
        return [f for f in (path, data) if f.exists()]
    onnx.checker.check_model(model, full_check=True)
    path.write_bytes(model.SerializeToString())
    return [path]


def align_data_mode(path: Path) -> None:
    """onnx and onnxruntime's quantizer create a data file private (0o600); it gets its graph file's mode, which
    the umask set as for any new file."""
    data = data_path(path)
    if data.exists():
        os.chmod(data, stat.S_IMODE(path.stat().st_mode))


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx's strict shape and type inference (with data propagation). A model past INFER_WITHOUT_WEIGHTS_BYTES is
    inferred on a copy whose big weights hold no values (inference reads only their types and dims, and the values
    of small tensors), and gets the types in place."""
    if weight_bytes(model) <= INFER_WITHOUT_WEIGHTS_BYTES:
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    graph = model.graph
    shells = [_valueless(t) if _tensor_bytes(t) > SMALL_TENSOR_BYTES else t for t in graph.initializer]
    skeleton = onnx.helper.make_model(  # the graph without its weights' values: no copy of them is made
        onnx.helper.make_graph(graph.node, graph.name, graph.input, graph.output, shells),
        opset_imports=model.opset_import,
        ir_version=model.ir_version,
        functions=model.functions,
    )
    inferred = onnx.shape_inference.infer_shapes(skeleton, check_type=True, strict_mode=True, data_prop=True)
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    del model.graph.output[:]
    model.graph.output.extend(inferred.graph.output)
    return model


def _valueless(tensor: TensorProto) -> TensorProto:
    """The tensor's name, type and dims, as external data that is never read."""
    shell = TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
    shell.data_location = TensorProto.EXTERNAL
    shell.external_data.add(key="location", value="unread.data")
    return shell
