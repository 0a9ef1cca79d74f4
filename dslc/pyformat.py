"""How `ruff format` spaces two constructs the generators write: powers and slices.

`x**2` and `self.n**0.5` hug their operator; `(h - 1) ** 0.5` does not. A slice whose bounds are
names or numbers is tight (`x[1:n]`); one with any other bound gets spaces (`x[0 : self.n]`).
"""

from __future__ import annotations

import re

_NUMBER = r"\d[\d_]*(?:\.\d*)?(?:e[-+]?\d+)?"
_SIMPLE_POWER = re.compile(rf"^-?(?:{_NUMBER}|[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$")
_SIMPLE_BOUND = re.compile(rf"^[-+]?(?:{_NUMBER}|[A-Za-z_]\w*)$")


def power(left: str, right: str) -> str:
    return f"{left}**{right}" if _SIMPLE_POWER.match(left) and _SIMPLE_POWER.match(right) else f"{left} ** {right}"


def slice_text(start: str, stop: str, step: str | None) -> str:
    """`start:stop[:step]` from the bounds' code ("" where a bound is left out)."""
    parts = [start, stop] + ([step] if step is not None else [])
    if all(not p or _SIMPLE_BOUND.match(p) for p in parts):
        return ":".join(parts)
    text = parts[0]
    for before, part in zip(parts, parts[1:]):  # a colon is spaced on each side that has a bound
        text += (" :" if before else ":") + (f" {part}" if part else "")
    return text
