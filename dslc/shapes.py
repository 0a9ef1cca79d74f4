"""Tensor types with symbolic dimensions.

A dimension is an `int` or a `Sym`: a polynomial over named sizes (`batch`, `time`, `2*time + 1`)
with integer coefficients. Floor division that does not divide evenly becomes an opaque atom, so
`(time - 11) // 2 + 1` after a strided convolution stays exact and comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Monomial = tuple[str, ...]  # sorted atom names; () is the constant term

# Opaque floor-division atoms by name: "((time - 11) // 2)" -> (time - 11, 2), for evaluation.
FLOOR_ATOMS: dict[str, tuple[Sym, int]] = {}


class Sym:
    __slots__ = ("terms",)
    MAX_TERMS = 64  # a size with more terms than this is refused (products of sums grow fast)

    def __init__(self, terms: dict[Monomial, int]):
        self.terms = {m: c for m, c in terms.items() if c != 0}

    @staticmethod
    def named(name: str) -> Sym:
        return Sym({(name,): 1})

    # -- construction helpers
    @staticmethod
    def lift(value: Dim) -> Sym:
        return value if isinstance(value, Sym) else Sym({(): int(value)})

    def simplify(self) -> Dim:
        if not self.terms:
            return 0
        if set(self.terms) == {()}:
            return self.terms[()]
        return self

    # -- arithmetic
    def __add__(self, other: Dim) -> Dim:
        terms = dict(self.terms)
        for m, c in Sym.lift(other).terms.items():
            terms[m] = terms.get(m, 0) + c
        return Sym(terms).simplify()

    __radd__ = __add__

    def __neg__(self) -> Dim:
        return Sym({m: -c for m, c in self.terms.items()}).simplify()

    def __sub__(self, other: Dim) -> Dim:
        return self + (-Sym.lift(other))

    def __rsub__(self, other: Dim) -> Dim:
        return Sym.lift(other) + (-self)

    def __mul__(self, other: Dim) -> Dim:
        terms: dict[Monomial, int] = {}
        for m1, c1 in self.terms.items():
            for m2, c2 in Sym.lift(other).terms.items():
                m = tuple(sorted(m1 + m2))
                terms[m] = terms.get(m, 0) + c1 * c2
        return Sym(terms).simplify()

    __rmul__ = __mul__

    def __floordiv__(self, other: int) -> Dim:
        if not isinstance(other, int) or other <= 0:
            raise TypeError("symbolic sizes divide only by positive integers")
        if other == 1:
            return self
        if all(c % other == 0 for c in self.terms.values()):
            return Sym({m: c // other for m, c in self.terms.items()}).simplify()
        numerator = str(self) if len(self.terms) == 1 else f"({self})"
        name = f"({numerator} // {other})"
        FLOOR_ATOMS[name] = (self, other)
        return Sym.named(name)

    def evaluate(self, sizes: dict[str, int]) -> int:
        """The concrete size given a size for every named symbol."""
        total = 0
        for monomial, coeff in self.terms.items():
            term = coeff
            for atom in monomial:
                if atom in FLOOR_ATOMS:
                    numerator, divisor = FLOOR_ATOMS[atom]
                    term *= numerator.evaluate(sizes) // divisor
                else:
                    term *= sizes[atom]
            total += term
        return total

    # -- comparison and display
    def __eq__(self, other: object) -> bool:
        if isinstance(other, (int, Sym)):
            return self.terms == Sym.lift(other).terms
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.terms.items())))

    def atoms(self) -> set[str]:
        return {a for m in self.terms for a in m}

    @property
    def plain_name(self) -> str | None:
        """`time` for the size `time`; None for a compound size (`2*time`, `time // 2`)."""
        if len(self.terms) == 1:
            ((monomial, coeff),) = self.terms.items()
            if coeff == 1 and len(monomial) == 1 and monomial[0] not in FLOOR_ATOMS:
                return monomial[0]
        return None

    def __str__(self) -> str:
        parts = []
        for m, c in sorted(self.terms.items(), key=lambda mc: (len(mc[0]) == 0, mc[0])):
            body = "*".join(m)
            if not m:
                text = str(abs(c))
            elif abs(c) == 1:
                text = body
            else:
                text = f"{abs(c)}*{body}"
            if not parts:
                parts.append(text if c > 0 else f"-{text}")
            else:
                parts.append(("+ " if c > 0 else "- ") + text)
        return " ".join(parts)

    __repr__ = __str__


Dim = int | Sym


def substitute(d: Dim, sizes: dict[str, Dim]) -> Dim:
    """`d` with each named size replaced by its value in `sizes` (a model's output size in its caller's terms)."""
    if not isinstance(d, Sym):
        return d
    total: Dim = 0
    for monomial, coeff in d.terms.items():
        term: Dim = coeff
        for atom in monomial:
            if atom in FLOOR_ATOMS:
                numerator, divisor = FLOOR_ATOMS[atom]
                value = substitute(numerator, sizes) // divisor
            else:
                value = sizes.get(atom, Sym.named(atom))
            term = term * value
        total = total + term
    return total


def dim_str(d: Dim) -> str:
    return str(d)


def is_static(d: Dim) -> bool:
    return isinstance(d, int)


DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int8", "uint8", "bool")
FLOAT_DTYPES = ("float32", "float64", "float16", "bfloat16")


@dataclass(frozen=True)
class TensorType:
    dtype: str
    shape: tuple[Dim, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    def with_shape(self, shape) -> TensorType:
        return TensorType(self.dtype, tuple(shape))

    def with_dtype(self, dtype: str) -> TensorType:
        return TensorType(dtype, self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(dim_str(d) for d in self.shape)}]"

    def shape_str(self) -> str:
        return f"[{', '.join(dim_str(d) for d in self.shape)}]"


def numel(shape) -> Dim:
    total: Dim = 1
    for d in shape:
        total = d * total if isinstance(d, Sym) else total * d
    return total


def normalize_axis(axis: int, rank: int) -> int | None:
    """Python-style negative axes; None when out of range."""
    if -rank <= axis < rank:
        return axis % rank
    return None


def broadcast(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> tuple[Dim, ...] | None:
    """numpy broadcasting on symbolic shapes; None when the shapes do not broadcast."""
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            return None
    return tuple(reversed(out))


# ---------------------------------------------------------------- sizes that make a model run

MAX_EXAMPLE_SIZE = 4096  # the largest size chosen for a symbolic dimension when verifying


@dataclass(frozen=True)
class SizeRule:
    """`at_least <= dim <= at_most` must hold at run time: a convolution's output or an index into a dimension
    needs a smallest size, positions that index a table (a learned position embedding) a largest."""

    dim: Sym
    at_least: int
    why: str
    loc: Any = None  # dslc.errors.Loc of the layer or index that needs it
    at_most: int | None = None

    @property
    def key(self) -> tuple[Sym, int, int | None]:
        return self.dim, self.at_least, self.at_most

    def holds(self, sizes: dict[str, int]) -> bool:
        size = self.dim.evaluate(sizes)
        return self.at_least <= size and (self.at_most is None or size <= self.at_most)

    def __str__(self) -> str:
        if self.at_most is None:
            return f"{self.dim} >= {self.at_least}"
        return (
            f"{self.dim} <= {self.at_most}"
            if self.at_least <= 1
            else f"{self.at_least} <= {self.dim} <= {self.at_most}"
        )


def _base_atoms(dim: Sym) -> set[str]:
    """The input dimension names a size depends on (through floor-division atoms too)."""
    names: set[str] = set()
    for atom in dim.atoms():
        names |= _base_atoms(FLOOR_ATOMS[atom][0]) if atom in FLOOR_ATOMS else {atom}
    return names


def unmet_rules(rules, sizes: dict[str, int]) -> list[SizeRule]:
    return [r for r in rules if not r.holds(sizes)]


def solve_sizes(defaults: dict[str, int], rules) -> tuple[dict[str, int], list[SizeRule]]:
    """Sizes near `defaults` for which every rule holds: sizes above a rule's largest are lowered to it, the
    sizes an unmet smallest depends on raised.

    Returns the sizes and the rules still unmet (empty when solved; a rule such as `4 - time >= 1`,
    one needing sizes beyond MAX_EXAMPLE_SIZE, or a smallest above a largest stays unmet).
    """
    sizes = dict(defaults)
    lower_to_limits(sizes, rules)
    for _ in range(64):
        unmet = unmet_rules(rules, sizes)
        if not unmet:
            return sizes, []
        before = dict(sizes)
        for rule in unmet:
            deficit = rule.at_least - rule.dim.evaluate(sizes)
            if deficit <= 0:
                continue  # above its largest: lowered below
            for name in _base_atoms(rule.dim) & sizes.keys():
                sizes[name] = min(MAX_EXAMPLE_SIZE, max(sizes[name] + deficit, sizes[name] * 2))
        lower_to_limits(sizes, rules)
        if sizes == before:
            break
    return sizes, unmet_rules(rules, sizes)


def lower_to_limits(sizes: dict[str, int], rules) -> None:
    """Lower the sizes each rule with a largest size depends on until it holds (sizes stay at least 1)."""
    for rule in rules:
        if rule.at_most is None:
            continue
        for name in sorted(_base_atoms(rule.dim) & sizes.keys()):
            excess = rule.dim.evaluate(sizes) - rule.at_most
            while excess > 0 and sizes[name] > 1:
                slope = rule.dim.evaluate(sizes) - rule.dim.evaluate({**sizes, name: sizes[name] - 1})
                if slope <= 0:
                    break  # the size does not shrink with this name
                sizes[name] = max(1, sizes[name] - -(-excess // slope))  # exact for a size linear in `name`
                excess = rule.dim.evaluate(sizes) - rule.at_most
