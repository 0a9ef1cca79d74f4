"""Fuzzing the runtime with mutated ONNX files, build manifests and ``.npy`` inputs.

Every case must end in a dslc_runtime error (a ``DslcRuntimeError`` subclass) or in a clean load
and run: any other exception, or a case running past the hang guard (10 s), fails the test and
names the case (family, seed, index, mutation).

Environment variables, for longer runs than CI's:

* ``DSLC_FUZZ_COUNT``: cases per family (ONNX, manifest, ``.npy``); default 300.
* ``DSLC_FUZZ_SEED``: the seed of the mutations; default 0. Another seed, other cases.

e.g. ``DSLC_FUZZ_COUNT=5000 DSLC_FUZZ_SEED=7 pytest tests/runtime/test_runtime_fuzz.py``.

A failing case is reproducible from its seed and index. Minimise it (a few bytes usually do) and
keep it in ``tests/runtime/corpus/`` (see its README): the corpus always runs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest
from dslc_runtime import DslcRuntimeError, Model
from dslc_runtime.cli import load_inputs
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from onnx import TensorProto, helper, numpy_helper
from rt_hostile import HANG_LIMIT_S, build_folder, time_limit
from rt_models import build_classifier, build_pair, dslc_meta, save_model, vi

COUNT = int(os.environ.get("DSLC_FUZZ_COUNT", "300"))
SEED = int(os.environ.get("DSLC_FUZZ_SEED", "0"))
CORPUS = Path(__file__).resolve().parent / "corpus"
MAX_FEED_ELEMENTS = 1 << 20
"""Mutated models may declare huge fixed dims; inputs bigger than this are not fed to them."""

pytestmark = pytest.mark.skipif(os.name == "nt", reason="the hang guard uses SIGALRM")

Mutation = Callable[[random.Random, bytes], bytes]


# ------------------------------------------------------------------------ byte mutations
def flip(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        out[rng.randrange(len(out))] ^= rng.randint(1, 255)
    return bytes(out)


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data))]


def insert(rng: random.Random, data: bytes) -> bytes:
    at = rng.randrange(len(data) + 1)
    return data[:at] + rng.randbytes(rng.randint(1, 16)) + data[at:]


def delete(rng: random.Random, data: bytes) -> bytes:
    at = rng.randrange(len(data))
    return data[:at] + data[at + rng.randint(1, 32) :]


def duplicate(rng: random.Random, data: bytes) -> bytes:
    start = rng.randrange(len(data))
    chunk = data[start : start + rng.randint(1, 64)]
    at = rng.randrange(len(data) + 1)
    return data[:at] + chunk + data[at:]


HUGE_VARINTS = [b"\xff" * 9 + b"\x01", b"\xff" * 10, b"\x80" * 11, b"\xff\xff\xff\xff\x0f", b"\xfe\xff\xff\xff\x07"]


def huge_length(rng: random.Random, data: bytes) -> bytes:
    """Give a length-delimited field (wire type 2) an absurd length, or plant a broken varint."""
    tags = [i for i, byte in enumerate(data[:-1]) if byte & 7 == 2 and byte >> 3]
    varint = rng.choice(HUGE_VARINTS)
    if tags and rng.random() < 0.8:
        at = rng.choice(tags) + 1
        end = at
        while end < len(data) and data[end] & 0x80:
            end += 1
        return data[:at] + varint + data[end + 1 :]
    at = rng.randrange(len(data) + 1)
    return data[:at] + varint + data[at:]


BYTE_MUTATIONS: list[Mutation] = [flip, truncate, insert, delete, duplicate, huge_length]


# ------------------------------------------------------- structure-aware ONNX mutations
# Byte mutations mostly break the protobuf framing, which the runtime's scanner refuses early;
# these keep the file well-formed and change what it says, so onnxruntime gets to load and run
# odd graphs (huge or negative dims, unknown types, dangling names, hostile strings).
HOSTILE_INTS = [0, 1, -1, 2, 7, 16, 255, 2**31 - 1, -(2**31), 2**62, 2**63 - 1, -(2**63)]
HOSTILE_FLOATS = [0.0, -0.0, 1e38, -1e38, float("nan"), float("inf")]
HOSTILE_STRINGS = ["", "x", "image", "logits", "../escaped", "/etc/passwd", "a\0b", "n" * 300, "\u202e", "é"]
_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_ENUM: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
}


def _messages(message: Message) -> list[Message]:
    found = [message]
    for field, value in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        for item in value if _repeated(field) else [value]:
            found += _messages(item)
    return found


def _repeated(field: FieldDescriptor) -> bool:
    if hasattr(field, "is_repeated"):  # protobuf >= 5.28; ``label`` is gone in newer releases
        return bool(field.is_repeated)
    return field.label == FieldDescriptor.LABEL_REPEATED


def _hostile_scalar(rng: random.Random, field: FieldDescriptor, old: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_STRING:
        return rng.choice(HOSTILE_STRINGS)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return flip(rng, old) if old and rng.random() < 0.5 else old[: rng.randrange(len(old) + 1)]
    if field.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return rng.choice(HOSTILE_FLOATS)
    low, high = _INT_RANGES.get(field.type, (-(2**63), 2**63 - 1))
    return min(max(rng.choice(HOSTILE_INTS), low), high)


def _mutate_field(rng: random.Random, message: Message, field: FieldDescriptor, value: Any) -> None:
    if _repeated(field):
        index = rng.randrange(len(value))
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if rng.random() < 0.5:
                del value[index]
            else:
                value.add().CopyFrom(value[index])
        elif rng.random() < 0.3:
            del value[index]
        else:
            value[index] = _hostile_scalar(rng, field, value[index])
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        message.ClearField(field.name)
    else:
        setattr(message, field.name, _hostile_scalar(rng, field, value))


def semantic(rng: random.Random, data: bytes) -> bytes:
    """Change one field anywhere in the model (value, element, presence); stays valid protobuf."""
    try:
        model = onnx.ModelProto.FromString(data)
    except DecodeError:
        return data
    for _ in range(rng.randint(1, 3)):
        candidates = [(m, f, v) for m in _messages(model) for f, v in m.ListFields()]
        if not candidates:
            break
        with contextlib.suppress(ValueError, TypeError):  # closed enums refuse unknown values
            _mutate_field(rng, *rng.choice(candidates))
    return model.SerializeToString()


def npy_header_edit(rng: random.Random, data: bytes) -> bytes:
    """Rewrite the header's dtype, shape or order (keeping its length, as numpy pads it)."""
    if len(data) < 10 or b"\n" not in data:
        return data
    end = data.index(b"\n") + 1
    header = data[:end].decode("latin1")
    descr = rng.choice(["'<f4'", "'<f8'", "'|O'", "'<U9'", "'>f4'", "'|b1'", "'<i8'", "'V16'", "'xyz'"])
    shape = rng.choice(["(2, 1, 4, 4)", "(99999999999, 784)", "(-1, 4)", "()", "(0,)", "(2, 1, 4, 4, 1)", "(1e3,)"])
    order = rng.choice(["False", "True", "None", "1"])
    text = f"{{'descr': {descr}, 'fortran_order': {order}, 'shape': {shape}, }}"
    body = text.ljust(len(header) - 11) + "\n"
    if len(body) != len(header) - 10:
        return data
    return data[:10] + body.encode("latin1") + data[end:]


