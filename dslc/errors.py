"""Diagnostics: located errors rendered as `FILE:LINE:COL: error: ...` with a caret line."""

from __future__ import annotations

import difflib
import functools
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

DOCS_URL = "docs/reference.md"
MAX_SHOWN = 50  # diagnostics printed per run; the count says how many more there were


@dataclass(frozen=True)
class Loc:
    """A span in a source file (1-based line and column)."""

    file: str
    line: int
    col: int
    end_line: int | None = None
    end_col: int | None = None

    def __str__(self) -> str:
        return self.file if self.line == 0 else f"{self.file}:{self.line}:{self.col}"


def argument_loc(argument: str) -> Loc:
    """The place of a value given on the command line (`--set epochs=0`): its errors name the argument."""
    return Loc(argument, 0, 0)


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


CARET_WIDTH = 100  # a longer source line is shown as a window around the column


@functools.lru_cache(maxsize=8)
def _split_lines(source: str) -> list[str]:
    return source.split("\n")  # the lexer counts only \n as a line break


def caret_lines(source: str, loc: Loc) -> list[str]:
    src_lines = _split_lines(source)
    if not 1 <= loc.line <= len(src_lines):
        return []
    text = src_lines[loc.line - 1].expandtabs(4).rstrip()
    col = loc.col
    width = 1
    if loc.end_line == loc.line and loc.end_col and loc.end_col > loc.col:
        width = loc.end_col - loc.col
    if len(text) > CARET_WIDTH:
        start = max(0, min(col - 1 - CARET_WIDTH // 2, len(text) - CARET_WIDTH))
        prefix = "..." if start else ""
        suffix = "..." if start + CARET_WIDTH < len(text) else ""
        text = prefix + text[start : start + CARET_WIDTH] + suffix
        col = col - start + len(prefix)
    width = max(1, min(width, len(text) - col + 1))
    gutter = f"{loc.line:>5} | "
    return [gutter + text, " " * (len(gutter) + col - 1) + "^" * width]


class DslcError(Exception):
    """One or more diagnostics; the CLI prints them and exits 1."""

    def __init__(self, diagnostics: list[Diagnostic], sources: dict[str, str] | None = None):
        self.diagnostics = diagnostics
        self.sources = sources or {}
        super().__init__(self.render())

    def render(self) -> str:
        shown = [d.render(self.sources) for d in self.diagnostics[:MAX_SHOWN]]
        if len(self.diagnostics) > MAX_SHOWN:
            shown.append(f"... and {len(self.diagnostics) - MAX_SHOWN:,} more errors")
        return "\n".join(shown)


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
    seen: set[tuple[Loc | None, str]] = field(default_factory=set)

    def add(self, diag: Diagnostic) -> None:
        if (diag.loc, diag.message) not in self.seen:
            self.seen.add((diag.loc, diag.message))
            self.diagnostics.append(diag)

    def error(self, loc: Loc | None, message: str, hint: str | None = None, section: str | None = None) -> None:
        self.add(Diagnostic(loc, message, hint, section=section))

    def extend(self, err: DslcError) -> None:
        for d in err.diagnostics:
            self.add(d)
        self.sources.update(err.sources)

    def raise_if_errors(self) -> None:
        if self.diagnostics:
            raise DslcError(self.in_order(), dict(self.sources))

    def in_order(self) -> list[Diagnostic]:
        """The diagnostics by file (in the order files were first reported), then line and column: the
        passes find errors in different orders, a reader wants them top to bottom."""
        files: dict[str, int] = {}
        for d in self.diagnostics:
            if d.loc is not None:
                files.setdefault(d.loc.file, len(files))

        def key(d: Diagnostic) -> tuple[int, int, int]:
            return (-1, 0, 0) if d.loc is None else (files[d.loc.file], d.loc.line, d.loc.col)

        return sorted(self.diagnostics, key=key)


MAX_SOURCE_BYTES = 4 * 1024 * 1024  # the parser refuses specs over 64 Ki characters; this bounds the read


def read_source(path: str | Path) -> str:
    """A spec's text. Only regular files are read (a FIFO or device would block or never end)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise error(None, f"{path}: no such file") from None
    except ValueError:  # a NUL byte in the name
        raise error(None, f"{str(path)!r}: not a valid file name") from None
    except OSError as exc:
        raise error(None, f"{path}: cannot read ({exc.strerror})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise error(None, f"{path}: {kind}, not a spec file" if kind == "a directory" else f"{path}: {kind}")
    with os.fdopen(fd, "rb") as file:
        if info.st_size > MAX_SOURCE_BYTES:
            raise error(
                Loc(str(path), 1, 1), f"{info.st_size:,} bytes is too large for a spec (at most {MAX_SOURCE_BYTES:,})"
            )
        try:
            data = file.read(MAX_SOURCE_BYTES + 1)
        except OSError as exc:
            raise error(None, f"{path}: cannot read ({exc.strerror})") from None
    if len(data) > MAX_SOURCE_BYTES:
        raise error(Loc(str(path), 1, 1), f"too large for a spec (at most {MAX_SOURCE_BYTES:,} bytes)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_utf8(str(path), data, exc) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as text-mode open() reads


def _not_utf8(path: str, data: bytes, exc: UnicodeDecodeError) -> DslcError:
    before = data[: exc.start]
    line = before.count(b"\n") + 1
    line_start = before.rfind(b"\n") + 1
    col = len(before[line_start:].decode("utf-8", errors="replace")) + 1
    shown = data.decode("utf-8", errors="replace")
    err = error(
        Loc(path, line, col), f"not UTF-8 text: byte 0x{data[exc.start]:02x} ({exc.reason})", "save the file as UTF-8"
    )
    err.sources[path] = shown
    return err
