"""Builders of hostile files and a hang guard, shared by the hostile-input and fuzz tests."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import signal
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from dslc_runtime import DslcRuntimeError
from onnx import TensorProto, helper
from rt_models import build_classifier, save_model, vi

HANG_LIMIT_S = 10
"""Generous per-case limit: every case takes milliseconds; only a real hang reaches it."""


class HangError(AssertionError):
    """A case ran longer than the hang guard allows."""


@contextlib.contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """Raise :class:`HangError` in the main thread if the block runs longer than ``seconds``.

    SIGALRM interrupts blocking system calls (opening a FIFO, reading a pipe), so a hang in the
    code under test surfaces as a failure naming ``what`` instead of stalling the test run.
    """

    def expire(signum: int, frame: Any) -> None:
        raise HangError(f"{what} did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def outcome(action: Callable[[], object], what: str) -> str:
    """``"accepted"`` or ``"refused: <message>"``; any other exception (or a hang) fails the test."""
    with time_limit(HANG_LIMIT_S, what):
        try:
            action()
        except DslcRuntimeError as exc:
            assert str(exc).strip(), f"{what}: {type(exc).__name__} without a message"
            assert "Traceback" not in str(exc), f"{what}: a traceback in the message"
            return f"refused: {exc}"
    return "accepted"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def classifier_entry(onnx: str = "cnn.onnx") -> dict[str, Any]:
    """The manifest entry ``dslc build`` would write for rt_models.build_classifier."""
    return {
        "name": "cnn",
        "onnx": onnx,
        "inputs": [{"name": "image", "dtype": "float32", "shape": ["batch", 1, 4, 4], "doc": ""}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 3], "doc": ""}],
        "labels": ["cat", "dog", "bird"],
    }


def build_folder(folder: Path, edit: Callable[[dict[str, Any]], object] | None = None) -> Path:
    """A build folder (classifier + manifest with ``onnx_sha256``); ``edit`` may change the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx = build_classifier(folder / "cnn.onnx")
    entry = {**classifier_entry(), "onnx_sha256": sha256(onnx)}
    manifest: dict[str, Any] = {"dslc_version": "0.1.0", "spec": "cnn.model", "models": [entry]}
    if edit is not None:
        manifest = copy.deepcopy(manifest)
        edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def build_identities(path: Path, names: list[str]) -> Path:
    """x: float32[2] -> one output per name, each a copy of x (names may be anything)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_model(
        path,
        [helper.make_node("Identity", ["x"], [name]) for name in names],
        [vi("x", TensorProto.FLOAT, [2])],
        [vi(name, TensorProto.FLOAT, [2]) for name in names],
    )


def build_zeros(path: Path) -> Path:
    """shape: int64[1] -> zeros float32[n] (ConstantOfShape): the input picks the allocation size."""
    return save_model(
        path,
        [helper.make_node("ConstantOfShape", ["shape"], ["zeros"])],
        [vi("shape", TensorProto.INT64, [1])],
        [vi("zeros", TensorProto.FLOAT, ["n"])],
    )


def build_reshape(path: Path) -> Path:
    """x: float32[n], shape: int64[2] -> Reshape(x, shape): fails at run time for a wrong shape."""
    return save_model(
        path,
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        [vi("x", TensorProto.FLOAT, ["n"]), vi("shape", TensorProto.INT64, [2])],
        [vi("y", TensorProto.FLOAT, ["rows", "cols"])],
    )


def raw_npy_header(text: str) -> bytes:
    """A version 1.0 ``.npy`` header holding any text where the header dict belongs."""
    body = text.encode("latin1") + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body


def npy_header(descr: str, shape: tuple[int, ...], fortran_order: bool = False) -> bytes:
    """A version 1.0 ``.npy`` header declaring any dtype and shape (no data follows)."""
    buffer = io.BytesIO()
    header = {"descr": descr, "fortran_order": fortran_order, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()
