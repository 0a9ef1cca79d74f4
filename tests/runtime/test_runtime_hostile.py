"""Hostile files and inputs: each is refused with a clear dslc_runtime error, or accepted and correct.

Never an internal error, a Python traceback or a hang (every case runs under a hang guard), from
``Model.load``/``Model.run`` and from both command lines (``python -m dslc_runtime run`` and
``dslc run``).
"""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dslc_runtime import InputError, Model, ModelError, OutputError, RunError
from dslc_runtime.cli import main as runtime_main
from dslc_runtime.cli import run_cli
from rt_hostile import (
    HANG_LIMIT_S,
    build_folder,
    build_identities,
    build_reshape,
    build_zeros,
    npy_header,
    outcome,
    raw_npy_header,
    time_limit,
)
from rt_models import LABELS, build_classifier, build_external, save_model, vi

pytestmark = pytest.mark.skipif(os.name == "nt", reason="FIFOs, sockets and POSIX signals")

IMAGE = np.random.default_rng(3).normal(size=(2, 1, 4, 4)).astype(np.float32)


def refused(action: Callable[[], object], error: type[Exception], *fragments: str) -> str:
    """Run ``action`` under the hang guard; it must raise ``error`` whose message has ``fragments``."""
    with time_limit(HANG_LIMIT_S, "the case"), pytest.raises(error) as info:
        action()
    message = str(info.value)
    assert "Traceback" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"
    return message


def load(path: Path, **kwargs: Any) -> Model:
    return Model.load(path, providers="cpu", **kwargs)


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


# ------------------------------------------------------------------ output file names
def odd_output_names(tmp_path: Path) -> list[str]:
    escape = "evil\x1b[2J\nforged line"  # a terminal escape and a newline: must print escaped
    return ["../escaped", str(tmp_path / "abs"), "a/b", "n" * 300, "..", ".", "a\\b", escape, "a_b"]


def run_odd_outputs(tmp_path: Path, invoke: Callable[[Path, Path, Path], str]) -> None:
    """Run a model with hostile output names through a CLI: every file lands inside the folder."""
    model = build_identities(tmp_path / "model" / "odd.onnx", odd_output_names(tmp_path))
    x = tmp_path / "x.npy"
    np.save(x, np.array([1.5, -2.0], np.float32))
    out_dir = tmp_path / "work" / "out"
    before = files_under(tmp_path)
    with time_limit(60, "the CLI"):
        printed = invoke(model, x, out_dir)
    created = files_under(tmp_path) - before
    assert created and all(out_dir in path.parents for path in created), sorted(map(str, created))
    saved = sorted(out_dir.iterdir())
    assert len(saved) == len(odd_output_names(tmp_path))
    assert all(len(p.name) <= 255 and not p.name.startswith(".") for p in saved)
    for path in saved:
        np.testing.assert_array_equal(np.load(path), [1.5, -2.0])
    assert "\x1b" not in printed and "\nforged line" not in printed
    assert "'../escaped' -> ___escaped.npy" in printed


def test_output_names_stay_inside_the_folder_run_cli(tmp_path):
    def invoke(model: Path, x: Path, out_dir: Path) -> str:
        stream = io.StringIO()
        run_cli(model, {"x": x}, out_dir, providers="cpu", stream=stream)
        return stream.getvalue()

    run_odd_outputs(tmp_path, invoke)


def test_output_names_stay_inside_the_folder_python_m(tmp_path):
    def invoke(model: Path, x: Path, out_dir: Path) -> str:
        cmd = [sys.executable, "-m", "dslc_runtime", "run", str(model), "-i", f"x={x}", "-o", str(out_dir)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        return done.stdout

    run_odd_outputs(tmp_path, invoke)


def test_output_names_stay_inside_the_folder_dslc_run(tmp_path):
    def invoke(model: Path, x: Path, out_dir: Path) -> str:
        result = dslc_run([str(model), "-i", f"x={x}", "-o", str(out_dir), "--providers", "cpu"])
        assert result.exit_code == 0, result.output
        return result.output

    run_odd_outputs(tmp_path, invoke)


def test_planted_symlink_is_replaced_not_followed(tmp_path):
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("untouched")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "logits.npy").symlink_to(sentinel)
    x = tmp_path / "x.npy"
    np.save(x, IMAGE)
    model = build_classifier(tmp_path / "cnn.onnx")
    run_cli(model, {"image": x}, out_dir, providers="cpu", stream=io.StringIO())
    assert sentinel.read_text() == "untouched"
    assert not (out_dir / "logits.npy").is_symlink()
    np.testing.assert_allclose(np.load(out_dir / "logits.npy"), load(model)(image=IMAGE)["logits"])


