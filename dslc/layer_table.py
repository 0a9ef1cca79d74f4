"""The layers of the module being checked: attribute names, nesting in containers, counts.

A layer named in the spec keeps its name (`conv1: Conv2d(...)`); an unnamed one gets its op's prefix
and the next free number (`fc2`), never a name the spec gives a later layer. Layers inside a named
group or a repeat are children of that container, numbered 0, 1, ... as nn.Sequential numbers them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dslc import ir
from dslc.errors import Loc, error
from dslc.shapes import TensorType

MAX_LAYERS = 20_000  # layers of one model with every block and repeat expanded (ResNet-152 has about 500)


class LayerTable:
    def __init__(self, module_name: str, reserved: set[str]) -> None:
        self.module_name = module_name
        self.reserved = reserved  # names the spec gives layers: auto names avoid them
        self.top: list[ir.Submodule] = []  # the module's own layers
        self.containers: list[list[ir.Submodule]] = [self.top]  # the innermost last
        self.attrs: set[str] = set()
        self.next_index: dict[str, int] = {}  # the next number per prefix
        self.pending: list[ir.Submodule] = []  # created since the last statement was emitted
        self.records: list[ir.LayerRecord] = []
        self.shown_groups: list[str] = []  # the named groups being checked, whose layers get rows of their own
        self.all_records: list[ir.LayerRecord] = []  # inside groups and repeats too, for an editor's hover
        self.count = 0  # layers with every block and repeat expanded

    @property
    def at_top(self) -> bool:
        """Whether a layer made now is the module's own (not inside a group or a repeat)."""
        return len(self.containers) == 1

    def add(self, sub: ir.Submodule) -> None:
        self.count += sub.layers
        if self.count > MAX_LAYERS:
            raise error(
                sub.loc,
                f"this makes more than {MAX_LAYERS:,} layers in '{self.module_name}' (blocks and repeats expanded)",
                "nested repeats multiply: repeat 100 inside repeat 100 is 10,000 layers",
            )
        if self.at_top:
            if sub.attr in self.attrs:
                raise error(sub.loc, f"a layer named '{sub.attr}' already exists")
            self.attrs.add(sub.attr)
            self.pending.append(sub)
        self.containers[-1].append(sub)

    @contextmanager
    def children(self, group: str | None = None) -> Iterator[list[ir.Submodule]]:
        """Collect the layers made inside a container: a named `group`, whose layers get rows of their own under its
        row (`features.0`), or a repeat, whose copies its one row stands for."""
        children: list[ir.Submodule] = []
        self.containers.append(children)
        shown = group is not None and len(self.shown_groups) == len(self.containers) - 2
        if shown:
            self.shown_groups.append(group)
        try:
            yield children
        finally:
            self.containers.pop()
            if shown:
                self.shown_groups.pop()

    def auto_attr(self, prefix: str) -> str:
        if prefix[-1:].isdigit():
            prefix += "_"  # b2 -> b2_1, not b21
        n = self.next_index.get(prefix, 1)
        while f"{prefix}{n}" in self.attrs or f"{prefix}{n}" in self.reserved:
            n += 1
        self.next_index[prefix] = n + 1
        return f"{prefix}{n}"

    def mark(self) -> int:
        """Where the next row goes: a group's row is placed here, above the rows of its layers."""
        return len(self.records)

    def record(
        self, loc: Loc, module: str, what: str, outputs: list[TensorType], params: int, at: int | None = None
    ) -> None:
        """A row of `dslc check --shapes`: the module's own layers and those of its named groups (`all_records` has
        every layer, inside repeats too)."""
        depth = len(self.containers) - 1
        shown = depth <= len(self.shown_groups)  # not inside a repeat
        path = ".".join([*self.shown_groups[:depth], module]) if module and shown else module
        record = ir.LayerRecord(loc, path, what, outputs, params, depth)
        self.all_records.append(record)
        if shown:
            self.records.insert(len(self.records) if at is None else at, record)

    def take_pending(self) -> list[ir.Submodule]:
        taken, self.pending = self.pending, []
        return taken
