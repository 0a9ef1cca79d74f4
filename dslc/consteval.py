"""Compile-time arithmetic on constants and sizes, bounded so no spec can make it slow or huge.

Python integers grow without limit, so `2 ** 2 ** 64` or `"a" * 10 ** 9` would hang the checker or
take gigabytes; here every result is checked before it is computed where that is cheap (powers,
repetition) and after it otherwise (sums and products stay within 2**63 - 1 at every step).
"""

from __future__ import annotations

import math
import operator
from typing import Any

from dslc.shapes import Sym
from dslc.traced import ARITHMETIC, is_bool

MAX_INT = 2**63 - 1  # the largest size PyTorch and ONNX can hold
MAX_ITEMS = 10_000  # characters of a string or items of a tuple built by `*` or `+`

OPS = {
    **ARITHMETIC,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


class ConstError(Exception):
    """A compile-time operation that is undefined or too large; the message says which."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not is_bool(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not is_bool(value)


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (str, tuple))


def apply(op: str, left: Any, right: Any) -> Any:
    """`left op right` for compile-time values (numbers, strings, tuples, bools, symbolic sizes)."""
    _check_before(op, left, right)
    try:
        result = OPS[op](left, right)
    except ZeroDivisionError:
        raise ConstError("division by zero") from None
    except OverflowError:
        raise ConstError(f"the result of '{op}' is too large") from None
    except TypeError:
        raise ConstError(f"cannot apply '{op}'") from None
    return check_result(result)


def negate(value: Any) -> Any:
    try:
        return check_result(-value)
    except TypeError:
        raise ConstError("cannot negate") from None


def _check_before(op: str, left: Any, right: Any) -> None:
    if op == "**":
        if isinstance(left, Sym) or isinstance(right, Sym):
            raise ConstError("symbolic sizes have no powers; multiply instead")
        if _is_int(left) and _is_int(right) and abs(left) > 1 and right > 0 and right * math.log2(abs(left)) > 63:
            raise ConstError(f"{left} ** {right} is larger than 2**63 - 1")
        if _is_number(left) and _is_number(right) and abs(right) > MAX_INT:
            raise ConstError(f"the exponent {right} is too large")
    elif op == "*":
        for seq, count in ((left, right), (right, left)):
            if _is_sequence(seq) and _is_int(count) and len(seq) * max(count, 0) > MAX_ITEMS:
                kind = "characters" if isinstance(seq, str) else "items"
                raise ConstError(f"this makes {len(seq) * count:,} {kind}; at most {MAX_ITEMS:,} are allowed")
        if isinstance(left, Sym) and isinstance(right, Sym) and len(left.terms) * len(right.terms) > Sym.MAX_TERMS:
            raise ConstError("the symbolic size has too many terms")
    elif op == "+" and _is_sequence(left) and _is_sequence(right) and len(left) + len(right) > MAX_ITEMS:
        raise ConstError(f"this makes {len(left) + len(right):,} items; at most {MAX_ITEMS:,} are allowed")


def check_result(value: Any) -> Any:
    if _is_int(value) and abs(value) > MAX_INT:
        raise ConstError("the result is larger than 2**63 - 1")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConstError("the result is not a finite number")
    if isinstance(value, complex):
        raise ConstError("the result is not a real number")
    if isinstance(value, Sym) and any(abs(c) > MAX_INT for c in value.terms.values()):
        raise ConstError("the symbolic size is larger than 2**63 - 1")
    return value