def npy_header_flip(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    end = data.find(b"\n") + 1 or len(data)
    for _ in range(rng.randint(1, 3)):
        out[rng.randrange(end)] = rng.choice(b"0123456789(),' :{}\x00\xff" + bytes([rng.randrange(256)]))
    return bytes(out)


# ----------------------------------------------------------------- manifest mutations
HOSTILE_VALUES: list[Any] = [
    None,
    True,
    -1,
    0,
    1.5,
    1e308,
    "",
    "../cnn.onnx",
    "/etc/passwd",
    "cnn\0.onnx",
    "x" * 300,
    "manifest.json",
    [],
    {},
    [[[[[]]]]],
    {"name": 1},
    ["a", 1],
    "0" * 64,
]


def json_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            paths += json_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            paths += json_paths(item, (*prefix, index))
    return paths


def replace_at(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, *rest = path
    copy = list(value) if isinstance(value, list) else dict(value)
    copy[head] = replace_at(value[head], tuple(rest), new)
    return copy


def manifest_mutation(rng: random.Random, data: bytes) -> bytes:
    """Replace a random field with a hostile value, drop it, or mutate the text itself."""
    manifest = json.loads(data)
    if rng.random() < 0.3:
        return rng.choice(BYTE_MUTATIONS)(rng, data)
    path = rng.choice(json_paths(manifest)[1:])
    if rng.random() < 0.2 and isinstance(path[-1], str):
        parent = _get(manifest, path[:-1])
        trimmed = {k: v for k, v in parent.items() if k != path[-1]}
        return json.dumps(replace_at(manifest, path[:-1], trimmed)).encode()
    return json.dumps(replace_at(manifest, path, rng.choice(HOSTILE_VALUES))).encode()


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        value = value[key]
    return value


# -------------------------------------------------------------------------- the seeds
def build_nested(path: Path) -> Path:
    """x: float32[2] -> If(cond, then: x + c, else: x - c): subgraphs and tensor attributes."""
    const = numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "c")

    def branch(op: str) -> Any:
        return helper.make_graph(
            [helper.make_node("Constant", [], ["c"], value=const), helper.make_node(op, ["x", "c"], ["r"])],
            op,
            [],
            [vi("r", TensorProto.FLOAT, [2])],
        )

    ins = [{"name": "x", "dtype": "float32", "shape": [2], "doc": ""}]
    outs = [{"name": "y", "dtype": "float32", "shape": [2], "doc": ""}]
    return save_model(
        path,
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch("Add"), else_branch=branch("Sub"))],
        [vi("x", TensorProto.FLOAT, [2]), vi("cond", TensorProto.BOOL, [])],
        [vi("y", TensorProto.FLOAT, [2])],
        meta=dslc_meta("nested", ins, outs, labels=["a", "b"]),
    )


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("seeds")
    folder = build_folder(root / "build")
    image = np.random.default_rng(0).normal(size=(2, 1, 4, 4)).astype(np.float32)
    np.save(root / "image.npy", image)
    onnx = [build_classifier(root / "classifier.onnx"), build_pair(root / "pair.onnx")]
    onnx.append(build_nested(root / "nested.onnx"))
    return SimpleNamespace(
        onnx=[p.read_bytes() for p in onnx],
        manifest=(folder / "manifest.json").read_bytes(),
        folder=folder,
        npy=(root / "image.npy").read_bytes(),
        classifier=Model.load(folder / "cnn.onnx", providers="cpu", intra_op_num_threads=1),
    )


