"""Runs an exported ONNX graph in onnxruntime and compares it with the PyTorch module.

Verification uses sizes other than the export example (batch 1 and a larger batch, shorter and
longer sequences), so a dimension frozen by the exporter shows up as a failure.
The tolerance is absolute for outputs within [-1, 1] and relative to the largest magnitude beyond
(fp32 sums over trained weights, e.g. ImageNet logits of ~10, differ by ~1e-4 between runtimes). A deep model's
float32 rounding can exceed even that (GPT-2 with realistic weights: 1.3e-5 of its logits); then the module runs
once more in float64, and onnxruntime passes when it is as close to that exact answer as PyTorch's float32 is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from dslc import ir
from dslc.export_onnx import example_inputs, example_sizes
from dslc.onnx_reference import ReferenceSession

TOLERANCE = 1e-5
VERIFY_SHIFTS = (
    ir.SMALLEST_SHIFT,
    ir.LARGEST_SHIFT,
)  # size offsets from the export example: batch 1 and 6, sequences -8 and +12


@dataclass
class VerifyResult:
    passed: bool
    max_abs_diff: float
    runs: list[dict[str, int]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    source: str | bytes = str(path)
    try:
        source.encode("utf-8")
    except UnicodeEncodeError:  # a folder or file name that is not UTF-8, which onnxruntime's binding refuses
        source = path.read_bytes()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class Engine:
    """What runs a graph being verified."""

    name: str  # as messages say it
    open: Callable[[Path], Any]  # the graph's path -> an object with onnxruntime's run(output_names, feeds)


ENGINES = {
    "onnxruntime": Engine("onnxruntime", session),
    "reference": Engine("onnx's reference implementation", ReferenceSession),  # any type; float32 accumulators
}


def out_of_memory(exc: RuntimeError) -> bool:
    """PyTorch's allocator failure, which it raises as a RuntimeError."""
    return "can't allocate memory" in str(exc) or "out of memory" in str(exc).lower()


def _float_difference(want: np.ndarray, got: np.ndarray) -> float:
    """The largest absolute difference; NaN matching NaN and infinities of the same sign agree (log(0)
    is -inf in both runtimes), a NaN or infinity on one side only is an infinite difference."""
    same = (np.isnan(want) & np.isnan(got)) | (np.isinf(want) & (want == got))
    with np.errstate(invalid="ignore"):
        diff = np.where(same, 0.0, np.abs(want - got))
    diff = np.where(np.isnan(diff), np.inf, diff)
    return float(diff.max(initial=0.0))


def output_scale(want: np.ndarray) -> float:
    """1, or the output's largest finite magnitude: the tolerance is relative beyond [-1, 1]."""
    finite = np.abs(want[np.isfinite(want)]) if want.dtype.kind == "f" else np.zeros(0)
    return max(1.0, float(finite.max(initial=0.0)))