def test_output_folder_that_is_a_file(tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, IMAGE)
    (tmp_path / "taken").write_text("a file")
    model = build_classifier(tmp_path / "cnn.onnx")
    run = lambda: run_cli(model, {"image": x}, tmp_path / "taken", providers="cpu", stream=io.StringIO())  # noqa: E731
    refused(run, OutputError, "cannot save outputs in", "taken")


# -------------------------------------------------------- special files where files belong
def make_special(path: Path, kind: str) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    elif kind == "directory":
        path.mkdir()
    else:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.close()


KIND_WORDS = {"fifo": "FIFO", "device": "character device", "directory": "directory", "socket": "socket"}


@pytest.mark.parametrize("kind", list(KIND_WORDS))
def test_special_file_as_model(tmp_path, kind):
    path = tmp_path / "m.onnx"
    make_special(path, kind)
    expected = "no manifest.json and no single matching .onnx" if kind == "directory" else KIND_WORDS[kind]
    refused(lambda: load(path), ModelError, expected)


@pytest.mark.parametrize("kind", list(KIND_WORDS))
def test_special_file_as_input(tmp_path, models, kind):
    path = tmp_path / "x.npy"
    make_special(path, kind)
    run = lambda: run_cli(models.classifier, {"image": path}, providers="cpu", stream=io.StringIO())  # noqa: E731
    refused(run, InputError, KIND_WORDS[kind], "not a regular file")


@pytest.mark.parametrize("kind", list(KIND_WORDS))
def test_special_file_as_manifest(tmp_path, kind):
    folder = build_folder(tmp_path / "build")
    (folder / "manifest.json").unlink()
    make_special(folder / "manifest.json", kind)
    refused(lambda: load(folder), ModelError, "manifest", KIND_WORDS[kind])


@pytest.mark.parametrize("kind", list(KIND_WORDS))
def test_special_file_as_external_data(tmp_path, kind):
    make_special(tmp_path / "weights.bin", kind)
    path = build_external(tmp_path, "ext", "weights.bin")
    # A symlink to a device leaves the folder: refused as escaping before its kind is looked at.
    expected = "resolves to /dev/zero, outside the model's folder" if kind == "device" else KIND_WORDS[kind]
    refused(lambda: load(path), ModelError, "weights.bin", expected)


def test_special_file_as_the_manifests_onnx(tmp_path):
    folder = build_folder(tmp_path / "build")
    (folder / "cnn.onnx").unlink()
    os.mkfifo(folder / "cnn.onnx")
    refused(lambda: load(folder), ModelError, "FIFO")


# ------------------------------------------------------------ names no file system holds
@pytest.mark.parametrize(("location", "expected"), [("w\0.bin", "NUL byte"), ("w" * 300, "too long")])
def test_bad_external_data_names(tmp_path, location, expected):
    path = build_external(tmp_path, "ext", location)
    refused(lambda: load(path), ModelError, str(path), "tensor 'W'", expected)


@pytest.mark.parametrize(("onnx", "expected"), [("cnn\0.onnx", "NUL byte"), ("c" * 300, "too long")])
def test_bad_manifest_onnx_names(tmp_path, onnx, expected):
    folder = build_folder(tmp_path / "build", lambda m: m["models"][0].update(onnx=onnx))
    refused(lambda: load(folder), ModelError, "manifest.json", "'onnx' file", expected)


