"""Arguments of a layer or function call matched to its parameters (`Param`s of the op registry).

Positional arguments fill the parameters in order (a leading `dims` or `axes` parameter takes them
all: `Reshape(batch, 1, 28, 28)`), keywords by name; each value is checked against its kind and
range, and missing ones take their defaults. Errors name the op and show its signature.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dslc import ast
from dslc.errors import Loc, did_you_mean, error
from dslc.hints import argument_hint, call_hint
from dslc.params import BindError, Param, brief, coerce, signature
from dslc.shapes import Sym


def _usage(what: str, params: tuple[Param, ...]) -> str:  # written for an error only: binding runs per layer
    return f"usage: {signature(what, params)}"


def bind_arguments(
    params: tuple[Param, ...],
    args: list[Any],
    arg_exprs: list[ast.Expr],
    kwargs: list[tuple[str, ast.Expr]],
    loc: Loc,
    what: str,
    value_of: Callable[[ast.Expr, Param | None], Any],
) -> dict[str, Any]:
    """`args` are values already computed; `arg_exprs` and `kwargs` are evaluated by `value_of`."""
    values: dict[str, Any] = {}
    positional = list(args) + [
        value_of(e, params[i] if i < len(params) else None) for i, e in enumerate(arg_exprs, len(args))
    ]
    if params and params[0].kind in ("dims", "axes") and positional:
        collected = positional[0] if len(positional) == 1 and isinstance(positional[0], tuple) else tuple(positional)
        values[params[0].name] = collected
        positional = []
    if len(positional) > len(params):
        raise error(
            loc,
            f"{what} takes at most {len(params)} positional argument(s), got {len(positional)}",
            call_hint(what) or _usage(what, params),
        )
    for param, value in zip(params, positional):
        values[param.name] = value
    by_name = {p.name: p for p in params}
    for key, vexpr in kwargs:
        if key not in by_name:
            literal = vexpr.value if isinstance(vexpr, (ast.Num, ast.Str)) else None  # `units=64`: Linear(64)
            hint = (
                argument_hint(what, key, params, literal)
                or call_hint(what)
                or did_you_mean(key, by_name)
                or _usage(what, params)
            )
            raise error(vexpr.loc, f"{what} has no argument '{key}'", hint)
        if key in values:
            raise error(vexpr.loc, f"{what} got '{key}' twice")
        values[key] = value_of(vexpr, by_name[key])
    for param in params:
        if param.name not in values:
            if param.required:
                raise error(loc, f"{what} is missing its '{param.name}' argument", _usage(what, params))
            values[param.name] = param.default
        else:
            values[param.name] = check_argument(param, values[param.name], loc, what)
    return values


def check_argument(param: Param, value: Any, loc: Loc, what: str) -> Any:
    if param.kind == "dims":
        sizes = value if isinstance(value, tuple) else (value,)
        for size in sizes:
            if not (isinstance(size, Sym) or (isinstance(size, int) and not isinstance(size, bool) and size >= -1)):
                raise error(
                    loc, f"{what}: '{param.name}' takes sizes (integers, -1 or dimension names), got {brief(size)}"
                )
        return sizes
    if param.kind in ("axis", "axes"):
        return value  # resolved against the input's shape by the op's shape rule
    try:
        return coerce(param, value, what)
    except BindError as exc:
        raise error(loc, str(exc), call_hint(what) or exc.hint) from None
