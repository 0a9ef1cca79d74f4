"""One check of a buffer, kept for an editor: the diagnostics, and what the checker learnt on the way.

`analyze` runs the same `check_file` as `dslc check` (the buffer's text in place of the file's, open
buffers of imported files too), so the diagnostics are the CLI's, message for message. With a
`dslc.checker.Trace` it also keeps every checked body: each model, each use of a block (its arguments,
its layers with their output types and parameter counts, the type or value bound to each name) and
each train body (the data set's fields too). A file with errors still has the facts of every body
that was checked before and around them; a file that does not parse has none, and the editor keeps
answering from the last analysis that had some (`Analysis.facts`).
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from dslc import ast, ir
from dslc.checker import BodyChecker, Trace, check_file
from dslc.errors import DOCS_URL, Diagnostic, DslcError, Loc
from dslc.loader import FileScope
from dslc.params import brief
from dslc.shapes import TensorType


@dataclass
class Body:
    """The facts of one checked body."""

    kind: str  # model | block | train
    name: str  # the model's or block's name; "train" for a train body
    label: str  # the use: `BasicBlock(planes=128, stride=2)`, `model cnn`, `train`
    path: str  # the file that defines it
    loc: Loc | None  # the definition (a block's or model's), None for a train body
    records: list[ir.LayerRecord]  # every layer, in groups and repeats too
    bindings: list[tuple[Loc, str, Any]]  # (statement, name, value) in order
    dims: dict[str, Any]  # dimension names bound by its input types
    fields: dict[str, TensorType]  # a train body's data set fields
    env: dict[str, Any]  # every name's final value
    stale: bool = False  # carried over from an older analysis (its positions are of an older text)


@dataclass
class Analysis:
    path: str
    source: str
    version: int | None = None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # file -> text, for diagnostics in other files
    parsed: bool = False  # whether the file parsed (else `bodies` is empty)
    bodies: list[Body] = field(default_factory=list)
    scope: FileScope | None = None  # the file's top-level names (constants, blocks, imports)
    scopes: list[FileScope] = field(default_factory=list)  # every file loaded, the file's own first
    program: ir.ProgramIR | None = None  # the checked models, when the check got that far
    seconds: float = 0.0
    inherited: ir.ProgramIR | None = None  # an older analysis's models, for names only (see `inherit`)

    @cached_property
    def program_lines(self) -> list[str]:
        return self.source.split("\n")

    @property
    def facts(self) -> bool:
        return self.scope is not None

    @property
    def models(self) -> ir.ProgramIR | None:
        """The checked models of this analysis, or of the older one it inherited from (for names, not positions)."""
        return self.program or self.inherited

    def inherit(self, older: Analysis | None) -> None:
        """Keep what an older analysis knew and this one does not: an error in a model stops the check before
        the train section, and the train section's names (data fields, model outputs) are still worth
        completing. Carried bodies are `stale`: known by name, never shown at a position."""
        if older is None or not self.facts:
            return
        have = {(b.kind, b.name) for b in self.bodies}
        self.bodies += [replace(b, stale=True) for b in older.bodies if (b.kind, b.name) not in have]
        if self.program is None:
            self.inherited = older.program or older.inherited

    def bodies_of(self, name: str, path: str | None = None) -> list[Body]:
        return [b for b in self.bodies if b.name == name and (path is None or same_file(b.path, path))]


def resolve(path: str | Path) -> str:
    try:
        return str(Path(path).resolve())
    except (OSError, RuntimeError, ValueError):
        return str(path)


def same_file(a: str, b: str) -> bool:
    return a == b or resolve(a) == resolve(b)


def analyze(path: str, source: str, open_buffers: dict[str, str] | None = None, version: int | None = None) -> Analysis:
    """Check `source` as the file `path` (it need not exist), with other open buffers by path."""
    started = time.perf_counter()
    source = source.replace("\r\n", "\n").replace("\r", "\n")
    trace = Trace(
        sources={resolve(p): t.replace("\r\n", "\n").replace("\r", "\n") for p, t in (open_buffers or {}).items()}
    )
    trace.sources[resolve(path)] = source
    result = Analysis(path, source, version)
    try:
        check_file(path, trace=trace)
    except DslcError as exc:
        result.diagnostics = list(exc.diagnostics)
        result.sources = dict(exc.sources)
    except RecursionError:
        result.diagnostics = [Diagnostic(Loc(path, 1, 1), "the spec is nested too deeply to compile")]
    except Exception as exc:  # a bug in dslc: say so where it is seen, never stop the editor's server
        where = traceback.extract_tb(exc.__traceback__)[-1]
        message = f"internal error: {type(exc).__name__}: {exc} ({Path(where.filename).name}:{where.lineno})"
        result.diagnostics = [Diagnostic(Loc(path, 1, 1), message, "this is a bug in dslc; please report it")]
    _keep_facts(result, trace, path)
    result.seconds = time.perf_counter() - started
    return result


def _keep_facts(result: Analysis, trace: Trace, path: str) -> None:
    loader = trace.loader
    if loader is None:
        return
    own = resolve(path)
    scopes = list(loader.scopes.values())
    root = next((s for s in scopes if resolve(s.path) == own), None)
    if root is None:
        return  # the file did not parse: no scope was made
    result.parsed = True
    result.scope = root
    result.scopes = [root, *(s for s in scopes if s is not root)]
    result.program = trace.program
    for body in trace.bodies:
        result.bodies.append(_body_facts(body))


def _body_facts(body: BodyChecker) -> Body:
    block = body.block
    fields = dict(getattr(body, "fields", {}) or {})
    if block is None:
        return Body("train", "train", "train", body.scope.path, None, list(body.layers.all_records),
                    list(body.bindings), dict(body.dims), fields, dict(body.env))  # fmt: skip
    kind = "model" if block.is_model else "block"
    label = f"model {block.name}" if block.is_model else block.name
    if block.params:
        label += "(" + ", ".join(f"{k}={brief(v)}" for k, v in body.hyper.items()) + ")"
    return Body(kind, block.name, label, body.scope.path, block.loc, list(body.layers.all_records),
                list(body.bindings), dict(body.dims), fields, dict(body.env))  # fmt: skip


# ---------------------------------------------------------------- diagnostics as an editor shows them


def diagnostic_text(diag: Diagnostic) -> str:
    """The CLI's diagnostic without its location and caret lines: message, notes, hint and `see:` link."""
    lines = [diag.message]
    lines += [f"note: {note}" for note in diag.notes]
    if diag.hint:
        lines.append(f"hint: {diag.hint}")
    if diag.section:
        lines.append(f"see: {DOCS_URL}#{diag.section}")
    return "\n".join(lines)


def reference_uri(section: str) -> str | None:
    """A file: URI of the reference's section, when the docs are next to the package (a checkout)."""
    reference = Path(__file__).resolve().parents[2] / DOCS_URL
    return f"{reference.as_uri()}#{section}" if reference.is_file() else None


def import_of(scope: FileScope | None, other: str) -> ast.Import | None:
    """The import statement of `scope` that loads the file `other` (or the first, for a file imported further down)."""
    if scope is None:
        return None
    imports = [i for i in scope.program.items if isinstance(i, ast.Import)]
    base = Path(scope.path).parent
    for item in imports:
        if same_file(str(base / item.path), other):
            return item
    return imports[0] if imports else None