@pytest.mark.parametrize(("name", "expected"), [("m\0.onnx", "NUL byte"), ("m" * 300 + ".onnx", "too long")])
def test_bad_model_and_input_paths(tmp_path, models, name, expected):
    refused(lambda: load(tmp_path / name), ModelError, expected)
    run = lambda: run_cli(models.classifier, {"image": tmp_path / name}, stream=io.StringIO())  # noqa: E731
    refused(run, InputError, expected)


# --------------------------------------------------------------------- manifest contents
def replace_manifest(text: str | bytes) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        target = folder / "manifest.json"
        target.write_bytes(text if isinstance(text, bytes) else text.encode())

    return write


def edit_entry(**changes: Any) -> Callable[[dict[str, Any]], None]:
    return lambda manifest: manifest["models"][0].update(changes)


def edit_port(kind: str, **changes: Any) -> Callable[[dict[str, Any]], None]:
    return lambda manifest: manifest["models"][0][kind][0].update(changes)


def drop_key(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda manifest: manifest["models"][0].pop(key)


GARBAGE_MANIFESTS: dict[str, tuple[Callable[[dict[str, Any]], object], str]] = {
    "models-missing": (lambda m: m.pop("models"), "'models' must be a list of model entries, got null"),
    "models-a-string": (lambda m: m.update(models="cnn"), "'models' must be a list of model entries, got a string"),
    "models-empty": (lambda m: m.update(models=[]), "'models' lists no model"),
    "entry-a-number": (lambda m: m.update(models=[3]), "models[0] must be an object, got a number"),
    "name-missing": (drop_key("name"), "models[0].name must be a non-empty string, got null"),
    "name-a-number": (edit_entry(name=7), "models[0].name must be a non-empty string, got a number"),
    "name-a-list": (edit_entry(name=["cnn"]), "models[0].name must be a non-empty string, got a list"),
    "onnx-a-number": (edit_entry(onnx=1), "models[0].onnx must be a file name (string), got a number"),
    "inputs-an-object": (edit_entry(inputs={"image": 1}), "models[0].inputs must be a list"),
    "inputs-a-string": (edit_entry(inputs="image"), "models[0].inputs must be a list"),
    "input-a-string": (edit_entry(inputs=["image"]), "models[0].inputs[0] must be an object, got a string"),
    "input-name-a-number": (edit_port("inputs", name=1), "models[0].inputs[0].name must be a string"),
    "input-dtype-missing": (edit_port("inputs", dtype=None), "models[0].inputs[0].dtype must be a string"),
    "input-shape-a-string": (edit_port("inputs", shape="batch"), "models[0].inputs[0].shape must be a list"),
    "input-shape-negative": (edit_port("inputs", shape=[-1, 1, 4, 4]), "models[0].inputs[0].shape must be"),
    "input-shape-bool": (edit_port("inputs", shape=[True, 1, 4, 4]), "models[0].inputs[0].shape must be"),
    "input-shape-float": (edit_port("inputs", shape=[1.5, 1, 4, 4]), "models[0].inputs[0].shape must be"),
    "input-shape-nested": (edit_port("inputs", shape=[[1], 1, 4, 4]), "models[0].inputs[0].shape must be"),
    "output-doc-a-number": (edit_port("outputs", doc=3), "models[0].outputs[0].doc must be a string"),
    "labels-a-string": (edit_entry(labels="cat"), "models[0].labels must be a list of strings"),
    "labels-nested": (edit_entry(labels=[["cat"]]), "models[0].labels must be a list of strings"),
    "vocab-numbers": (edit_entry(vocab=[1, 2]), "models[0].vocab must be a list of strings"),
    "sha256-short": (edit_entry(onnx_sha256="abc"), "models[0].onnx_sha256 must be 64 hex digits"),
    "sha256-a-number": (edit_entry(onnx_sha256=5), "models[0].onnx_sha256 must be 64 hex digits"),
    "data-sha256-short": (
        edit_entry(onnx_data="cnn.onnx.data", onnx_data_sha256="ab"),
        "models[0].onnx_data_sha256 must be 64 hex digits",
    ),
    "data-a-number": (edit_entry(onnx_data=3, onnx_data_sha256="0" * 64), "models[0].onnx_data must be a file name"),
    "data-without-sha256": (edit_entry(onnx_data="cnn.onnx.data"), "one of onnx_data and onnx_data_sha256"),
    "data-outside": (edit_entry(onnx_data="../w.data", onnx_data_sha256="0" * 64), "outside the build directory"),
    "data-missing": (edit_entry(onnx_data="w.data", onnx_data_sha256="0" * 64), "'w.data' but"),
    "variant-a-string": (edit_entry(fp16="cnn.fp16.onnx"), "models[0].fp16 must be an object naming its 'onnx'"),
    "variant-without-onnx": (edit_entry(int8={}), "models[0].int8.onnx must be a file name (string), got null"),
    "variant-sha256-short": (
        edit_entry(bf16={"onnx": "cnn.bf16.onnx", "onnx_sha256": "ab"}),
        "models[0].bf16.onnx_sha256 must be 64 hex digits",
    ),
    "variant-data-alone": (
        edit_entry(fp16={"onnx": "cnn.fp16.onnx", "onnx_data": "cnn.fp16.onnx.data"}),
        "models[0].fp16 gives one of onnx_data and onnx_data_sha256",
    ),
    "duplicate-names": (
        lambda m: m["models"].append(dict(m["models"][0])),
        "two models are named 'cnn'",
    ),
}


@pytest.mark.parametrize("case", list(GARBAGE_MANIFESTS))
def test_garbage_manifest_fields(tmp_path, case):
    edit, expected = GARBAGE_MANIFESTS[case]
    folder = build_folder(tmp_path / "build", edit)
    refused(lambda: load(folder, model="cnn" if case == "duplicate-names" else None), ModelError, expected)


@pytest.mark.parametrize(
    ("case", "text", "expected"),
    [
        ("deep-nesting", "[" * 100_000 + "]" * 100_000, "JSON nested too deeply"),
        ("deep-object", '{"a":' * 100_000 + "1" + "}" * 100_000, "JSON nested too deeply"),
        ("too-large", '{"models": [], "pad": "' + "x" * (9 << 20) + '"}', "larger than 8 MiB"),
        ("not-utf8", b'{"models": ["\xff"]}', "invalid manifest"),
        ("not-json", "{models: ", "invalid manifest"),
        ("huge-integer", '{"models": [' + "9" * 5000 + "]}", "invalid manifest"),
        ("empty", "", "invalid manifest"),
        ("top-level-list", "[1, 2]", "expected a JSON object, got a list"),
    ],
)
def test_manifest_text_limits(tmp_path, case, text, expected):
    folder = build_folder(tmp_path / "build")
    replace_manifest(text)(folder)
    refused(lambda: load(folder), ModelError, "manifest.json", expected)


def outside_onnx(tmp_path: Path) -> str:
    build_classifier(tmp_path / "outside.onnx")
    return str(tmp_path / "outside.onnx")


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("absolute", "is absolute, outside the build directory"),
        ("dotdot", "points outside the build directory"),
        ("symlink-out", "outside the build directory"),
        ("symlink-loop", "cannot be resolved"),
        ("directory", "is a directory"),
        ("missing", "does not exist"),
    ],
)
def test_manifest_onnx_paths(tmp_path, case, expected):
    folder = build_folder(tmp_path / "build")
    outside = outside_onnx(tmp_path)
    entry = {"absolute": outside, "dotdot": "../outside.onnx", "missing": "gone.onnx"}.get(case, "other.onnx")
    if case == "symlink-out":
        (folder / "other.onnx").symlink_to(outside)
    elif case == "symlink-loop":
        (folder / "other.onnx").symlink_to(folder / "other.onnx")
    elif case == "directory":
        (folder / "other.onnx").mkdir()
    build_folder(folder, edit_entry(onnx=entry, onnx_sha256=None))
    refused(lambda: load(folder), ModelError, expected)


