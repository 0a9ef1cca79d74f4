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
    def children(self) -> Iterator[list[ir.Submodule]]:
        """Collect the layers made inside a container (a named group, a repeat)."""
        children: list[ir.Submodule] = []
        self.containers.append(children)
        try:
            yield children
        finally:
            self.containers.pop()

    def auto_attr(self, prefix: str) -> str:
        if prefix[-1:].isdigit():
            prefix += "_"  # b2 -> b2_1, not b21
        n = self.next_index.get(prefix, 1)
        while f"{prefix}{n}" in self.attrs or f"{prefix}{n}" in self.reserved:
            n += 1
        self.next_index[prefix] = n + 1
        return f"{prefix}{n}"

    def record(self, loc: Loc, module: str, what: str, outputs: list[TensorType], params: int) -> None:
        """A row of `dslc check --shapes` (the module's own layers only; `all_records` has every layer)."""
        record = ir.LayerRecord(loc, module, what, ", ".join(str(t) for t in outputs), params)
        self.all_records.append(record)
        if self.at_top:
            self.records.append(record)

    def take_pending(self) -> list[ir.Submodule]:
        taken, self.pending = self.pending, []
        return taken
