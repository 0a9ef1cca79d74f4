"""Tied weights (`tie lm_head.weight = transformer.wte.weight`): finding a parameter's shape by its state_dict key.

A key walks the model's submodules as PyTorch names them: a layer's attribute, a block's layers, a named group's
or a repeat's numbered children, and ends at a parameter whose shape the op's registry entry gives (`Op.weights`)
or at a declared `param`. Torch-free: the checker calls it.
"""

from __future__ import annotations

from collections.abc import Callable

from dslc import ir
from dslc.layers import REGISTRY


class TieError(Exception):
    """The key names no parameter that can be tied; the message says how far it got."""


def parameter_shape(
    key: str, submodules: list[ir.Submodule], module_of: Callable[[str], ir.ModuleIR | None]
) -> tuple[int, ...]:
    """The shape of the parameter at `key` (`transformer.wte.weight`) among `submodules`."""
    parts = key.split(".")
    subs, walked = submodules, []
    while parts:
        name = parts.pop(0)
        sub = next((s for s in subs if s.attr == name), None)
        if sub is None:
            where = f"'{'.'.join(walked)}'" if walked else "the model"
            known = ", ".join(s.attr for s in subs[:12])
            has = f" (it has: {known})" if known else ""
            raise TieError(f"{where} has no layer or parameter '{name}' above this line{has}")
        walked.append(name)
        if sub.kind == "param":
            if parts:
                raise TieError(f"'{'.'.join(walked)}' is a parameter: nothing is inside it")
            return tuple(int(d) for d in sub.init["shape"])
        if sub.kind == "op":
            return _op_parameter(sub, parts, ".".join(walked))
        if sub.kind == "block":
            module = module_of(sub.block)
            if module is None:
                raise TieError(f"'{'.'.join(walked)}' failed to check")
            subs = module.submodules
        else:  # a named group or a repeat: children keyed 0, 1, ...
            subs = [ir.Submodule(str(i), c.kind, c.loc, c.op, c.init, c.block, children=c.children)
                    for i, c in enumerate(sub.children)]  # fmt: skip
    raise TieError(f"'{key}' is a layer, not a parameter: name one of its parameters, e.g. '{key}.weight'")


def _op_parameter(sub: ir.Submodule, parts: list[str], path: str) -> tuple[int, ...]:
    op = REGISTRY[sub.op]
    if op.weights is None:
        tieable = sorted({o.name for o in REGISTRY.values() if o.weights is not None})
        raise TieError(f"'{path}' is a {op.name}, whose parameters cannot be tied (these can: {', '.join(tieable)})")
    shapes = op.weights(sub.init)
    if not parts:
        raise TieError(f"'{path}' is a layer, not a parameter: name one of its parameters, e.g. '{path}.weight'")
    if len(parts) != 1 or parts[0] not in shapes:
        raise TieError(
            f"'{path}' ({op.name}) has no parameter '{'.'.join(parts)}'; its parameters: {', '.join(shapes)}"
        )
    return tuple(int(d) for d in shapes[parts[0]])
