"""Parameters and argument checking, shared by every registry: layers and functions (dslc.layers),
data sets, losses, metrics, optimizers and schedules (dslc.data, dslc.training). Torch-free."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from dslc.traced import expr_of, is_bool, trace

REQUIRED = object()
KIND_WORDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "strs": "a list of strings",
    "floats": "a tuple of numbers",
    "ints": "an integer or a tuple of integers",
    "any": "a value",
}


@dataclass(frozen=True)
class Param:
    """One parameter: name, kind, default, doc, allowed choices.

    Kinds: int | float | bool | str | strs | floats | ints (an int or a tuple) | any, and for layers
    axis | axes (a dimension given by index or by name) | dims (sizes, symbolic names allowed).
    """

    name: str
    kind: str
    default: Any = REQUIRED
    doc: str = ""
    choices: tuple[Any, ...] | None = None
    low: float | None = None  # numbers (each item of floats/ints) must be >= low (> low when open_low)
    high: float | None = None  # ... and <= high (< high when open_high)
    open_high: bool = False
    open_low: bool = False
    length: int | None = None  # floats/ints tuples: exactly this many items

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


P = Param  # the short name the training registries use


class BindError(Exception):
    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


def signature(what: str, params: tuple[Param, ...]) -> str:
    """`Conv2d(out_channels, kernel, stride=1, ...)`, as hints and the reference show it."""
    parts = [p.name if p.required else f"{p.name}={dsl_value(p.default)}" for p in params]
    return f"{what}({', '.join(parts)})"


def dsl_value(value: Any) -> str:
    """A value written as the language writes it: true, none, "text", (1, 2), [a, b]."""
    if value is None:
        return "none"
    if is_bool(value):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # the language's string escapes are Python's
    if isinstance(value, (tuple, list)):
        inner = ", ".join(dsl_value(v) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    return repr(value)


def brief(value: Any, width: int = 60) -> str:
    """`dsl_value` cut to fit in a message: a value can be a string of a million characters."""
    if isinstance(value, (str, tuple, list)) and len(value) > width:
        head = dsl_value(value[:width])
        return f"{head[:width]}... ({len(value):,} {'characters' if isinstance(value, str) else 'items'})"
    text = dsl_value(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _check_range(param: Param, value: Any, what: str) -> None:
    if param.kind not in ("int", "float", "ints", "floats") or value is None:
        return
    items = value if isinstance(value, tuple) else (value,)
    if param.length is not None and len(items) != param.length:
        raise BindError(f"{what}: '{param.name}' takes {param.length} values, got {brief(value)}")
    for item in items:
        if isinstance(item, float) and not math.isfinite(item):
            raise BindError(f"{what}: '{param.name}' must be a finite number, got {brief(value)}")
        too_low = param.low is not None and (item <= param.low if param.open_low else item < param.low)
        too_high = param.high is not None and (item >= param.high if param.open_high else item > param.high)
        if too_low or too_high:
            low = "" if param.low is None else f"{'above' if param.open_low else 'at least'} {dsl_value(param.low)}"
            high = "" if param.high is None else f"{'below' if param.open_high else 'at most'} {dsl_value(param.high)}"
            raise BindError(
                f"{what}: '{param.name}' must be {' and '.join(filter(None, (low, high)))}, got {brief(value)}"
            )


def coerce(param: Param, value: Any, what: str) -> Any:
    """Check a value against its parameter kind; ints stand for floats."""
    kind, ok = param.kind, True
    if value is None:
        ok = param.default is None
    elif kind == "int":
        ok = isinstance(value, int) and not is_bool(value)
    elif kind == "float":
        ok = isinstance(value, (int, float)) and not is_bool(value)
        if ok and not isinstance(value, float):  # an int stands for a float; a block parameter stays one
            value = trace(float(value), expr_of(value))
    elif kind == "bool":
        ok = is_bool(value)
    elif kind == "str":
        ok = isinstance(value, str)
    elif kind == "strs":
        value = (value,) if isinstance(value, str) else value
        ok = isinstance(value, tuple) and all(isinstance(v, str) for v in value)
    elif kind == "ints":
        items = value if isinstance(value, tuple) else (value,)
        ok = all(isinstance(v, int) and not is_bool(v) for v in items)
    elif kind == "floats":
        ok = isinstance(value, tuple) and all(isinstance(v, (int, float)) and not is_bool(v) for v in value)
        value = tuple(float(v) for v in value) if ok else value
    if not ok:
        raise BindError(f"{what}: '{param.name}' must be {KIND_WORDS.get(kind, kind)}, got {brief(value)}")
    _check_range(param, value, what)
    if param.choices and value not in param.choices:
        raise BindError(
            f"{what}: '{param.name}' must be one of {', '.join(map(repr, param.choices))}, got {brief(value)}"
        )
    return value


def bind(params: tuple[Param, ...], args: list[Any], kwargs: dict[str, Any], what: str) -> dict[str, Any]:
    """Match positional and keyword values to parameters, fill defaults, check kinds."""
    from dslc.errors import did_you_mean

    if len(args) > len(params):
        raise BindError(
            f"{what} takes at most {len(params)} positional argument(s), got {len(args)}", signature(what, params)
        )
    values = dict(zip((p.name for p in params), args))
    by_name = {p.name: p for p in params}
    for key, value in kwargs.items():
        if key not in by_name:
            raise BindError(f"{what} has no argument '{key}'", did_you_mean(key, by_name) or signature(what, params))
        if key in values:
            raise BindError(f"{what} got '{key}' twice")
        values[key] = value
    out = {}
    for param in params:
        if param.name not in values:
            if param.required:
                raise BindError(f"{what} is missing its '{param.name}' argument", signature(what, params))
            out[param.name] = param.default
        else:
            out[param.name] = coerce(param, values[param.name], what)
    return out
