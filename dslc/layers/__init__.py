"""The op registry. Importing this package registers every layer and function."""

from dslc.layers import conv, core, decoder, functions, recurrent, tensor_ops, training  # noqa: F401 - registration side effects
from dslc.layers.base import HELPERS, REGISTRY, AxisName, Inferred, Op, Param, ShapeError, py_literal, pycall

__all__ = ["HELPERS", "REGISTRY", "AxisName", "Inferred", "Op", "Param", "ShapeError", "py_literal", "pycall"]
