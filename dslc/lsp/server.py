"""`dslc lsp`: the language server, over stdio, built on pygls and lsprotocol.

Diagnostics come from the real checker (`dslc.lsp.analysis`) on open and on every change, debounced:
a change waits `debounce` seconds for the next one, one check runs at a time (in a worker thread, so
requests never wait for it), and a change made during a check is checked right after it. Requests
(hover, completion, definition, symbols, inlay hints) answer at once from the current text and the
latest analysis that had facts (`dslc.lsp.features`); formatting runs `dslc fmt`'s formatter.

Settings (initializationOptions, or `dslc.*` in workspace/didChangeConfiguration):
`inlayHints` (bool, default true) and `debounceMs` (default 25).

A request never fails: an internal error is logged (window/logMessage, type Error, with the traceback)
and the request answers with nothing. Documents are synchronised whole (TextDocumentSyncKind.Full) and
positions are converted in the encoding the client chose (UTF-16 unless it offers UTF-8 or UTF-32),
with lines split at \\n, \\r\\n and \\r as the protocol says.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from lsprotocol import types as lsp
from pygls.lsp.server import LanguageServer
from pygls.uris import from_fs_path, to_fs_path

from dslc import __version__
from dslc.errors import Diagnostic
from dslc.lsp import features
from dslc.lsp.analysis import Analysis, analyze, diagnostic_text, import_of, reference_uri, same_file
from dslc.lsp.text import Item, Text, balanced, outline, scan

DEBOUNCE_SECONDS = 0.025
COMPLETION_KINDS = {
    "layer": lsp.CompletionItemKind.Class,
    "block": lsp.CompletionItemKind.Module,
    "function": lsp.CompletionItemKind.Function,
    "variable": lsp.CompletionItemKind.Variable,
    "constant": lsp.CompletionItemKind.Constant,
    "keyword": lsp.CompletionItemKind.Keyword,
    "field": lsp.CompletionItemKind.Field,
    "property": lsp.CompletionItemKind.Property,
    "module": lsp.CompletionItemKind.Module,
    "value": lsp.CompletionItemKind.Value,
    "type": lsp.CompletionItemKind.TypeParameter,
    "file": lsp.CompletionItemKind.File,
}
SYMBOL_KINDS = {
    "model": lsp.SymbolKind.Class,
    "block": lsp.SymbolKind.Function,
    "const": lsp.SymbolKind.Constant,
    "import": lsp.SymbolKind.Module,
    "train": lsp.SymbolKind.Namespace,
    "step": lsp.SymbolKind.Method,
    "section": lsp.SymbolKind.Struct,
    "input": lsp.SymbolKind.Field,
    "output": lsp.SymbolKind.Property,
    "param": lsp.SymbolKind.Field,
    "tensor": lsp.SymbolKind.Variable,
    "setting": lsp.SymbolKind.Property,
}


# ---------------------------------------------------------------- positions


class Positions:
    """Converts between the client's positions (0-based, in its code units) and dslc's (1-based code points)."""

    def __init__(self, source: str, encoding: str):
        self.lines = source.split("\n")
        self.units = {"utf-8": _utf8, "utf-32": len}.get(str(encoding), _utf16)

    def to_client(self, line: int, col: int) -> lsp.Position:
        if line > len(self.lines):
            return lsp.Position(len(self.lines) - 1, self.units(self.lines[-1]))
        text = self.lines[max(line, 1) - 1]
        return lsp.Position(max(line, 1) - 1, self.units(text[: max(col, 1) - 1]))

    def range(self, start: tuple[int, int], end: tuple[int, int]) -> lsp.Range:
        return lsp.Range(self.to_client(*start), self.to_client(*end))

    def from_client(self, pos: lsp.Position) -> tuple[int, int]:
        if pos.line >= len(self.lines):
            return len(self.lines), len(self.lines[-1]) + 1
        text = self.lines[pos.line]
        units, col = 0, 0
        while col < len(text) and units < pos.character:
            units += self.units(text[col])
            col += 1
        return pos.line + 1, col + 1


def _utf16(text: str) -> int:
    return len(text) + sum(1 for c in text if ord(c) > 0xFFFF)


def _utf8(text: str) -> int:
    return len(text.encode("utf-8", errors="surrogatepass"))


# ---------------------------------------------------------------- documents


@dataclass
class Document:
    uri: str
    path: str
    source: str  # \n line ends
    version: int | None
    crlf: bool = False
    latest: Analysis | None = None  # the last check
    facts: Analysis | None = None  # the last check that had facts (the file parsed)
    timer: asyncio.TimerHandle | None = None
    running: bool = False
    dirty: bool = False
    changed_at: float = field(default_factory=time.perf_counter)

    scanned: Text | None = None

    @property
    def text(self) -> Text:
        if self.scanned is None or self.scanned.source is not self.source:
            self.scanned = Text(self.source, self.scanned)
        return self.scanned


def uri_to_path(uri: str) -> str:
    path = to_fs_path(uri)
    if path:
        return path
    parsed = urlparse(uri)  # untitled:Untitled-1: checked as a file of that name in the working folder
    name = Path(unquote(parsed.path or parsed.netloc or "untitled")).name or "untitled"
    return str(Path.cwd() / (name if name.endswith(".model") else name + ".model"))


class DslcLanguageServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("dslc", __version__, text_document_sync_kind=lsp.TextDocumentSyncKind.Full)
        self.documents: dict[str, Document] = {}
        self.checker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dslc-check")
        self.inlay_hints = True
        self.debounce = DEBOUNCE_SECONDS
        self.snippets = False

    # ------------------------------------------------------------ settings

    def configure(self, options: Any) -> None:
        if not isinstance(options, dict):
            return
        options = options.get("dslc", options) if isinstance(options.get("dslc"), dict) else options
        hints = options.get("inlayHints")
        if isinstance(hints, dict):
            hints = hints.get("enabled")
        if isinstance(hints, bool):
            self.inlay_hints = hints
        debounce = options.get("debounceMs")
        if isinstance(debounce, (int, float)) and not isinstance(debounce, bool) and 0 <= debounce <= 10_000:
            self.debounce = debounce / 1000

    @property
    def encoding(self) -> str:
        return str(self.workspace.position_encoding or "utf-16")

    def positions(self, doc: Document) -> Positions:
        return Positions(doc.source, self.encoding)

    def log_error(self, what: str) -> None:
        message = f"dslc lsp: internal error in {what}:\n{traceback.format_exc()}"
        print(message, file=sys.stderr)
        with contextlib.suppress(Exception):  # the client is gone
            self.window_log_message(lsp.LogMessageParams(lsp.MessageType.Error, message))

    # ------------------------------------------------------------ checking

    def open(self, uri: str, source: str, version: int | None) -> Document:
        doc = self.documents.get(uri)
        crlf = "\r\n" in source
        source = source.replace("\r\n", "\n").replace("\r", "\n")
        if doc is None:
            doc = self.documents[uri] = Document(uri, uri_to_path(uri), source, version, crlf)
        else:
            doc.source, doc.version, doc.crlf = source, version, crlf
        doc.changed_at = time.perf_counter()
        return doc

    def schedule(self, doc: Document, delay: float) -> None:
        if doc.timer is not None:
            doc.timer.cancel()
        loop = asyncio.get_running_loop()
        doc.timer = loop.call_later(delay, lambda: asyncio.ensure_future(self.check(doc)))

    async def check(self, doc: Document) -> None:
        doc.timer = None
        if doc.running:
            doc.dirty = True
            return
        doc.running = True
        try:
            while True:
                doc.dirty = False
                source, version = doc.source, doc.version
                buffers = {d.path: d.source for d in self.documents.values() if d is not doc}
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(self.checker, analyze, doc.path, source, buffers, version)
                if self.documents.get(doc.uri) is not doc:
                    return  # closed meanwhile
                doc.latest = result
                if result.facts:
                    result.inherit(doc.facts)
                    doc.facts = result
                if source == doc.source:
                    self.publish(doc, result)
                if not doc.dirty:
                    return
        except Exception:
            self.log_error("check")
        finally:
            doc.running = False

    def publish(self, doc: Document, result: Analysis) -> None:
        pos = self.positions(doc)
        text = doc.text
        items = []
        for diag in result.diagnostics:
            try:
                items.append(self.diagnostic(diag, doc, result, text, pos))
            except Exception:
                self.log_error("diagnostic")
        self.text_document_publish_diagnostics(
            lsp.PublishDiagnosticsParams(uri=doc.uri, diagnostics=items, version=doc.version)
        )

    def diagnostic(
        self, diag: Diagnostic, doc: Document, result: Analysis, text: Text, pos: Positions
    ) -> lsp.Diagnostic:
        message = diagnostic_text(diag)
        loc = diag.loc
        if loc is not None and not same_file(loc.file, doc.path):  # in an imported file: shown at its import
            message = f"in {loc.file}:{loc.line}:{loc.col}: {message}"
            item = import_of(result.scope, loc.file)
            loc = item.loc if item is not None else None
        if loc is None:
            start, end = (1, 1), _line_end(text, 1)
        else:
            start = (loc.line, loc.col)
            if loc.end_line is not None and loc.end_col is not None and (loc.end_line, loc.end_col) > start:
                end = (loc.end_line, loc.end_col)
            else:  # a point: the token there
                tok = text.token_at(text.offset(loc.line, loc.col))
                end = tok.end_pos if tok is not None and tok.pos == start else (loc.line, loc.col + 1)
        href = reference_uri(diag.section) if diag.section else None
        return lsp.Diagnostic(
            range=pos.range(start, end),
            message=message,
            severity=lsp.DiagnosticSeverity.Warning if diag.severity == "warning" else lsp.DiagnosticSeverity.Error,
            source="dslc",
            code=diag.section,
            code_description=lsp.CodeDescription(href=href) if href else None,
        )


def _line_end(text: Text, line: int) -> tuple[int, int]:
    lines = text.lines
    return line, len(lines[line - 1]) + 1 if line <= len(lines) else 1


server = DslcLanguageServer()


def _safe(what: str, default: Any = None):
    """A handler that logs an internal error and answers `default` instead of failing the request."""

    def wrap(func):
        if asyncio.iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(ls: DslcLanguageServer, params):
                try:
                    return await func(ls, params)
                except Exception:
                    ls.log_error(what)
                    return default

            return run_async

        @functools.wraps(func)
        def run(ls: DslcLanguageServer, params):
            try:
                return func(ls, params)
            except Exception:
                ls.log_error(what)
                return default

        return run

    return wrap


@server.feature(lsp.INITIALIZE)
@_safe("initialize")
def initialize(ls: DslcLanguageServer, params: lsp.InitializeParams) -> None:
    ls.configure(params.initialization_options)
    caps = params.capabilities.text_document
    item = caps.completion.completion_item if caps and caps.completion else None
    ls.snippets = bool(item and item.snippet_support)


@server.feature(lsp.WORKSPACE_DID_CHANGE_CONFIGURATION)
@_safe("didChangeConfiguration")
def did_change_configuration(ls: DslcLanguageServer, params: lsp.DidChangeConfigurationParams) -> None:
    before = ls.inlay_hints
    ls.configure(params.settings)
    workspace = ls.client_capabilities.workspace
    refresh = workspace is not None and workspace.inlay_hint is not None and workspace.inlay_hint.refresh_support
    if ls.inlay_hints != before and refresh:
        ls.workspace_inlay_hint_refresh(None)


@server.feature(lsp.TEXT_DOCUMENT_DID_OPEN)
@_safe("didOpen")
def did_open(ls: DslcLanguageServer, params: lsp.DidOpenTextDocumentParams) -> None:
    doc = ls.open(params.text_document.uri, params.text_document.text, params.text_document.version)
    ls.schedule(doc, 0)


@server.feature(lsp.TEXT_DOCUMENT_DID_CHANGE)
@_safe("didChange")
def did_change(ls: DslcLanguageServer, params: lsp.DidChangeTextDocumentParams) -> None:
    uri = params.text_document.uri
    doc = ls.documents.get(uri)
    source = doc.source if doc else ""
    for change in params.content_changes:
        if isinstance(change, lsp.TextDocumentContentChangeWholeDocument):
            source = change.text
        else:  # a client sending ranges although the server asked for whole documents
            pos = Positions(source, ls.encoding)
            text = scan(source)
            start = text.offset(*pos.from_client(change.range.start))
            end = text.offset(*pos.from_client(change.range.end))
            source = source[:start] + change.text + source[end:]
    doc = ls.open(uri, source, params.text_document.version)
    ls.schedule(doc, ls.debounce)


@server.feature(lsp.TEXT_DOCUMENT_DID_SAVE)
@_safe("didSave")
def did_save(ls: DslcLanguageServer, params: lsp.DidSaveTextDocumentParams) -> None:
    for doc in ls.documents.values():  # a saved import can change what every open spec sees
        ls.schedule(doc, ls.debounce)


@server.feature(lsp.TEXT_DOCUMENT_DID_CLOSE)
@_safe("didClose")
def did_close(ls: DslcLanguageServer, params: lsp.DidCloseTextDocumentParams) -> None:
    doc = ls.documents.pop(params.text_document.uri, None)
    if doc is not None and doc.timer is not None:
        doc.timer.cancel()
    ls.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(uri=params.text_document.uri, diagnostics=[]))


def _doc(ls: DslcLanguageServer, uri: str) -> Document | None:
    return ls.documents.get(uri)


@server.feature(lsp.TEXT_DOCUMENT_HOVER)
@_safe("hover")
def hover(ls: DslcLanguageServer, params: lsp.HoverParams) -> lsp.Hover | None:
    doc = _doc(ls, params.text_document.uri)
    if doc is None:
        return None
    pos = ls.positions(doc)
    text = doc.text
    found = features.hover(doc.facts, text, text.offset(*pos.from_client(params.position)))
    if found is None:
        return None
    return lsp.Hover(
        contents=lsp.MarkupContent(kind=lsp.MarkupKind.Markdown, value=found.markdown),
        range=pos.range(found.start, found.end),
    )


@server.feature(
    lsp.TEXT_DOCUMENT_COMPLETION,
    lsp.CompletionOptions(trigger_characters=[">", "(", ",", ":", " ", "=", '"', "."]),
)
@_safe("completion", default=None)
def completion(ls: DslcLanguageServer, params: lsp.CompletionParams) -> lsp.CompletionList | None:
    doc = _doc(ls, params.text_document.uri)
    if doc is None:
        return None
    pos = ls.positions(doc)
    text = doc.text
    offset = text.offset(*pos.from_client(params.position))
    found = features.complete(doc.facts or doc.latest, text, offset)
    edit_range = pos.range(text.position(found.start), text.position(found.end))
    items = []
    for n, c in enumerate(found.items):
        snippet = ls.snippets and c.snippet is not None
        insert = c.snippet if snippet else (c.insert or c.label)
        items.append(
            lsp.CompletionItem(
                label=c.label,
                kind=COMPLETION_KINDS.get(c.kind, lsp.CompletionItemKind.Text),
                detail=c.detail or None,
                documentation=lsp.MarkupContent(lsp.MarkupKind.Markdown, c.documentation) if c.documentation else None,
                sort_text=f"{c.sort}{n:04d}",
                filter_text=c.label,
                insert_text_format=lsp.InsertTextFormat.Snippet if snippet else lsp.InsertTextFormat.PlainText,
                text_edit=lsp.TextEdit(range=edit_range, new_text=insert),
            )
        )
    return lsp.CompletionList(is_incomplete=False, items=items)


@server.feature(lsp.TEXT_DOCUMENT_DEFINITION)
@_safe("definition", default=None)
def definition(ls: DslcLanguageServer, params: lsp.DefinitionParams) -> list[lsp.Location] | None:
    doc = _doc(ls, params.text_document.uri)
    if doc is None:
        return None
    pos = ls.positions(doc)
    text = doc.text
    found = features.definition(doc.facts, text, text.offset(*pos.from_client(params.position)))
    out = []
    for loc in found:
        path = loc.path or doc.path
        if same_file(path, doc.path):
            out.append(lsp.Location(uri=doc.uri, range=pos.range(loc.start, loc.end)))
            continue
        other = next((d for d in ls.documents.values() if same_file(d.path, path)), None)
        if other is not None:
            source = other.source
        else:
            try:
                source = Path(path).read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
            except OSError:
                source = ""
        other_pos = Positions(source, ls.encoding)
        uri = other.uri if other is not None else from_fs_path(str(Path(path).resolve())) or path
        out.append(lsp.Location(uri=uri, range=other_pos.range(loc.start, loc.end)))
    return out or None


@server.feature(lsp.TEXT_DOCUMENT_DOCUMENT_SYMBOL)
@_safe("documentSymbol", default=None)
def document_symbol(ls: DslcLanguageServer, params: lsp.DocumentSymbolParams) -> list[lsp.DocumentSymbol] | None:
    doc = _doc(ls, params.text_document.uri)
    if doc is None:
        return None
    pos = ls.positions(doc)
    return [_symbol(item, pos) for item in outline(doc.text)]


def _symbol(item: Item, pos: Positions) -> lsp.DocumentSymbol:
    selection = pos.range(item.name_start, item.name_end)
    whole = pos.range(item.start, max(item.end, item.name_end))
    return lsp.DocumentSymbol(
        name=item.name or item.kind,
        kind=SYMBOL_KINDS.get(item.kind, lsp.SymbolKind.Variable),
        range=whole,
        selection_range=selection,
        detail=item.detail or item.kind,
        children=[_symbol(c, pos) for c in item.children] or None,
    )


@server.feature(lsp.TEXT_DOCUMENT_FORMATTING)
@_safe("formatting", default=None)
async def formatting(ls: DslcLanguageServer, params: lsp.DocumentFormattingParams) -> list[lsp.TextEdit] | None:
    doc = _doc(ls, params.text_document.uri)
    if doc is None:
        return None
    source = doc.source
    latest = doc.latest
    if (latest is not None and latest.source == source and not latest.parsed) or not balanced(doc.text):
        return []  # it does not parse: the diagnostics say where
    loop = asyncio.get_running_loop()
    result = await loop.run_in_executor(ls.checker, _format, source, doc.path)
    if result is None or result == source or doc.source != source:
        return [] if result is not None else None
    pos = Positions(source, ls.encoding)
    lines = source.split("\n")
    whole = lsp.Range(lsp.Position(0, 0), pos.to_client(len(lines), len(lines[-1]) + 1))
    return [lsp.TextEdit(range=whole, new_text=result.replace("\n", "\r\n") if doc.crlf else result)]


def _format(source: str, path: str) -> str | None:
    from dslc.errors import DslcError
    from dslc.fmt import format_source

    try:
        return format_source(source, path)
    except DslcError:
        return None  # a syntax error: the diagnostics say where


@server.feature(lsp.TEXT_DOCUMENT_INLAY_HINT, lsp.InlayHintOptions(resolve_provider=False))
@_safe("inlayHint", default=None)
def inlay_hint(ls: DslcLanguageServer, params: lsp.InlayHintParams) -> list[lsp.InlayHint] | None:
    doc = _doc(ls, params.text_document.uri)
    if doc is None or not ls.inlay_hints:
        return None
    pos = ls.positions(doc)
    first = params.range.start.line + 1
    last = params.range.end.line + 1
    hints = features.inlay_hints(doc.facts, doc.text, first, last)
    return [
        lsp.InlayHint(
            position=pos.to_client(*h.pos),
            label=h.label,
            kind=lsp.InlayHintKind.Type,
            padding_left=True,
            tooltip=h.tooltip or None,
        )
        for h in hints
    ]


def main() -> None:
    """Serve over stdio. Anything printed while serving goes to stderr: stdout carries the protocol."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr
    server.start_io(stdin, stdout)
