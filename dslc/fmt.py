"""`dslc fmt`: canonical layout for `.model` files, keeping every comment.

The formatter prints the syntax tree back (canonical spacing, minimal parentheses, double-quoted
strings, four-space indentation) and places the comments by position, found with the real lexer:

* a comment on its own line stays on its own line, before the next statement (or before `}`);
* a comment after code stays at the end of the line that holds that code, unless the line would
  then be longer than MAX_WIDTH: it goes on its own line just above. Trailing comments of
  consecutive lines start in one column where that keeps them within the width.

Lines are at most MAX_WIDTH columns, unless a single token (a long string or name) is longer:
layout is by `dslc.layout`. Pipelines keep the line breaks the author chose between stages (in
groups, loops and ifs too) and fill each line up to the width, breaking before `->`; a stage too
long for a line of its own breaks inside: a group's, loop's or if's stages go on their own lines, a
call's arguments (a list's items, a block's parameters) on one indented line, or one per line when
they do not fit there. Operator chains break before their operators as pipelines do. Blank lines
are kept, at most one in a row. Numbers and docstrings are written exactly as in the source. The
result re-parses to the same syntax tree (checked on every call), and formatting it again changes
nothing.
"""

from __future__ import annotations

import bisect
import difflib
import json
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from dslc import ast
from dslc.errors import DslcError, error, read_source
from dslc.fileio import write_atomic
from dslc.layout import Break, Fill, Group, Indent, Text, flat, render
from dslc.parser import _lark, parse

MAX_WIDTH = 100
INDENT = "    "

Pos = tuple[int, int]  # (line, column), 1-based

# Precedence levels, loosest first, as in grammar/dslc.lark.
PIPE, OR, AND, NOT, CMP, ARITH, TERM, UNARY, POWER, POSTFIX, ATOM = range(11)
BINARY = {  # op -> (level, minimum level of the left operand, of the right operand)
    "or": (OR, OR, AND),
    "and": (AND, AND, NOT),
    **{op: (CMP, ARITH, ARITH) for op in ("==", "!=", "<", "<=", ">", ">=")},
    "+": (ARITH, ARITH, TERM),
    "-": (ARITH, ARITH, TERM),
    **{op: (TERM, TERM, UNARY) for op in ("*", "/", "//", "%", "@")},
    "**": (POWER, POSTFIX, UNARY),
}
CHAINS = {"or", "and", "+", "-", "*", "/", "//", "%", "@"}  # operators a long statement may break before
SOFT, LINE, HARD = Break(""), Break(" "), Break(" ", hard=True)


@dataclass
class _Comment:
    pos: Pos
    text: str
    own_line: bool


@dataclass
class _Line:
    depth: int
    text: str
    src: int  # source line of the line's first token, for placing comments
    trailing: list[str] = field(default_factory=list)
    opens: bool = False  # ends with `{`: no blank line after it

    column: int = 0  # where the trailing comment starts, when aligned with its neighbours

    def render(self) -> str:
        if not self.text:
            return ""
        code = INDENT * self.depth + self.text
        if not self.trailing:
            return code
        return code.ljust(self.column - 2) + "  " + "  ".join(self.trailing)


def _align_trailing(lines: list[_Line], width: int = MAX_WIDTH) -> None:
    """Trailing comments on consecutive lines start in one column (as gofmt does), where that column keeps
    every line of the run within MAX_WIDTH: a line that would overflow starts a new run."""
    run: list[_Line] = []
    column = longest = 0

    def close() -> None:
        for x in run:
            x.column = column

    for line in [*lines, None]:
        if line is not None and line.trailing and "\n" not in line.text:
            code = len(INDENT * line.depth + line.text) + 2
            comment = len("  ".join(line.trailing))
            if run and max(column, code) + max(longest, comment) > width:
                close()
                run, column, longest = [], 0, 0
            run.append(line)
            column, longest = max(column, code), max(longest, comment)
            continue
        close()
        run, column, longest = [], 0, 0


