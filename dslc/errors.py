"""Diagnostics: located errors rendered as `FILE:LINE:COL: error: ...` with a caret line."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

DOCS_URL = "docs/reference.md"


@dataclass(frozen=True)
class Loc:
    """A span in a source file (1-based line and column)."""

    file: str
    line: int
    col: int
    end_line: int | None = None
    end_col: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass
class Diagnostic:
    loc: Loc | None
    message: str
    hint: str | None = None
    severity: str = "error"
    section: str | None = None  # anchor in the language reference that explains it
    notes: list[str] = field(default_factory=list)  # context, e.g. which use of a block failed

    def render(self, sources: dict[str, str] | None = None) -> str:
        where = f"{self.loc}: " if self.loc else ""
        lines = [f"{where}{self.severity}: {self.message}"]
        if self.loc and sources and self.loc.file in sources:
            lines += caret_lines(sources[self.loc.file], self.loc)
        lines += [f"  note: {note}" for note in self.notes]
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        if self.section:
            lines.append(f"  see: {DOCS_URL}#{self.section}")
        return "\n".join(lines)


def caret_lines(source: str, loc: Loc) -> list[str]:
    src_lines = source.split("\n")  # the lexer counts only \n as a line break
    if not 1 <= loc.line <= len(src_lines):
        return []
    text = src_lines[loc.line - 1].expandtabs(4).rstrip()
    width = 1
    if loc.end_line == loc.line and loc.end_col and loc.end_col > loc.col:
        width = loc.end_col - loc.col
    width = max(1, min(width, len(text) - loc.col + 1))
    gutter = f"{loc.line:>5} | "
    return [gutter + text, " " * (len(gutter) + loc.col - 1) + "^" * width]


class DslcError(Exception):
    """One or more diagnostics; the CLI prints them and exits 1."""

    def __init__(self, diagnostics: list[Diagnostic], sources: dict[str, str] | None = None):
        self.diagnostics = diagnostics
        self.sources = sources or {}
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(d.render(self.sources) for d in self.diagnostics)


def error(loc: Loc | None, message: str, hint: str | None = None, section: str | None = None) -> DslcError:
    return DslcError([Diagnostic(loc, message, hint, section=section)])


def did_you_mean(name: str, candidates) -> str | None:
    matches = difflib.get_close_matches(name, sorted(set(candidates)), n=3, cutoff=0.6)
    if not matches:
        return None
    return "did you mean " + " or ".join(f"'{m}'" for m in matches) + "?"


@dataclass
class Reporter:
    """Collects diagnostics so one run can report several errors."""

    sources: dict[str, str] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)

    def add(self, diag: Diagnostic) -> None:
        if not any(d.loc == diag.loc and d.message == diag.message for d in self.diagnostics):
            self.diagnostics.append(diag)

    def error(self, loc: Loc | None, message: str, hint: str | None = None, section: str | None = None) -> None:
        self.add(Diagnostic(loc, message, hint, section=section))

    def extend(self, err: DslcError) -> None:
        for d in err.diagnostics:
            self.add(d)
        self.sources.update(err.sources)

    def raise_if_errors(self) -> None:
        if self.diagnostics:
            raise DslcError(list(self.diagnostics), dict(self.sources))


def read_source(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(None, f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise error(None, f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise error(None, f"{path}: cannot read ({exc.strerror})") from None
