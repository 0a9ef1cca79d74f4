"""`dslc fmt`: canonical layout for `.model` files, keeping every comment.

The formatter prints the syntax tree back (canonical spacing, minimal parentheses, double-quoted
strings, four-space indentation) and places the comments by position, found with the real lexer:

* a comment on its own line stays on its own line, before the next statement (or before `}`);
* a comment after code stays at the end of the line that holds that code.

Pipelines keep the line breaks the author chose between stages (each source line of stages becomes
one continuation line `-> A -> B`); a one-line pipeline longer than MAX_WIDTH is broken before
every `->`. Blank lines are kept, at most one in a row. Numbers and docstrings are written exactly
as in the source. The result re-parses to the same syntax tree (checked on every call), and
formatting it again changes nothing.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from dslc import ast
from dslc.errors import DslcError, error, read_source
from dslc.fileio import write_atomic
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


def _align_trailing(lines: list[_Line]) -> None:
    """Trailing comments on consecutive lines start in one column (as gofmt does)."""
    run: list[_Line] = []
    for line in [*lines, None]:
        if line is not None and line.trailing and "\n" not in line.text:
            run.append(line)
            continue
        column = max((len(INDENT * x.depth + x.text) + 2 for x in run), default=0)
        for x in run:
            x.column = column
        run = []


def format_source(source: str, path: str = "<string>") -> str:
    """The canonical form of `source`. Raises DslcError on a syntax error."""
    program = parse(source, path)
    result = _Formatter(program).run()
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
    def __init__(self, program: ast.Program):
        self.program = program
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
        _align_trailing(self.out)
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

    def _braced(self, depth: int, header: str, start: Pos, children, emit, close_text: str = "}") -> Pos:
        open_ = self._next_token(start, "LBRACE")
        close = self._next_token(max([open_] + [e for _, e, _ in children]), "RBRACE")
        if not children and not self._has_comments(open_, close):
            self._leaf(depth, [(0, header + " {}", start[0])], start, close)
            return close
        self._leaf(depth, [(0, header + " {", start[0])], start, open_)
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

    # ------------------------------------------------------------ items

    def _item(self, item: ast.Item, depth: int) -> None:
        start, end = _start(item.loc), _end(item.loc)
        if isinstance(item, ast.Import):
            if item.names is not None:
                text = f"from {_str(item.path)} import {', '.join(item.names)}"
            else:
                text = f"import {_str(item.path)}" + (f" as {item.alias}" if item.alias else "")
            self._leaf(depth, [(0, text, start[0])], start, end)
        elif isinstance(item, ast.Const):
            self._leaf(depth, self._value_lines(f"const {item.name} = ", item.value, start[0], depth), start, end)
        elif isinstance(item, ast.BlockDef):
            if item.is_model:
                header = f"model {item.name}"
            else:
                header = f"block {item.name}({', '.join(self._param(p) for p in item.params)})"
            self._body(
                depth,
                header,
                start,
                item.doc,
                [(_start(s.loc), _end(s.loc), s) for s in item.body],
                self._stmt_child(depth + 1),
            )
        elif isinstance(item, ast.TrainDef):
            header = "train" + (f" {item.name}" if item.name else "")
            self._body(depth, header, start, item.doc, self._train_children(item.items), self._train_child(depth + 1))

    def _body(self, depth: int, header: str, start: Pos, doc: str | None, children, emit) -> None:
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

    def _param(self, p: ast.Param) -> str:
        return f"{p.name}: {p.type}" + (f" = {self.expr(p.default)}" if p.default is not None else "")

    # ------------------------------------------------------------ training

    def _train_children(self, items) -> list[tuple[Pos, Pos, Any]]:
        return [(_start(i.loc), _end(i.loc), i) for i in items]

    def _train_child(self, depth: int):
        def emit(item, start: Pos, end: Pos) -> None:
            if isinstance(item, ast.Setting):
                self._leaf(depth, self._value_lines(f"{item.name} = ", item.value, start[0], depth), start, end)
            else:
                header = item.kind + (f" {item.name}" if item.name else "")
                self._braced(depth, header, start, self._train_children(item.items), self._train_child(depth + 1))

        return emit

    # ------------------------------------------------------------ statements

    def _stmt_child(self, depth: int):
        def emit(stmt: ast.Stmt, start: Pos, end: Pos) -> None:
            if isinstance(stmt, ast.If):
                self._if(stmt, depth)
                return
            if isinstance(stmt, ast.InputDecl):
                lines = [(0, f"input {stmt.name}: {self._type(stmt.type)}", start[0])]
            elif isinstance(stmt, ast.ParamDecl):
                head = f"param {stmt.name}: {self._type(stmt.type)}"
                lines = [(0, head + (f" = {self.expr(stmt.init)}" if stmt.init else ""), start[0])]
            elif isinstance(stmt, ast.OutputDecl):
                head = f"output {stmt.name}" + (f": {self._type(stmt.type)}" if stmt.type else "")
                lines = (
                    self._value_lines(head + " = ", stmt.value, start[0], depth)
                    if stmt.value
                    else [(0, head, start[0])]
                )
            else:
                lines = self._value_lines(", ".join(stmt.targets) + " = ", stmt.value, start[0], depth)
            self._leaf(depth, lines, start, end)

        return emit

    def _if(self, stmt: ast.If, depth: int) -> None:
        start = _start(stmt.loc)
        prev_close: Pos | None = None
        branches = list(stmt.branches)
        for i, (cond, body) in enumerate(branches):
            word = "if" if i == 0 else "} elif"
            children = [(_start(s.loc), _end(s.loc), s) for s in body]
            header_start = start if prev_close is None else prev_close
            prev_close = self._if_branch(depth, f"{word} {self.expr(cond)}", header_start, _end(cond.loc), children)
        after = self._token_after(prev_close)
        if stmt.orelse or (after and after[1] == "ELSE"):
            children = [(_start(s.loc), _end(s.loc), s) for s in stmt.orelse]
            prev_close = self._if_branch(depth, "} else", prev_close, after[0], children)
        self._emit(depth, "}", prev_close[0])

    def _if_branch(self, depth: int, header: str, start: Pos, cond_end: Pos, children) -> Pos:
        open_ = self._next_token(cond_end, "LBRACE")
        self._leaf(depth, [(0, header + " {", start[0])], start, open_)
        self.out[-1].opens = True
        return self._container(depth + 1, open_, children, self._stmt_child(depth + 1))

    def _type(self, t: ast.TensorTypeExpr) -> str:
        return f"{t.dtype}[{', '.join(self.expr(d, ARITH) for d in t.dims)}]"

    def _value_lines(self, head: str, value: ast.Expr, src: int, depth: int) -> list[tuple[int, str, int]]:
        """`head + value`; a pipeline or an operator chain may span lines (see the module doc)."""
        if isinstance(value, ast.Pipe):
            first = self.expr(value.source, POSTFIX)
            pieces = [("->", self.stage(s), s.loc.line, s.loc.end_line) for s in value.stages]
            lines = self._chain(head + first, value.source.loc.end_line, pieces, src, depth)
            if all(_width(depth + extra, text) <= MAX_WIDTH for extra, text, _ in lines):
                return lines
            # a group, loop or if too long for one line: its stages one per line inside it (`h = x -> conv: (`)
            first_stage, *rest = value.stages
            lines = self._stage_lines(first_stage, 0, f"{head}{first} -> ", depth)
            for stage in rest:
                lines += self._stage_lines(stage, 1, "-> ", depth)
            return lines
        if isinstance(value, ast.BinOp) and value.op in CHAINS:
            level, left_min, right_min = BINARY[value.op]
            operands: list[tuple[str, ast.Expr]] = []
            node: ast.Expr = value
            while isinstance(node, ast.BinOp) and node.op in CHAINS and BINARY[node.op][0] == level:
                operands.insert(0, (node.op, node.right))
                node = node.left
            pieces = [(op, self.expr(e, right_min), e.loc.line, e.loc.end_line) for op, e in operands]
            return self._chain(head + self.expr(node, left_min), node.loc.end_line, pieces, src, depth)
        return [(0, head + self.expr(value), src)]

    def _chain(self, first: str, first_end: int, pieces, src: int, depth: int) -> list[tuple[int, str, int]]:
        """Lines for `first op p1 op p2 ...`: the author's line breaks kept, long lines wrapped."""
        lines: list[tuple[int, list[str], int]] = [(0, [first], src)]
        last_line = first_end
        for op, text, line, end_line in pieces:
            if line > last_line:
                lines.append((1, [], line))
            lines[-1][1].append(f"{op} {text}")
            last_line = end_line
        out: list[tuple[int, str, int]] = []
        for extra, parts, line in lines:
            width = MAX_WIDTH - len(INDENT) * (depth + extra)
            current = parts[0]
            for part in parts[1:]:
                if len(current) + 1 + len(part) > width:
                    out.append((extra, current, line))
                    current, extra, width = part, 1, MAX_WIDTH - len(INDENT) * (depth + 1)
                else:
                    current += " " + part
            out.append((extra, current, line))
        return out

    # ------------------------------------------------------------ expressions

    def expr(self, e: ast.Expr, min_level: int = PIPE) -> str:
        text, level = self._expr(e)
        return f"({text})" if level < min_level else text

    def _expr(self, e: ast.Expr) -> tuple[str, int]:
        if isinstance(e, ast.Num):
            return self._source_text(e), ATOM
        if isinstance(e, ast.Str):
            return _str(e.value), ATOM
        if isinstance(e, ast.Bool):
            return ("true" if e.value else "false"), ATOM
        if isinstance(e, ast.NoneLit):
            return "none", ATOM
        if isinstance(e, ast.Name):
            return e.id, ATOM
        if isinstance(e, ast.Call):
            return f"{e.func}({self._args(e.args, e.kwargs)})", ATOM
        if isinstance(e, ast.TupleLit):
            items = ", ".join(self.expr(i) for i in e.items)
            return (f"({items},)" if len(e.items) == 1 else f"({items})"), ATOM
        if isinstance(e, ast.ListLit):
            return f"[{', '.join(self.expr(i) for i in e.items)}]", ATOM
        if isinstance(e, ast.Index):
            return f"{self.expr(e.value, POSTFIX)}[{', '.join(self._subscript(i) for i in e.items)}]", POSTFIX
        if isinstance(e, ast.UnaryOp):
            if e.op == "not":
                return f"not {self.expr(e.operand, NOT)}", NOT
            return f"-{self.expr(e.operand, UNARY)}", UNARY
        if isinstance(e, ast.BinOp):
            level, left, right = BINARY[e.op]
            return f"{self.expr(e.left, left)} {e.op} {self.expr(e.right, right)}", level
        if isinstance(e, ast.Pipe):
            return " -> ".join([self.expr(e.source, POSTFIX), *(self.stage(s) for s in e.stages)]), PIPE
        if isinstance(e, ast.CondExpr):
            return f"({self.expr(e.then, OR)} if {self.expr(e.cond, OR)} else {self.expr(e.orelse, OR)})", ATOM
        raise TypeError(f"cannot format {type(e).__name__}")

    def _subscript(self, e: ast.Expr) -> str:
        if isinstance(e, ast.EllipsisLit):
            return "..."
        if isinstance(e, ast.Slice):
            parts = [self.expr(p, ARITH) if p is not None else "" for p in (e.start, e.stop)]
            text = ":".join(parts)
            return text + (f":{self.expr(e.step, ARITH)}" if e.step is not None else "")
        return self.expr(e, ARITH)

    def _args(self, args: list[ast.Expr], kwargs: list[tuple[str, ast.Expr]]) -> str:
        return ", ".join([self.expr(a) for a in args] + [f"{k}={self.expr(v)}" for k, v in kwargs])

    def stage(self, s: ast.Stage) -> str:
        if isinstance(s, ast.LayerCall):
            return s.name if s.bare else f"{s.name}({self._args(s.args, s.kwargs)})"
        if isinstance(s, ast.NamedStage):
            return f"{s.name}: {self.stage(s.body)}"
        if isinstance(s, ast.Repeat):
            simple = isinstance(s.count, ast.Name) or (isinstance(s.count, ast.Num) and isinstance(s.count.value, int))
            count = self.expr(s.count) if simple else f"({self.expr(s.count)})"
            return f"repeat {count} {self.stage(s.body)}"
        if isinstance(s, ast.Group):
            return "(" + self._stages(s.stages) + ")"
        if isinstance(s, ast.ForStage):
            return f"for {', '.join(s.names)} in {self.expr(s.items, OR)} {{ {self._stages(s.stages)} }}"
        if isinstance(s, ast.IfStage):
            arms = [
                f"{word} {self.expr(c, OR)} {{ {self._stages(arm)} }}"
                for word, (c, arm) in zip(["if", *["elif"] * len(s.branches)], s.branches)
            ]
            if s.orelse:
                arms.append(f"else {{ {self._stages(s.orelse)} }}")
            return " ".join(arms)
        raise TypeError(f"cannot format {type(s).__name__}")

    def _stage_lines(self, stage: ast.Stage, extra: int, prefix: str, depth: int) -> list[tuple[int, str, int]]:
        """One stage on one line where it fits; else a group's, loop's or if's stages one per line."""
        text = prefix + self.stage(stage)
        if _width(depth + extra, text) <= MAX_WIDTH:
            return [(extra, text, stage.loc.line)]
        body = stage
        while isinstance(body, (ast.NamedStage, ast.Repeat)):  # `name: repeat n (...)`: the head stays in front
            body = body.body
        if not isinstance(body, (ast.Group, ast.ForStage, ast.IfStage)):
            return [(extra, text, stage.loc.line)]
        head = text[: len(text) - len(self.stage(body))]  # the prefix, a name or `repeat n` before the body
        if isinstance(body, ast.Group):
            lines = [(extra, head + "(", stage.loc.line), *self._inner_lines(body.stages, extra + 1, depth)]
            return [*lines[:-1], (lines[-1][0], lines[-1][1] + ")", lines[-1][2])]
        if isinstance(body, ast.ForStage):
            header = f"{head}for {', '.join(body.names)} in {self.expr(body.items, OR)} {{"
            arms = [(header, body.stages)]
        else:
            words = [f"{head}if", *["} elif"] * (len(body.branches) - 1)]
            arms = [(f"{w} {self.expr(c, OR)} {{", arm) for w, (c, arm) in zip(words, body.branches)]
            arms += [("} else {", body.orelse)] if body.orelse else []
        lines = []
        for header, stages in arms:
            lines += [(extra, header, stage.loc.line), *self._inner_lines(stages, extra + 1, depth)]
        return [*lines, (extra, "}", stage.loc.end_line or stage.loc.line)]

    def _inner_lines(self, stages: list[ast.Stage], extra: int, depth: int) -> list[tuple[int, str, int]]:
        lines = []
        for i, inner in enumerate(stages):
            lines += self._stage_lines(inner, extra, "-> " if i else "", depth)
        return lines

    def _stages(self, stages: list[ast.Stage]) -> str:
        return " -> ".join(self.stage(x) for x in stages)

    def _source_text(self, e: ast.Expr) -> str:
        loc = e.loc
        if loc.end_line == loc.line and loc.end_col:
            return self.lines[loc.line - 1][loc.col - 1 : loc.end_col - 1]
        return repr(e.value)


def _width(depth: int, text: str) -> int:
    return len(INDENT) * depth + len(text)


def _start(loc) -> Pos:
    return (loc.line, loc.col)


def _end(loc) -> Pos:
    return (loc.end_line or loc.line, (loc.end_col or loc.col + 1) - 1)


def _str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)
