"""The type rules of tensor expressions: operators, matmul and indexing, as pure functions.

Each takes operand types and returns the result's type, or raises ShapeError saying what does not
fit; the checker adds the location.
"""

from __future__ import annotations

from dslc import ir
from dslc.layers import ShapeError
from dslc.shapes import FLOAT_DTYPES, Sym, TensorType, broadcast

COMPARISONS = {"==", "!=", "<", "<=", ">", ">="}


def binop_type(op: str, a: ir.Expr, b: ir.Expr) -> TensorType:
    """`a op b` elementwise, with numpy broadcasting; a Python number (ir.Scalar) takes the tensor's dtype."""
    if op not in COMPARISONS and any(
        isinstance(x, ir.Expr) and not isinstance(x, ir.Scalar) and x.type.dtype == "bool" for x in (a, b)
    ):
        raise ShapeError(
            f"'{op}' on a bool tensor (ONNX has no arithmetic on bools)", "convert it with float(x) or long(x)"
        )
    dtype = result_dtype(a, b)
    if dtype is None:
        raise ShapeError(f"'{op}' mixes {a.type.dtype} and {b.type.dtype}", "convert one side with float(x) or long(x)")
    shape = broadcast(a.type.shape, b.type.shape)
    if shape is None:
        raise ShapeError(f"shapes {a.type.shape_str()} and {b.type.shape_str()} do not broadcast for '{op}'")
    if op == "/" and dtype not in FLOAT_DTYPES:
        dtype = "float32"
    if op in COMPARISONS:
        dtype = "bool"
    return TensorType(dtype, shape)


def matmul_type(ta: TensorType, tb: TensorType) -> TensorType:
    if ta.rank < 2 or tb.rank < 2:
        raise ShapeError(f"'@' needs tensors of rank 2 or more, got {ta.shape_str()} @ {tb.shape_str()}")
    if ta.dtype != tb.dtype:
        raise ShapeError(f"'@' mixes {ta.dtype} and {tb.dtype}")
    if ta.shape[-1] != tb.shape[-2]:
        raise ShapeError(
            f"'@' needs matching inner sizes: {ta.shape_str()} @ {tb.shape_str()} ({ta.shape[-1]} vs {tb.shape[-2]})",
            "transpose one side with transpose(x)?",
        )
    batch = broadcast(ta.shape[:-2], tb.shape[:-2])
    if batch is None:
        raise ShapeError(f"'@' batch dimensions do not broadcast: {ta.shape_str()} @ {tb.shape_str()}")
    return TensorType(ta.dtype, (*batch, ta.shape[-2], tb.shape[-1]))


def result_dtype(a: ir.Expr, b: ir.Expr) -> str | None:
    if isinstance(a, ir.Scalar) and isinstance(b, ir.Scalar):
        return a.type.dtype
    if isinstance(a, ir.Scalar):
        a, b = b, a
    if isinstance(b, ir.Scalar):
        if not a.type.is_float and b.type.dtype == "float32":
            return "float32"
        return a.type.dtype
    if a.type.dtype == b.type.dtype:
        return a.type.dtype
    return None


def expand_index(items: list, rank: int) -> list:
    """The index with `...` and the missing trailing dimensions written out as full slices: one item per
    dimension of the input, plus None for each new axis."""
    explicit = sum(1 for i in items if i is not Ellipsis and i is not None)
    expanded = []
    for item in items:
        if item is Ellipsis:
            expanded += [ir.SliceItem(None, None, None)] * (rank - explicit)
        else:
            expanded.append(item)
    return expanded + [ir.SliceItem(None, None, None)] * (rank - sum(1 for i in expanded if i is not None))


def index_shape(shape, items) -> tuple[tuple, list[tuple[Sym, int]]]:
    """The shape after indexing, and what each symbolic size indexed must be at least."""
    explicit = sum(1 for i in items if i is not Ellipsis and i is not None)
    if explicit > len(shape):
        raise ShapeError(f"too many indices ({explicit}) for a tensor of shape [{', '.join(map(str, shape))}]")
    if items.count(Ellipsis) > 1:
        raise ShapeError("at most one '...' per index")
    expanded = expand_index(items, len(shape))
    out, needs, axis = [], [], 0
    for item in expanded:
        if item is None:
            out.append(1)
            continue
        size = shape[axis]
        if isinstance(item, int):
            if isinstance(size, int) and not -size <= item < size:
                raise ShapeError(f"index {item} is out of range for size {size}")
            if isinstance(size, Sym):
                needs.append((size, item + 1 if item >= 0 else -item))
        else:
            sliced, need = slice_size(size, item)
            out.append(sliced)
            if need:
                needs.append((size, need))
        axis += 1
    return tuple(out), needs


def slice_size(size, s: ir.SliceItem):
    """The size of a slice, and the least `size` it needs (for a symbolic size; 0 when none)."""
    if isinstance(size, int):
        return len(range(size)[slice(s.start, s.stop, s.step)]), 0
    if s.step not in (None, 1):
        raise ShapeError(f"a strided slice of the symbolic size '{size}' is not supported")
    start = s.start or 0
    if start < 0 and s.stop is not None and s.stop >= 0:
        raise ShapeError(f"a slice of the symbolic size '{size}' cannot mix a negative start with a positive stop")
    if start >= 0 and s.stop is not None and s.stop >= 0:
        result, need = s.stop - start, s.stop
    elif start < 0:
        result, need = (-start if s.stop is None else s.stop - start), -start
    else:
        result, need = (size if s.stop is None else size + s.stop) - start, 0
    if isinstance(result, int) and result < 0:
        raise ShapeError(f"the slice [{start}:{s.stop}] of '{size}' has a negative size")
    return result, need