MISMATCHES: dict[str, tuple[Callable[[dict[str, Any]], object], str]] = {
    "input-name": (edit_port("inputs", name="img"), "the ONNX graph has no input 'img'"),
    "input-dtype": (edit_port("inputs", dtype="float64"), "input 'image' is float64 in the manifest but float32"),
    "input-rank": (edit_port("inputs", shape=["batch", 16]), "input 'image' has rank 2 in the manifest but 4"),
    "input-fixed-dim": (edit_port("inputs", shape=["batch", 3, 4, 4]), "input 'image' dim 1 is 3 in the manifest"),
    "output-name": (edit_port("outputs", name="probs"), "the manifest does not list output 'logits'"),
    "extra-input": (
        lambda m: m["models"][0]["inputs"].append({"name": "mask", "dtype": "bool", "shape": []}),
        "the ONNX graph has no input 'mask'",
    ),
    "no-inputs": (edit_entry(inputs=[]), "the manifest does not list input 'image'"),
}


@pytest.mark.parametrize("case", list(MISMATCHES))
def test_manifest_disagreeing_with_the_graph(tmp_path, case):
    edit, expected = MISMATCHES[case]
    folder = build_folder(tmp_path / "build", edit)
    refused(lambda: load(folder), ModelError, "model 'cnn' does not match", "cnn.onnx", expected)


