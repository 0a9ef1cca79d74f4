"""Shrink a crasher while it keeps failing the same way (same stage, outcome, exception type and raising function).

Passes, cheapest first: shorten long repetitions (deep nesting and long names are many copies of a short
unit; runs of nearly the same length shrink together, so brackets stay balanced), then delta debugging
over lines, then over tokens, then repetitions again.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.fuzz.harness import Outcome
from tests.fuzz.mutate import decode, encode, tokenize

RUN_RE = re.compile(rb"(.{1,16}?)\1{7,}", re.DOTALL)  # a unit of up to 16 bytes, 8 or more times in a row
MAX_TOKENS = 5_000  # token-level delta debugging is quadratic at worst: past this, lines only


@dataclass
class Shrinker:
    """Answers "does this candidate still fail like the target?", with a budget of tests and seconds."""

    run: Callable[[bytes], Outcome]
    target: Outcome
    max_tests: int = 2_000
    max_seconds: float = 120.0
    tests: int = 0
    seen: dict[bytes, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.max_seconds

    @property
    def spent(self) -> bool:
        return self.tests >= self.max_tests or time.monotonic() >= self.deadline

    def fails(self, data: bytes) -> bool:
        key = hashlib.sha256(data).digest()
        if key not in self.seen:
            if self.spent:
                return False
            self.tests += 1
            self.seen[key] = self.target.same_failure(self.run(data))
        return self.seen[key]


def minimize(data: bytes, shrinker: Shrinker) -> bytes:
    data = shrink_repetitions(data, shrinker)
    data = b"".join(ddmin(split_lines(data), shrinker))
    if len(split_tokens(data)) <= MAX_TOKENS:
        data = b"".join(ddmin(split_tokens(data), shrinker))
    return shrink_repetitions(data, shrinker)


def split_lines(data: bytes) -> list[bytes]:
    return re.findall(rb"[^\n]*\n|[^\n]+", data)


def split_tokens(data: bytes) -> list[bytes]:
    """Tokens, each with the whitespace after it, so that dropping one never glues its neighbours together."""
    chunks: list[bytes] = []
    for tok in tokenize(decode(data)):
        if tok.kind == "space" and chunks:
            chunks[-1] += encode(tok.text)
        else:
            chunks.append(encode(tok.text))
    return chunks


def ddmin(chunks: list[bytes], shrinker: Shrinker) -> list[bytes]:
    """Zeller's delta debugging, complements only: drop ever smaller slices while the failure stays."""
    granularity = 2
    while len(chunks) >= 2 and not shrinker.spent:
        size = -(-len(chunks) // granularity)
        for start in range(0, len(chunks), size):
            candidate = chunks[:start] + chunks[start + size :]
            if shrinker.fails(b"".join(candidate)):
                chunks, granularity = candidate, max(granularity - 1, 2)
                break
        else:
            if size == 1:
                break
            granularity = min(granularity * 2, len(chunks))
    return chunks


@dataclass(frozen=True)
class Run:
    start: int
    unit: bytes
    count: int

    @property
    def end(self) -> int:
        return self.start + len(self.unit) * self.count


def repetition_runs(data: bytes) -> list[Run]:
    return [Run(m.start(), m.group(1), len(m.group()) // len(m.group(1))) for m in RUN_RE.finditer(data)]


def with_fewer(data: bytes, runs: list[Run], fewer: int) -> bytes:
    """`data` with `fewer` copies taken out of each run."""
    for run in sorted(runs, key=lambda r: r.start, reverse=True):
        data = data[: run.start] + run.unit * (run.count - fewer) + data[run.end :]
    return data


def shrink_repetitions(data: bytes, shrinker: Shrinker) -> bytes:
    """Shorten each group of runs with (nearly) equal counts to the fewest copies that still fail."""
    tried: set[int] = set()
    while not shrinker.spent:
        runs = repetition_runs(data)
        groups = [[r for r in runs if abs(r.count - anchor.count) <= 2] for anchor in runs if anchor.count not in tried]
        if not groups:
            return data
        group = max(groups, key=lambda g: sum(len(r.unit) * r.count for r in g))
        tried.update(r.count for r in group)
        fewer = fewest_removed(data, group, shrinker)
        if fewer:
            data = with_fewer(data, group, fewer)
            tried = {r.count - fewer for r in group}  # offsets moved, other runs are worth another look
    return data


def fewest_removed(data: bytes, group: list[Run], shrinker: Shrinker) -> int:
    """How many copies can go from every run of the group while the failure stays."""
    smallest = min(r.count for r in group)
    keep = fewest_copies(smallest, lambda n: shrinker.fails(with_fewer(data, group, smallest - n)))
    return smallest - keep


def fewest_copies(count: int, fails_with: Callable[[int], bool]) -> int:
    """The smallest n <= count for which fails_with(n) holds (count itself is known to), by doubling then bisection."""
    low, high, n = 0, count, 1
    while n < high:
        if fails_with(n):
            high = n
            break
        low, n = n, n * 2
    while high - low > 1:
        middle = (low + high) // 2
        if fails_with(middle):
            high = middle
        else:
            low = middle
    return high
