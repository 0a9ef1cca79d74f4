"""Exceptions raised by dslc_runtime."""

from __future__ import annotations


class DslcRuntimeError(Exception):
    """Base class of every error raised by dslc_runtime."""


class ModelError(DslcRuntimeError):
    """The model file, build directory or manifest cannot be used (missing, corrupt, unsafe)."""


class InputError(DslcRuntimeError, ValueError):
    """Inputs do not match the model signature (names, dtypes, ranks, dimensions)."""


class ProviderError(DslcRuntimeError):
    """A requested execution provider (CUDA, TensorRT) is not usable."""


class RunError(DslcRuntimeError, RuntimeError):
    """onnxruntime failed while running valid-looking inputs (out of memory, a node failed)."""


class OutputError(DslcRuntimeError):
    """Outputs cannot be saved (unwritable folder, values that cannot be stored as .npy)."""