def test_manifest_without_ports_still_loads_but_not_without_the_graphs_checksum(tmp_path):
    folder = build_folder(tmp_path / "build")
    sha256 = json.loads((folder / "manifest.json").read_text())["models"][0]["onnx_sha256"]

    def strip(manifest: dict[str, Any]) -> None:
        manifest["models"] = [{"name": "cnn", "onnx_sha256": sha256}]  # "onnx" defaults to <name>.onnx

    m = load(build_folder(folder, strip))
    np.testing.assert_allclose(m(image=IMAGE)["logits"], load(folder / "cnn.onnx")(image=IMAGE)["logits"])
    build_folder(folder, edit_entry(onnx_sha256=None))
    refused(lambda: load(folder), ModelError, "model 'cnn' gives no onnx_sha256 for 'cnn.onnx'")


# -------------------------------------------------------------------- integrity (sha256)
def flip_weight_byte(path: Path) -> None:
    """Corrupt one weight byte: the file still parses and loads, only its numbers change."""
    data = bytearray(path.read_bytes())
    weights = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32).tobytes()  # as build_classifier
    at = data.index(weights) + 5
    data[at] ^= 0x40
    path.write_bytes(bytes(data))


def test_sha256_matches_and_loads(tmp_path):
    m = load(build_folder(tmp_path / "build"))
    assert m.labels == LABELS and m.manifest is not None
    assert m(image=IMAGE)["logits"].shape == (2, 3)


def test_byte_flipped_onnx_is_refused_by_its_sha256(tmp_path):
    folder = build_folder(tmp_path / "build")
    flip_weight_byte(folder / "cnn.onnx")
    assert outcome(lambda: load(folder / "cnn.onnx"), "loading the file alone") == "accepted"  # undetectable alone
    refused(lambda: load(folder), ModelError, "cnn.onnx", "sha256", "modified or corrupted after the build")


# ------------------------------------------------------------------ ONNX-level hostility
def save_meta_model(path: Path, meta: dict[str, str]) -> Path:
    return build_with(path, meta=meta)


def build_with(path: Path, meta: dict[str, str] | None = None, output: str = "y") -> Path:
    from onnx import TensorProto, helper

    return save_model(
        path,
        [helper.make_node("Identity", ["x"], [output])],
        [vi("x", TensorProto.FLOAT, [2])],
        [vi(output, TensorProto.FLOAT, [2])],
        meta=meta,
    )


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({"dslc.labels": "[" * 100_000 + "]" * 100_000}, "nested too deeply"),
        ({"dslc.labels": '[["cat"], "dog"]'}, "dslc.labels must be a JSON list of strings"),
        ({"dslc.vocab": '{"a": 1}'}, "dslc.vocab must be a JSON list of strings"),
        ({"dslc.inputs": "[not json"}, "metadata 'dslc.inputs' is not valid JSON"),
        ({"dslc.max_sizes": '{"time": -1}'}, "'dslc.max_sizes' must map dim names to positive integers"),
        ({"dslc.max_sizes": '{"time": true}'}, "'dslc.max_sizes' must map dim names to positive integers"),
        ({"dslc.max_sizes": '{"time": 1e99}'}, "'dslc.max_sizes' must map dim names to positive integers"),
        ({"dslc.max_sizes": "[8]"}, "'dslc.max_sizes' must map dim names to positive integers"),
    ],
)
def test_hostile_metadata(tmp_path, meta, expected):
    path = save_meta_model(tmp_path / "meta.onnx", meta)
    refused(lambda: load(path), ModelError, str(path), expected)