# ------------------------------------------------------------------------ running cases
def feeds_for(model: Model) -> dict[str, np.ndarray] | None:
    """Small inputs matching the signature (symbolic dims = 2), or None if it cannot be fed."""
    feeds = {}
    for spec in model.signature.inputs:
        shape = [d if isinstance(d, int) else 2 for d in spec.shape]
        dtype = spec.numpy_dtype
        # numpy refuses shapes whose non-zero dims multiply past its limit, even with a 0 dim
        if dtype is None or min(shape, default=0) < 0 or math.prod(d for d in shape if d) > MAX_FEED_ELEMENTS:
            return None
        feeds[spec.name] = np.full(shape, "", object) if dtype.kind == "O" else np.ones(shape, dtype)
    return feeds


def load_and_run(path: Path) -> None:
    model = Model.load(path, providers="cpu", intra_op_num_threads=1, inter_op_num_threads=1)
    feeds = feeds_for(model)
    if feeds is not None:
        model.run(feeds)


def check_case(what: str, action: Callable[[], object]) -> str:
    """``"ok"`` or ``"refused"``; anything else fails, naming the case."""
    try:
        with time_limit(HANG_LIMIT_S, what):
            action()
    except DslcRuntimeError:
        return "refused"
    except Exception as exc:  # the failure this test exists to find
        pytest.fail(f"{what}: {type(exc).__name__}: {exc}")
    return "ok"


