"""A graph run in onnx's reference implementation, with 16-bit float ops computed as GPU kernels compute them.

`onnx.reference` runs each op in numpy, as the standard defines it, in any type: it verifies the float16 and bfloat16
graphs of `dslc build --precision`, whose arithmetic onnxruntime's CPU provider does not do in 16 bits (it has no
bfloat16 kernels, and runs float16 ops it lacks kernels for in float32 between Casts it inserts and then merges,
so rounding that a GPU would do never happens).

What the reference implementation leaves open is the accumulator. Given 16-bit inputs, numpy accumulates some ops in
16 bits (a bfloat16 mean: 8 significant bits; squeezenet's 13x13 average pool put its logits 7% off) and others in
float32 without BLAS (float16 matrix products, 100x slower). cuBLAS, cuDNN and onnxruntime's CUDA kernels read 16-bit
inputs, accumulate in float32 and round each output to 16 bits. ACCUMULATING ops here do the same: their 16-bit inputs
are widened to float32, the float32 implementation runs, and the outputs are rounded back. Every other op (Add, Mul,
Gelu, ...) computes one rounding per value either way and runs as the reference implementation defines it.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

# Ops that sum over many values (matrix products, convolutions, normalisations, softmax, averages)
ACCUMULATING = (
    "MatMul",
    "Gemm",
    "Conv",
    "ConvTranspose",
    "Einsum",
    "Attention",
    "LayerNormalization",
    "RMSNormalization",
    "BatchNormalization",
    "InstanceNormalization",
    "Softmax",
    "LogSoftmax",
    "GlobalAveragePool",
    "AveragePool",
    "ReduceMean",
    "ReduceSum",
    "ReduceSumSquare",
    "ReduceL2",
    "ReduceLogSumExp",
    "LpNormalization",
)


class ReferenceSession:
    """onnxruntime's `run(output_names, feeds)` over onnx's reference implementation (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        import onnx
        from onnx.reference import ReferenceEvaluator

        model = onnx.load(path)
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 23)
        self._evaluator = ReferenceEvaluator(model, new_ops=[_accumulating(op, opset) for op in ACCUMULATING])

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._evaluator.run(output_names, feeds)


def _half_types() -> tuple[np.dtype, ...]:
    import ml_dtypes  # onnx's own dependency: numpy has no bfloat16

    return np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)


@cache
def _accumulating(op_type: str, opset: int) -> type:
    """The reference implementation of `op_type` at `opset`, reading 16-bit inputs as float32 and rounding its
    float32 outputs back to the inputs' type."""
    from onnx.reference.ops import load_op

    base = load_op("", op_type, opset)
    halves = _half_types()

    def _run(self, *inputs, **attributes):
        half = next((x.dtype for x in inputs if isinstance(x, np.ndarray) and x.dtype in halves), None)
        if half is None:
            return base._run(self, *inputs, **attributes)
        wide = [x.astype(np.float32) if isinstance(x, np.ndarray) and x.dtype == half else x for x in inputs]
        outputs = base._run(self, *wide, **attributes)
        return tuple(y.astype(half) if isinstance(y, np.ndarray) and y.dtype == np.float32 else y for y in outputs)

    # new_ops match an implementation to a node by the class's name: the op's, without a version suffix
    return type(op_type, (base,), {"op_domain": "", "_run": _run})