def test_metadata_ports_of_any_shape_are_only_hints(tmp_path):
    meta = {"dslc.inputs": json.dumps([{"name": "x", "shape": "junk", "doc": ["not", "a", "string"]}, 3])}
    m = load(save_meta_model(tmp_path / "meta.onnx", meta))
    np.testing.assert_array_equal(m(x=np.ones(2, np.float32))["y"], [1, 1])


def test_invalid_utf8_output_name(tmp_path):
    path = build_with(tmp_path / "utf8.onnx", output="bad-name")
    path.write_bytes(path.read_bytes().replace(b"bad-name", b"bad\xff\xfeame"))
    refused(lambda: load(path), ModelError, str(path), "not valid UTF-8")


def length_delimited(number: int, payload: bytes) -> bytes:
    """One protobuf field of wire type 2 (key, length varint, payload)."""

    def varint(value: int) -> bytes:
        out = bytearray()
        while value > 0x7F:
            out.append(value & 0x7F | 0x80)
            value >>= 7
        return bytes([*out, value])

    return varint(number << 3 | 2) + varint(len(payload)) + payload


def test_protobuf_nesting_beyond_the_limit(tmp_path):
    graph = b""
    for _ in range(40):  # graph.node(1) -> node.attribute(5) -> attribute.g(6) -> graph: 120 levels
        graph = length_delimited(1, length_delimited(5, length_delimited(6, graph)))
    path = tmp_path / "deep.onnx"
    path.write_bytes(length_delimited(7, graph))
    refused(lambda: load(path), ModelError, str(path), "nesting is too deep")


def test_files_packed_with_tiny_fields_are_refused(tmp_path, monkeypatch):
    from dslc_runtime import _onnx_scan

    monkeypatch.setattr(_onnx_scan, "_MAX_FIELDS", 1000)  # the real budget takes ~30 s to exhaust
    path = tmp_path / "dense.onnx"
    path.write_bytes(length_delimited(7, b"\xa0\x06\x00" * 2000))  # 2,000 unknown varint fields in a graph
    refused(lambda: load(path), ModelError, "more than 1,000 protobuf fields")


def test_odd_names_print_escaped(tmp_path):
    names = ["ok", "bell\x07", "line\nbreak", "\u202eright-to-left"]
    model = load(build_identities(tmp_path / "odd.onnx", names))
    text = str(model.signature) + model.signature.describe()
    with pytest.raises(InputError) as info:
        model.run({"x": np.ones(3, np.float32)})  # lists every output in the signature
    for shown in (text, str(info.value)):
        assert all(ch.isprintable() or ch == "\n" for ch in shown)
        assert "line\\nbreak" in shown and "bell\\x07" in shown