def _lift_long_trailing(lines: list[_Line], width: int = MAX_WIDTH) -> list[_Line]:
    """A trailing comment that would take its line past MAX_WIDTH goes on its own line just above (one
    level deeper before a `}`, where the comment belongs to the body it closes)."""
    out: list[_Line] = []
    for line in lines:
        if line.trailing and "\n" not in line.text:
            used = len(INDENT * line.depth + line.text) + 2 + len("  ".join(line.trailing))
            if used > width:
                depth = line.depth + 1 if line.text.startswith("}") else line.depth
                out += [_Line(depth, comment, line.src) for comment in line.trailing]
                line.trailing = []
        out.append(line)
    return out


def format_source(source: str, path: str = "<string>", width: int = MAX_WIDTH) -> str:
    """The canonical form of `source` (lines of at most `width` columns). Raises DslcError on a syntax error."""
    program = parse(source, path)
    result = _Formatter(program, width).run()
    _check_same_tree(program, result, path)
    return result


def format_file(path: str | Path, check: bool = False) -> bool:
    """Format one file in place (atomically); with `check`, only report. True when it changes."""
    source = read_source(path)
    result = format_source(source, str(path))
    if result == source:
        return False
    if not check:
        write_atomic(path, result, follow_symlinks=True)
    return True


def format_diff(path: str | Path) -> str:
    """A unified diff from the file to its formatted text ("" when it is formatted already)."""
    source = read_source(path)
    result = format_source(source, str(path))
    if result == source:
        return ""
    lines = difflib.unified_diff(
        source.splitlines(keepends=True), result.splitlines(keepends=True), f"{path}", f"{path} (formatted)"
    )
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)


def strip_locations(node: Any) -> Any:
    """A syntax tree as plain nested tuples, without locations and comments: its meaning."""
    if is_dataclass(node):
        skip = {"loc", "comments", "path", "source"}
        return (
            type(node).__name__,
            *(strip_locations(getattr(node, f.name)) for f in fields(node) if f.name not in skip),
        )
    if isinstance(node, (list, tuple)):
        return tuple(strip_locations(n) for n in node)
    return node


def _check_same_tree(before: ast.Program, text: str, path: str) -> None:
    try:
        after = parse(text, path)
    except DslcError as exc:  # a formatter bug: never write such a file
        raise error(None, f"{path}: internal error: the formatted text does not parse: {exc}") from None
    if strip_locations(before) != strip_locations(after):
        raise error(None, f"{path}: internal error: formatting would change the meaning; file left as is")


def _normalize_comment(raw: str) -> str:
    body = raw.rstrip()[1:]
    if body and body[0] not in " #!":
        body = " " + body
    return "#" + body