def mutated(rng: random.Random, seed: bytes, mutations: list[Mutation]) -> tuple[str, bytes]:
    mutation = rng.choice(mutations)
    data = mutation(rng, seed)
    for _ in range(rng.randrange(3)):  # sometimes stack a few
        data = mutation(rng, data) if data else data
    return mutation.__name__, data


def run_family(name: str, cases: Callable[[random.Random, int], tuple[str, Callable[[], object]]]) -> None:
    outcomes: dict[str, int] = {}
    for index in range(COUNT):
        rng = random.Random(f"{name}-{SEED}-{index}")
        label, action = cases(rng, index)
        result = check_case(f"{name} case seed={SEED} index={index} ({label})", action)
        outcomes[result] = outcomes.get(result, 0) + 1
    print(f"{name}: {COUNT} cases, {outcomes}")


def test_fuzz_onnx_files(seeds, tmp_path):
    def case(rng: random.Random, index: int) -> tuple[str, Callable[[], object]]:
        label, data = mutated(rng, rng.choice(seeds.onnx), [semantic] * len(BYTE_MUTATIONS) + BYTE_MUTATIONS)
        path = tmp_path / f"case{index}.onnx"
        path.write_bytes(data)
        return label, lambda: load_and_run(path)

    run_family("onnx", case)


def test_fuzz_manifests(seeds, tmp_path):
    def case(rng: random.Random, index: int) -> tuple[str, Callable[[], object]]:
        folder = tmp_path / f"case{index}"
        shutil.copytree(seeds.folder, folder)
        data = manifest_mutation(rng, seeds.manifest)
        (folder / "manifest.json").write_bytes(data)
        return "manifest", lambda: load_and_run(folder)

    run_family("manifest", case)


def test_fuzz_npy_inputs(seeds, tmp_path):
    model = seeds.classifier
    mutations = [*BYTE_MUTATIONS, npy_header_edit, npy_header_edit, npy_header_flip, npy_header_flip]

    def case(rng: random.Random, index: int) -> tuple[str, Callable[[], object]]:
        label, data = mutated(rng, seeds.npy, mutations)
        path = tmp_path / f"case{index}.npy"
        path.write_bytes(data)
        return label, lambda: model.run(load_inputs(model, {"image": path}))

    run_family("npy", case)


# ------------------------------------------------------------------ the regression corpus
def corpus_action(path: Path, seeds: SimpleNamespace, work: Path) -> Callable[[], object]:
    if path.suffix == ".onnx":
        return lambda: load_and_run(path)
    if path.suffix == ".json":
        folder = work / "build"
        shutil.copytree(seeds.folder, folder)
        shutil.copy(path, folder / "manifest.json")
        return lambda: load_and_run(folder)
    model = seeds.classifier
    return lambda: model.run(load_inputs(model, {"image": path}))


@pytest.mark.parametrize("path", sorted(p for p in CORPUS.iterdir() if p.suffix != ".md"), ids=lambda p: p.name)
def test_corpus(path, seeds, tmp_path, capsys):
    check_case(f"corpus file {path.name}", corpus_action(path, seeds, tmp_path))
    assert "EP Error" not in capsys.readouterr().out  # onnxruntime's fallback banner