# ----------------------------------------------------------------------------- .npy files
NPY_CASES: dict[str, tuple[bytes, str]] = {
    "huge-shape": (npy_header("<f4", (100_000_000_000, 784)), "285.2 TiB"),
    "larger-than-the-data": (npy_header("<f4", (2, 1, 4, 4)) + b"\0" * 64, "holds only 64 bytes"),
    "huge-itemsize": (npy_header("<U99999999", (1000,)), "holds only 0 bytes"),
    "unknown-dtype": (npy_header("<U999999999999", (1,)), "not a valid .npy file"),
    "objects": (npy_header("|O", (2,)) + b"\0" * 16, "Python objects"),
    "negative-dim": (npy_header("<f4", (-2, 4)), "negative dimension"),
    "bad-magic": (b"\x93NUMPX\x01\x00" + b"\0" * 64, "not a valid .npy file"),
    "text": (b"hello, not an array\n", "not a valid .npy file"),
    "empty": (b"", "not a valid .npy file"),
    "version-3": (b"\x93NUMPY\x03\x00" + npy_header("<f4", (1,))[8:], "version 3.0 is not supported"),
    "version-99": (b"\x93NUMPY\x63\x00" + npy_header("<f4", (1,))[8:], "version 99.0 is not supported"),
    "header-garbage": (npy_header("<f4", (1,)).replace(b"'descr'", b"'dxscr'"), "not a valid .npy file"),
    "header-code": (raw_npy_header("{'descr': __import__('os').getcwd(), 'shape': ()}"), "not a valid .npy file"),
    "header-deep": (raw_npy_header("{'descr': " + "[" * 3000 + "]" * 3000 + "}"), "not a valid .npy file"),
    "header-not-a-dict": (raw_npy_header("[1, 2, 3]"), "not a valid .npy file"),
    "header-length-huge": (b"\x93NUMPY\x02\x00\xff\xff\xff\x7f{", "not a valid .npy file"),
}


@pytest.mark.parametrize("case", list(NPY_CASES))
def test_hostile_npy(tmp_path, models, case):
    data, expected = NPY_CASES[case]
    path = tmp_path / "x.npy"
    path.write_bytes(data)
    run = lambda: run_cli(models.classifier, {"image": path}, providers="cpu", stream=io.StringIO())  # noqa: E731
    refused(run, InputError, "input 'image'", str(path), expected)


@pytest.mark.parametrize(
    "array",
    [
        pytest.param(np.asfortranarray(IMAGE), id="fortran-order"),
        pytest.param(IMAGE[:0], id="empty-batch"),
        pytest.param(IMAGE, id="plain"),
    ],
)
def test_unusual_but_valid_npy_is_accepted_and_correct(tmp_path, models, array):
    path = tmp_path / "x.npy"
    np.save(path, array)
    got = run_cli(models.classifier, {"image": path}, providers="cpu", stream=io.StringIO())["logits"]
    np.testing.assert_allclose(got, load(models.classifier)(image=np.ascontiguousarray(array))["logits"])


def test_big_endian_npy_is_refused_by_the_signature(tmp_path, models):
    path = tmp_path / "x.npy"
    np.save(path, IMAGE.astype(">f4"))
    run = lambda: run_cli(models.classifier, {"image": path}, providers="cpu", stream=io.StringIO())  # noqa: E731
    refused(run, InputError, "image: dtype >f4 but the model expects float32")


# ---------------------------------------------------------------------- run-time failures
def test_out_of_memory_in_onnxruntime_is_a_run_error(tmp_path):
    m = load(build_zeros(tmp_path / "zeros.onnx"))
    assert m(shape=np.array([3]))["zeros"].tolist() == [0, 0, 0]
    for size in (2**40, 2**62):  # 4 TiB: allocation fails; 16 EiB: size overflows
        message = refused(lambda s=size: m(shape=np.array([s])), RunError, "'zeros'", "zeros.onnx", "shape: int64[1]")
        assert "not enough memory" in message
        assert "onnxruntime_src" not in message and "[ONNXRuntimeError]" not in message


def test_failing_node_is_a_run_error(tmp_path):
    m = load(build_reshape(tmp_path / "reshape.onnx"))
    feeds = {"x": np.zeros(6, np.float32), "shape": np.array([4, 4])}
    refused(lambda: m.run(feeds), RunError, "'reshape'", "x: float32[6], shape: int64[2]", "Reshape")
    refused(lambda: m.run_batched(feeds, batch_size=2), RunError, "x: float32[2], shape: int64[2]")
    assert m.run({"x": np.zeros(6, np.float32), "shape": np.array([2, 3])})["y"].shape == (2, 3)


# ------------------------------------------------------------------ the two command lines
def dslc_run(args: list[str]) -> Any:
    from click.testing import CliRunner

    from dslc.cli import main as dslc_main

    return CliRunner().invoke(dslc_main, ["run", *args])