class _Formatter:
    def __init__(self, program: ast.Program, width: int = MAX_WIDTH):
        self.program = program
        self.width = width
        self.lines = program.source.split("\n")
        self.tokens: list[tuple[Pos, str]] = []  # (position, type) of every code token
        self.values: dict[Pos, str] = {}
        self.comments: list[_Comment] = []
        for tok in _lark().lex(program.source, dont_ignore=True):
            if tok.type == "COMMENT":
                own = not self.lines[tok.line - 1][: tok.column - 1].strip()
                self.comments.append(_Comment((tok.line, tok.column), _normalize_comment(tok.value), own))
            elif tok.type != "WS":
                self.tokens.append(((tok.line, tok.column), tok.type))
                self.values[(tok.line, tok.column)] = tok.value
        self.positions = [p for p, _ in self.tokens]
        self.used: set[Pos] = set()
        self.out: list[_Line] = []
        self.blank = False  # a blank line is due before the next line

    # ------------------------------------------------------------ output

    def run(self) -> str:
        prog = self.program
        prev: Pos = (0, 0)
        children: list[tuple[Pos, Pos, Any]] = []
        if prog.doc is not None:
            start = self.tokens[0][0]
            children.append((start, self._end_of(start), None))
        children += [(_start(i.loc), _end(i.loc), i) for i in prog.items]
        last_kind = None
        for start, end, item in children:
            kind = type(item).__name__ if item is not None else "doc"
            if last_kind is not None and (kind != last_kind or kind in ("BlockDef", "TrainDef", "doc")):
                self.blank = True
            self._gap(prev, start, 0)
            if item is None:
                self._docstring(start, end, 0)
            else:
                self._item(item, 0)
            prev, last_kind = end, kind
        self._gap(prev, (len(self.lines) + 1, 0), 0)
        missing = [c for c in self.comments if c.pos not in self.used]
        if missing:
            raise error(None, f"internal error: fmt would drop the comment on line {missing[0].pos[0]}")
        self.out = _lift_long_trailing(self.out, self.width)
        _align_trailing(self.out, self.width)
        return "".join(line.render() + "\n" for line in self.out)

    def _emit(self, depth: int, text: str, src: int) -> _Line:
        if self.blank and self.out and not self.out[-1].opens:
            self.out.append(_Line(0, "", src))
        self.blank = False
        line = _Line(depth, text, src)
        self.out.append(line)
        return line

    def _gap(self, prev: Pos, nxt: Pos, depth: int) -> None:
        """Comments and blank lines between two siblings (or a brace and a sibling)."""
        for c in self._comments_between(prev, nxt):
            if c.pos[0] == prev[0] and self.out:
                self.out[-1].trailing.append(c.text)
                continue
            if any(not self.lines[n - 1].strip() for n in range(max(prev[0] + 1, 1), c.pos[0])):
                self.blank = True
            self._emit(depth, c.text, c.pos[0])
            prev = (c.pos[0], 10**9)
        if any(not self.lines[n - 1].strip() for n in range(max(prev[0] + 1, 1), min(nxt[0], len(self.lines) + 1))):
            self.blank = True

    def _comments_between(self, a: Pos, b: Pos) -> list[_Comment]:
        found = [c for c in self.comments if a < c.pos < b and c.pos not in self.used]
        self.used.update(c.pos for c in found)
        return found

    def _leaf(self, depth: int, lines: list[tuple[int, str, int]], start: Pos, end: Pos) -> None:
        """Emit a statement's lines (extra indent, text, source line), placing its inner comments."""
        out = [_Line(depth + extra, text, src) for extra, text, src in lines]
        before: dict[int, list[_Line]] = {}
        for c in self._comments_between(start, end):
            later = [i for i, line in enumerate(out) if line.src > c.pos[0]]
            if c.own_line and later:
                before.setdefault(later[0], []).append(_Line(out[later[0]].depth, c.text, c.pos[0]))
            else:
                host = [line for line in out if line.src <= c.pos[0]] or out
                host[-1].trailing.append(c.text)
        for i, line in enumerate(out):
            for extra in before.get(i, []):
                self._emit(extra.depth, extra.text, extra.src)
            emitted = self._emit(line.depth, line.text, line.src)
            emitted.trailing = line.trailing

    def _container(self, depth: int, open_: Pos, children: list[tuple[Pos, Pos, Any]], emit) -> Pos:
        """A `{ ... }` body: returns the position of its closing brace."""
        prev = open_
        for start, end, child in children:
            self._gap(prev, start, depth)
            emit(child, start, end)
            prev = end
        close = self._next_token(prev, "RBRACE")
        self._gap(prev, close, depth)
        self.blank = False
        return close

    def _braced(self, depth: int, header, start: Pos, children, emit, close_text: str = "}") -> Pos:
        open_ = self._next_token(start, "LBRACE")
        close = self._next_token(max([open_] + [e for _, e, _ in children]), "RBRACE")
        # a comment on the brace's own line trails the header: the body is empty still, and stays `{}` when formatted again
        if not children and not self._has_comments((open_[0] + 1, -1), close):
            self._leaf(depth, self._lines([header, Text(" {}")], depth, start[0]), start, close)
            return close
        self._leaf(depth, self._lines([header, Text(" {")], depth, start[0]), start, open_)
        self.out[-1].opens = True
        self._container(depth + 1, open_, children, emit)
        self._emit(depth, close_text, close[0])
        return close

    def _has_comments(self, a: Pos, b: Pos) -> bool:
        return any(a < c.pos < b and c.pos not in self.used for c in self.comments)

    # ------------------------------------------------------------ tokens

    def _next_token(self, after: Pos, kind: str) -> Pos:
        i = bisect.bisect_right(self.positions, after)
        while self.tokens[i][1] != kind:
            i += 1
        return self.tokens[i][0]

    def _token_after(self, after: Pos) -> tuple[Pos, str] | None:
        i = bisect.bisect_right(self.positions, after)
        return self.tokens[i] if i < len(self.tokens) else None

    def _end_of(self, start: Pos) -> Pos:
        """Position of the last character of the token at `start` (a docstring)."""
        value = self.values[start]
        last_nl = value.rfind("\n")
        if last_nl < 0:
            return (start[0], start[1] + len(value) - 1)
        return (start[0] + value.count("\n"), len(value) - last_nl - 1)

    # ------------------------------------------------------------ layout

    def _lines(self, doc, depth: int, src: int) -> list[tuple[int, str, int]]:
        """`doc` laid out at the width, its first line at `depth`: (extra indent, text, source line)."""
        return [
            (level, text, line if line is not None else src) for level, text, line in render(doc, depth, self.width)
        ]

    def _bracket(self, open_: str, items: list, close: str, loc, trailing: str = ""):
        """`open_ items close`: on one line if it fits, else the items on one indented line, else one per line."""
        if not items:
            return Text(open_ + close, loc.line)
        inner: list = []
        for k, item in enumerate(items):
            if k:
                inner += [Text(","), LINE]
            inner.append(item)
        if trailing:
            inner.append(Text(trailing))
        return Group([Text(open_, loc.line), Indent([SOFT, Group(inner)]), SOFT, Text(close, loc.end_line or loc.line)])

    # ------------------------------------------------------------ items

    def _item(self, item: ast.Item, depth: int) -> None:
        start, end = _start(item.loc), _end(item.loc)
        line = start[0]
        if isinstance(item, ast.Import):
            if item.names is not None:
                names = [Text(n + ("," if k < len(item.names) - 1 else "")) for k, n in enumerate(item.names)]
                parts: list = [names[0]]
                for name in names[1:]:
                    parts += [LINE, name]
                doc = [Text(f"from {_str(item.path)} import ", line), Indent([Fill(parts)])]
            else:
                doc = Text(f"import {_str(item.path)}" + (f" as {item.alias}" if item.alias else ""), line)
            self._leaf(depth, self._lines(doc, depth, line), start, end)
        elif isinstance(item, ast.Const):
            self._leaf(depth, self._value_lines(f"const {item.name} = ", item.value, line, depth), start, end)
        elif isinstance(item, ast.BlockDef):
            if item.is_model:
                header = Text(f"model {item.name}", line)
            else:
                params = [self._param(p) for p in item.params]
                header = [Text(f"block {item.name}", line), self._bracket("(", params, ")", item.loc)]
            self._body(
                depth,
                header,
                start,
                item.doc,
                [(_start(s.loc), _end(s.loc), s) for s in item.body],
                self._stmt_child(depth + 1),
            )
        elif isinstance(item, ast.TrainDef):
            header = Text("train" + (f" {item.name}" if item.name else ""), line)
            self._body(depth, header, start, item.doc, self._train_children(item.items), self._train_child(depth + 1))

    def _body(self, depth: int, header, start: Pos, doc: str | None, children, emit) -> None:
        if doc is not None:
            open_ = self._next_token(start, "LBRACE")
            doc_start = self._next_token(open_, "STRING")
            children = [(doc_start, self._end_of(doc_start), None), *children]
        body_emit = emit

        def emit_with_doc(child, s: Pos, e: Pos) -> None:
            if child is None:
                self._docstring(s, e, depth + 1)
            else:
                body_emit(child, s, e)

        self._braced(depth, header, start, children, emit_with_doc)

    def _docstring(self, start: Pos, end: Pos, depth: int) -> None:
        self._leaf(depth, [(0, self.values[start], start[0])], start, end)

    def _param(self, p: ast.Param):
        head = Text(f"{p.name}: {p.type}", p.loc.line)
        return [head, Text(" = "), self.expr_doc(p.default)] if p.default is not None else head

    # ------------------------------------------------------------ training

    def _train_children(self, items) -> list[tuple[Pos, Pos, Any]]:
        return [(_start(i.loc), _end(i.loc), i) for i in items]

    def _train_child(self, depth: int):
        def emit(item, start: Pos, end: Pos) -> None:
            if isinstance(item, ast.Setting):
                self._leaf(depth, self._value_lines(f"{item.name} = ", item.value, start[0], depth), start, end)
            else:
                header = Text(item.kind + (f" {item.name}" if item.name else ""), start[0])
                self._braced(depth, header, start, self._train_children(item.items), self._train_child(depth + 1))

        return emit

    # ------------------------------------------------------------ statements

    def _stmt_child(self, depth: int):
        def emit(stmt: ast.Stmt, start: Pos, end: Pos) -> None:
            if isinstance(stmt, ast.If):
                self._if(stmt, depth)
                return
            line = start[0]
            if isinstance(stmt, ast.InputDecl):
                lines = self._lines([Text(f"input {stmt.name}: ", line), self._type(stmt.type)], depth, line)
            elif isinstance(stmt, ast.ParamDecl):
                doc = [Text(f"param {stmt.name}: ", line), self._type(stmt.type)]
                if stmt.init:
                    doc += [Text(" = "), self.expr_doc(stmt.init)]
                lines = self._lines(doc, depth, line)
            elif isinstance(stmt, getattr(ast, "Tie", ())):  # `tie lm_head.weight = transformer.wte.weight`
                lines = [(0, f"tie {stmt.target} = {stmt.source}", line)]
            elif isinstance(stmt, ast.OutputDecl):
                head = [Text(f"output {stmt.name}", line)] + ([Text(": "), self._type(stmt.type)] if stmt.type else [])
                lines = (
                    self._value_lines([*head, Text(" = ")], stmt.value, line, depth)
                    if stmt.value
                    else self._lines(head, depth, line)
                )
            else:
                lines = self._value_lines(", ".join(stmt.targets) + " = ", stmt.value, line, depth)
            self._leaf(depth, lines, start, end)

        return emit

    def _if(self, stmt: ast.If, depth: int) -> None:
        start = _start(stmt.loc)
        prev_close: Pos | None = None
        branches = list(stmt.branches)
        for i, (cond, body) in enumerate(branches):
            word = "if " if i == 0 else "} elif "
            children = [(_start(s.loc), _end(s.loc), s) for s in body]
            header_start = start if prev_close is None else prev_close
            header = [Text(word, header_start[0]), self.expr_doc(cond)]
            prev_close = self._if_branch(depth, header, header_start, _end(cond.loc), children)
        after = self._token_after(prev_close)
        if stmt.orelse or (after and after[1] == "ELSE"):
            children = [(_start(s.loc), _end(s.loc), s) for s in stmt.orelse]
            prev_close = self._if_branch(depth, Text("} else", prev_close[0]), prev_close, after[0], children)
        self._emit(depth, "}", prev_close[0])

    def _if_branch(self, depth: int, header, start: Pos, cond_end: Pos, children) -> Pos:
        open_ = self._next_token(cond_end, "LBRACE")
        self._leaf(depth, self._lines([header, Text(" {")], depth, start[0]), start, open_)
        self.out[-1].opens = True
        return self._container(depth + 1, open_, children, self._stmt_child(depth + 1))

    def _type(self, t: ast.TensorTypeExpr):
        return self._bracket(f"{t.dtype}[", [self.expr_doc(d, ARITH) for d in t.dims], "]", t.loc)

    def _value_lines(self, head, value: ast.Expr, src: int, depth: int) -> list[tuple[int, str, int]]:
        """`head + value`; a pipeline or an operator chain may span lines (see the module doc)."""
        head = Text(head, src) if isinstance(head, str) else head
        return self._lines([head, self._value_doc(value)], depth, src)

    def _value_doc(self, value: ast.Expr):
        """A statement's value: a pipeline or operator chain keeps the author's line breaks."""
        if isinstance(value, ast.Pipe):
            return Indent([self._pipe_fill(self.expr_doc(value.source, POSTFIX), value.source, value.stages, True)])
        if isinstance(value, ast.BinOp) and value.op in CHAINS:
            return Indent([self._chain_fill(value, True)])
        return self.expr_doc(value)

    def _pipe_fill(self, first, first_node, stages: list[ast.Stage], keep_breaks: bool) -> Fill:
        """`first -> s1 -> s2 ...`, breaking before `->`; hard breaks where the author broke (`keep_breaks`)."""
        parts = [first]
        last = first_node.loc.end_line or first_node.loc.line
        for stage in stages:
            parts.append(HARD if keep_breaks and stage.loc.line > last else LINE)
            parts.append([Text("-> ", stage.loc.line), self.stage_doc(stage)])
            last = stage.loc.end_line or stage.loc.line
        return Fill(parts)

    def _chain_fill(self, value: ast.BinOp, keep_breaks: bool) -> Fill:
        level, left_min, right_min = BINARY[value.op]
        operands: list[tuple[str, ast.Expr]] = []
        node: ast.Expr = value
        while isinstance(node, ast.BinOp) and node.op in CHAINS and BINARY[node.op][0] == level:
            operands.insert(0, (node.op, node.right))
            node = node.left
        parts = [self.expr_doc(node, left_min)]
        last = node.loc.end_line or node.loc.line
        for op, operand in operands:
            parts.append(HARD if keep_breaks and operand.loc.line > last else LINE)
            parts.append([Text(f"{op} ", operand.loc.line), self.expr_doc(operand, right_min)])
            last = operand.loc.end_line or operand.loc.line
        return Fill(parts)

    # ------------------------------------------------------------ expressions

    def expr(self, e: ast.Expr, min_level: int = PIPE) -> str:
        return flat(self.expr_doc(e, min_level))

    def expr_doc(self, e: ast.Expr, min_level: int = PIPE):
        doc, level = self._expr(e)
        return [Text("(", e.loc.line), doc, Text(")")] if level < min_level else doc

    def _expr(self, e: ast.Expr) -> tuple[Any, int]:
        line = e.loc.line
        if isinstance(e, ast.Num):
            return Text(self._source_text(e), line), ATOM
        if isinstance(e, ast.Str):
            return Text(_str(e.value), line), ATOM
        if isinstance(e, ast.Bool):
            return Text("true" if e.value else "false", line), ATOM
        if isinstance(e, ast.NoneLit):
            return Text("none", line), ATOM
        if isinstance(e, ast.Name):
            return Text(e.id, line), ATOM
        if isinstance(e, ast.Call):
            return self._call(e.func, e.args, e.kwargs, e.loc), ATOM
        if isinstance(e, ast.TupleLit):
            items = [self.expr_doc(i) for i in e.items]
            return self._bracket("(", items, ")", e.loc, trailing="," if len(e.items) == 1 else ""), ATOM
        if isinstance(e, ast.ListLit):
            return self._bracket("[", [self.expr_doc(i) for i in e.items], "]", e.loc), ATOM
        if isinstance(e, ast.Index):
            subscripts = self._bracket("[", [self._subscript(i) for i in e.items], "]", e.loc)
            return [self.expr_doc(e.value, POSTFIX), subscripts], POSTFIX
        if isinstance(e, ast.UnaryOp):
            if e.op == "not":
                return [Text("not ", line), self.expr_doc(e.operand, NOT)], NOT
            return [Text("-", line), self.expr_doc(e.operand, UNARY)], UNARY
        if isinstance(e, ast.BinOp):
            level, left, right = BINARY[e.op]
            if e.op in CHAINS:
                return Indent([self._chain_fill(e, False)]), level
            return Group(
                [self.expr_doc(e.left, left), Indent([LINE, Text(f"{e.op} "), self.expr_doc(e.right, right)])]
            ), level
        if isinstance(e, ast.Pipe):
            return Indent([self._pipe_fill(self.expr_doc(e.source, POSTFIX), e.source, e.stages, False)]), PIPE
        if isinstance(e, ast.CondExpr):
            body = [LINE, Text("if "), self.expr_doc(e.cond, OR), LINE, Text("else "), self.expr_doc(e.orelse, OR)]
            return Group([Text("(", line), self.expr_doc(e.then, OR), Indent(body), Text(")")]), ATOM
        raise TypeError(f"cannot format {type(e).__name__}")

    def _subscript(self, e: ast.Expr):
        if isinstance(e, ast.EllipsisLit):
            return Text("...", e.loc.line)
        if isinstance(e, ast.Slice):
            parts: list = [Text("", e.loc.line)]
            if e.start is not None:
                parts.append(self.expr_doc(e.start, ARITH))
            parts.append(Text(":"))
            if e.stop is not None:
                parts.append(self.expr_doc(e.stop, ARITH))
            if e.step is not None:
                parts += [Text(":"), self.expr_doc(e.step, ARITH)]
            return parts
        return self.expr_doc(e, ARITH)

    def _call(self, func: str, args: list[ast.Expr], kwargs: list[tuple[str, ast.Expr]], loc):
        items = [self.expr_doc(a) for a in args] + [[Text(f"{k}=", v.loc.line), self.expr_doc(v)] for k, v in kwargs]
        return self._bracket(f"{func}(", items, ")", loc)

    def stage(self, s: ast.Stage) -> str:
        return flat(self.stage_doc(s))

    def stage_doc(self, s: ast.Stage):
        line = s.loc.line
        end = s.loc.end_line or line
        if isinstance(s, ast.LayerCall):
            return Text(s.name, line) if s.bare else self._call(s.name, s.args, s.kwargs, s.loc)
        if isinstance(s, ast.NamedStage):
            return [Text(f"{s.name}: ", line), self.stage_doc(s.body)]
        if isinstance(s, ast.Repeat):
            simple = isinstance(s.count, ast.Name) or (isinstance(s.count, ast.Num) and isinstance(s.count.value, int))
            count = self.expr(s.count) if simple else f"({self.expr(s.count)})"
            return [Text(f"repeat {count} ", line), self.stage_doc(s.body)]
        if isinstance(s, ast.Group):
            return Group([Text("(", line), Indent([SOFT, self._stages_fill(s.stages)]), Text(")", end)])
        if isinstance(s, ast.ForStage):
            head = [Text(f"for {', '.join(s.names)} in ", line), self.expr_doc(s.items, OR), Text(" {")]
            return Group([*head, Indent([LINE, self._stages_fill(s.stages)]), LINE, Text("}", end)])
        if isinstance(s, ast.IfStage):
            parts: list = []
            for k, (cond, arm) in enumerate(s.branches):
                if k:
                    parts += [LINE, Text("} elif ", cond.loc.line)]
                else:
                    parts.append(Text("if ", line))
                parts += [self.expr_doc(cond, OR), Text(" {"), Indent([LINE, self._stages_fill(arm)])]
            if s.orelse:
                parts += [LINE, Text("} else {"), Indent([LINE, self._stages_fill(s.orelse)])]
            return Group([*parts, LINE, Text("}", end)])
        raise TypeError(f"cannot format {type(s).__name__}")

    def _stages_fill(self, stages: list[ast.Stage]) -> Fill:
        """A group's, loop's or if's stages: the author's breaks kept, lines filled."""
        first, *rest = stages
        return self._pipe_fill(self.stage_doc(first), first, rest, True)

    def _source_text(self, e: ast.Expr) -> str:
        loc = e.loc
        if loc.end_line == loc.line and loc.end_col:
            return self.lines[loc.line - 1][loc.col - 1 : loc.end_col - 1]
        return repr(e.value)


def _start(loc) -> Pos:
    return (loc.line, loc.col)


def _end(loc) -> Pos:
    return (loc.end_line or loc.line, (loc.end_col or loc.col + 1) - 1)


def _str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)