class Float64Reference:
    """The module's outputs computed in float64 (on first use): the exact answer float32 results round towards."""

    def __init__(self, torch_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        self.torch_module, self.inputs = torch_module, inputs
        self._outputs: tuple[np.ndarray, ...] | None = None

    def outputs(self) -> tuple[np.ndarray, ...] | None:
        if self._outputs is None:
            import copy

            try:
                exact = copy.deepcopy(self.torch_module).double().eval()
                inputs = [x.double() if x.is_floating_point() else x for x in self.inputs]
                with torch.no_grad():
                    out = exact(*inputs)
            except Exception:  # an op without float64 support: no second opinion
                self._outputs = ()
                return None
            out = out if isinstance(out, tuple) else (out,)
            self._outputs = tuple(o.numpy() for o in out)
        return self._outputs or None

    def accepts(self, index: int, want: np.ndarray, got: np.ndarray, allowed: float, part: Any = ...) -> bool:
        """Whether onnxruntime's `got` is within float32 rounding of the exact answer (output `index`, its `part`
        such as some positions): no further from it than twice PyTorch's float32 `want` is, plus `allowed`."""
        outputs = self.outputs()
        if outputs is None or index >= len(outputs):
            return False
        exact = outputs[index][part].astype(np.float64)
        torch_error = _float_difference(exact, want.astype(np.float64))
        return _float_difference(exact, got.astype(np.float64)) <= 2 * torch_error + allowed


def verification_inputs(
    module: ir.ModuleIR, program: ir.ProgramIR | None = None
) -> list[tuple[dict[str, int], tuple[torch.Tensor, ...]]]:
    """(sizes, inputs) of each verification run. With `program` (to look into blocks), integer inputs feeding an op
    taking ids (Embedding, one_hot) hold ids from 0 to its limit - 1 (dslc.export_onnx.example_inputs)."""
    runs = []
    for i, shift in enumerate(VERIFY_SHIFTS):
        sizes = example_sizes(module, shift)
        runs.append((sizes, example_inputs(module, sizes, seed=100 + i, program=program)))
    return runs


def verify(
    torch_module: torch.nn.Module,
    module: ir.ModuleIR,
    path: Path,
    tolerance: float | None = None,
    program: ir.ProgramIR | None = None,
    engine: str = "onnxruntime",
) -> VerifyResult:
    """Runs the graph at `path` in `engine` (a key of ENGINES) against `torch_module`."""
    return verify_in((engine,), torch_module, module, path, tolerance, program)[engine]


def verify_in(
    engines: tuple[str, ...],
    torch_module: torch.nn.Module,
    module: ir.ModuleIR,
    path: Path,
    tolerance: float | None = None,
    program: ir.ProgramIR | None = None,
) -> dict[str, VerifyResult]:
    """Runs the graph at `path` in each of `engines` against `torch_module`, which runs once per size for all."""
    tolerance = TOLERANCE if tolerance is None else tolerance
    torch_module.eval()
    results = {engine: VerifyResult(True, 0.0) for engine in engines}
    sessions = {}
    for engine, result in results.items():
        try:
            sessions[engine] = ENGINES[engine].open(path)
        except Exception as exc:  # onnxruntime raises its own types (e.g. NOT_IMPLEMENTED for an op and dtype)
            result.passed = False
            result.problems.append(f"{ENGINES[engine].name} cannot load the graph: {str(exc).splitlines()[0][:300]}")
    if not sessions:
        return results
    for sizes, inputs in verification_inputs(module, program):
        try:
            with torch.no_grad():
                expected = torch_module(*inputs)
        except (MemoryError, RuntimeError) as exc:
            if not isinstance(exc, MemoryError) and not out_of_memory(exc):
                raise
            for result in results.values():
                result.passed = False
                result.problems.append(
                    f"PyTorch ran out of memory running the model at sizes {sizes} (this machine cannot hold its "
                    "activations); build on a machine with more memory, or make the model or its fixed sizes smaller"
                )
            return results
        expected = expected if isinstance(expected, tuple) else (expected,)
        exact = Float64Reference(torch_module, inputs) if tolerance == TOLERANCE else None
        feeds = {p.name: x.numpy() for p, x in zip(module.inputs, inputs)}
        for engine, sess in sessions.items():
            _compare(results[engine], ENGINES[engine].name, sess, module, sizes, feeds, expected, tolerance, exact)
    return results


def _compare(
    result: VerifyResult,
    engine_name: str,
    sess: Any,
    module: ir.ModuleIR,
    sizes: dict[str, int],
    feeds: dict[str, np.ndarray],
    expected: tuple[torch.Tensor, ...],
    tolerance: float,
    exact: Float64Reference | None,
) -> None:
    """Runs `sess` on `feeds` and records in `result` how its outputs differ from PyTorch's `expected`."""
    try:
        actual = sess.run([p.name for p in module.outputs], feeds)
    except Exception as exc:  # onnxruntime raises its own exception types
        result.passed = False
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        result.problems.append(f"{engine_name} failed at sizes {sizes}: {first_line}")
        return
    result.runs.append(sizes)
    for port, want, got in zip(module.outputs, expected, actual):
        want = want.numpy()
        if want.shape != got.shape:
            result.passed = False
            result.problems.append(
                f"output '{port.name}' has shape {got.shape} in ONNX, {want.shape} in PyTorch (sizes {sizes})"
            )
            continue
        if want.dtype == np.bool_ or np.issubdtype(want.dtype, np.integer):
            diff = float(np.abs(want.astype(np.int64) - got.astype(np.int64)).max(initial=0))
        else:
            diff = _float_difference(want.astype(np.float64), got.astype(np.float64))
        result.max_abs_diff = max(result.max_abs_diff, diff)
        scale = output_scale(want)
        rounding = exact is not None and want.dtype.kind == "f"
        if (
            not diff <= tolerance * scale
            and rounding
            and exact.accepts(module.outputs.index(port), want, got, tolerance * scale)
        ):
            continue
        if not diff <= tolerance * scale:
            result.passed = False
            bound = f"{tolerance}" if scale == 1.0 else f"{tolerance} x {scale:.3g}, the output's largest magnitude"
            result.problems.append(f"output '{port.name}' differs by {diff:.3g} (> {bound}) at sizes {sizes}")