def cli_cases(tmp_path: Path) -> dict[str, list[str]]:
    """Hostile ``run`` command lines (model, then options); each must end with a clear error."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    classifier = str(build_classifier(tmp_path / "cnn.onnx"))
    huge = tmp_path / "huge.npy"
    huge.write_bytes(npy_header("<f4", (100_000_000_000, 1, 4, 4)))
    deep = build_folder(tmp_path / "deep")
    replace_manifest("[" * 100_000)(deep)
    garbage = build_folder(tmp_path / "garbage", edit_entry(inputs="image"))
    flipped = build_folder(tmp_path / "flipped")
    flip_weight_byte(flipped / "cnn.onnx")
    zeros = str(build_zeros(tmp_path / "zeros.onnx"))
    np.save(tmp_path / "big_shape.npy", np.array([2**40]))
    utf8 = build_with(tmp_path / "utf8.onnx", output="bad-name")
    utf8.write_bytes(utf8.read_bytes().replace(b"bad-name", b"bad\xff\xfeame"))
    np.save(tmp_path / "x.npy", IMAGE)
    x = f"image={tmp_path / 'x.npy'}"
    return {
        "fifo-model": [str(fifo), "-i", x],
        "fifo-input": [classifier, "-i", f"image={fifo}"],
        "device-input": [classifier, "-i", "image=/dev/zero"],
        "huge-npy": [classifier, "-i", f"image={huge}"],
        "deep-manifest": [str(deep), "-i", x],
        "garbage-manifest": [str(garbage), "-i", x],
        "sha256-mismatch": [str(flipped), "-i", x],
        "out-of-memory": [zeros, "-i", f"shape={tmp_path / 'big_shape.npy'}"],
        "invalid-utf8-name": [str(utf8), "-i", x],
        "unknown-input": [classifier, "-i", f"nope={tmp_path / 'x.npy'}"],
    }


CLI_CASES = [
    "fifo-model",
    "fifo-input",
    "device-input",
    "huge-npy",
    "deep-manifest",
    "garbage-manifest",
    "sha256-mismatch",
    "out-of-memory",
    "invalid-utf8-name",
    "unknown-input",
]


@pytest.mark.parametrize("case", CLI_CASES)
def test_python_m_dslc_runtime_run_refuses_cleanly(tmp_path, capsys, case):
    args = cli_cases(tmp_path)[case]
    with time_limit(HANG_LIMIT_S, case):
        code = runtime_main(["run", *args, "--providers", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and "Traceback" not in err, err


@pytest.mark.parametrize("case", CLI_CASES)
def test_dslc_run_refuses_cleanly(tmp_path, case):
    args = cli_cases(tmp_path)[case]
    with time_limit(HANG_LIMIT_S, case):
        result = dslc_run([*args, "--providers", "cpu"])
    assert result.exit_code == 1, result.output
    assert "error: " in result.output and "internal error" not in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("descr", "shape"), [("|V0", (2**62, 2**62)), ("|S0", (10**14, 10))])
def test_npy_headers_with_empty_elements_are_refused(tmp_path, descr, shape):
    import io

    from dslc_runtime._npy import load_npy
    from numpy.lib import format as npy_format

    header = io.BytesIO()
    npy_format.write_array_header_1_0(header, {"descr": descr, "fortran_order": False, "shape": shape})
    forged = tmp_path / "forged.npy"
    forged.write_bytes(header.getvalue())
    with pytest.raises(InputError, match="elements of size 0"):
        load_npy(forged)


def test_saved_outputs_get_a_new_files_usual_mode(tmp_path):
    """Outputs are written atomically through a temp file, yet get 0o666 minus the umask, not 0o600."""
    x = tmp_path / "x.npy"
    np.save(x, IMAGE)
    model = build_classifier(tmp_path / "cnn.onnx")
    old = os.umask(0o022)
    try:
        run_cli(model, {"image": x}, tmp_path / "out", providers="cpu", stream=io.StringIO())
    finally:
        os.umask(old)
    (saved,) = (tmp_path / "out").glob("*.npy")
    assert stat.S_IMODE(saved.stat().st_mode) == 0o644
