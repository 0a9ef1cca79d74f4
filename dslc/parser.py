"""Parse `.model` source into the syntax tree of dslc.ast (Lark LALR + a Transformer)."""

from __future__ import annotations

import ast as pyast
import re
from contextvars import ContextVar
from functools import cache

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, VisitError

from dslc import ast
from dslc.consteval import MAX_INT
from dslc.errors import DslcError, Loc, error
from dslc.grammar import GRAMMAR_PATH

# Friendly names for the terminals Lark reports in "expected ..." messages.
TOKEN_NAMES = {
    "NAME": "a name",
    "INT": "an integer",
    "FLOAT": "a number",
    "STRING": "a string",
    "LPAR": "'('",
    "RPAR": "')'",
    "LSQB": "'['",
    "RSQB": "']'",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "COLON": "':'",
    "COMMA": "','",
    "EQUAL": "'='",
    "MORETHAN": "'>'",
    "__ANON_0": "'->'",
    "COMP_OP": "a comparison",
    "$END": "end of file",
}


# Limits that keep every spec's compile time and memory small; each is reported at its location.
MAX_SPEC_CHARS = 64 * 1024  # 10x the largest shipped spec; parsing takes about 10 ms per KiB
MAX_NESTING = 64  # brackets and braces; generated Python must stay below CPython's 200
MAX_TREE_DEPTH = 200  # parse-tree levels, for chains without brackets (`- - x`, `a ** b ** c`)
MAX_NAME_LENGTH = 128

# Strings and comments are skipped whole, so brackets and names inside them do not count.
_SCAN = re.compile(
    r'"""(?:[^"\\]|\\.|"(?!""))*"""|"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|#[^\n]*'
    rf"|[A-Za-z_][A-Za-z0-9_]{{{MAX_NAME_LENGTH},}}|[(\[{{]|[)\]}}]"
)


KEYWORDS = ("as", "import", "from", "const", "block", "model", "input", "output", "else", "if", "elif", "train",
            "repeat", "or", "and", "not", "true", "false", "none", "param", "for", "in", "tie")  # fmt: skip
# Keyword tokens of the current parse: the contextual lexer also matches `model` at the start of
# `modelm` where no name may stand, so each is checked to end where a word ends.
_keyword_tokens: ContextVar[list[Token]] = ContextVar("keyword_tokens")


def _record_keyword(token: Token) -> Token:
    _keyword_tokens.get([]).append(token)
    return token


@cache
def _lark() -> Lark:
    return Lark(
        GRAMMAR_PATH.read_text(encoding="utf-8"),
        parser="lalr",
        propagate_positions=True,
        maybe_placeholders=True,
        lexer_callbacks={word.upper(): _record_keyword for word in KEYWORDS},
        cache=True,  # reuses the built LALR tables across processes (keyed by grammar and lark version)
    )


def _check_keywords_end(tokens: list[Token], source: str, path: str) -> None:
    for tok in tokens:
        following = re.match(r"[A-Za-z0-9_]+", source[tok.end_pos :])
        if following:
            word = tok.value + following.group()
            raise _located(
                source,
                path,
                tok.start_pos,
                f"'{word}' reads as the keyword '{tok.value}' followed by "
                f"'{following.group()}'; write `{tok.value} {following.group()}`",
            )


def parse(source: str, path: str = "<string>") -> ast.Program:
    """Parse one file. Raises DslcError with a located message on bad syntax."""
    try:
        _check_limits(source, path)
        keywords = _keyword_tokens.set([])
        try:
            tree = _lark().parse(source)
            _check_keywords_end(_keyword_tokens.get(), source, path)
        finally:
            _keyword_tokens.reset(keywords)
        _check_depth(tree, path, source)
        items, doc = _ToAst(path, source).transform(tree)
    except UnexpectedInput as exc:
        raise _syntax_error(exc, source, path) from None
    except VisitError as exc:
        if isinstance(exc.orig_exc, DslcError):
            raise exc.orig_exc from None
        raise
    except RecursionError:  # a safety net: _check_limits and _check_depth refuse such specs first
        raise error(Loc(path, 1, 1), "the spec is nested too deeply to compile") from None
    comments = _comments_by_line(source)
    _attach_comments(items, source, comments)
    return ast.Program(path=path, source=source, doc=doc, items=items, comments=comments)


def _check_limits(source: str, path: str) -> None:
    """Refuse, before parsing, what would make parsing or checking slow: size, nesting, long names."""
    if len(source) > MAX_SPEC_CHARS:
        raise _located(source, path, MAX_SPEC_CHARS, f"the spec is longer than {MAX_SPEC_CHARS:,} characters")
    depth = 0
    for match in _SCAN.finditer(source):
        text = match.group()
        if text in "([{":
            depth += 1
            if depth > MAX_NESTING:
                raise _located(source, path, match.start(), f"brackets nest more than {MAX_NESTING} levels deep")
        elif text in ")]}":
            depth -= 1
        elif text[0] not in "\"'#":
            raise _located(source, path, match.start(), f"a name longer than {MAX_NAME_LENGTH} characters")


def _check_depth(tree, path: str, source: str) -> None:
    """Refuse trees too deep to transform and check without deep recursion (walked iteratively)."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_TREE_DEPTH:
            meta = node.meta
            raise error(
                Loc(path, meta.line, meta.column),
                f"the expression nests more than {MAX_TREE_DEPTH} levels deep",
                "split it into named steps",
            )
        stack.extend((child, depth + 1) for child in node.children if isinstance(child, Tree))


def _located(source: str, path: str, pos: int, message: str) -> DslcError:
    line = source.count("\n", 0, pos) + 1
    col = pos - (source.rfind("\n", 0, pos) + 1) + 1
    err = error(Loc(path, line, col), message)
    err.sources[path] = source
    return err


def _syntax_error(exc: UnexpectedInput, source: str, path: str) -> DslcError:
    line, col = exc.line if exc.line != -1 else source.count("\n") + 1, max(exc.column, 1)
    loc = Loc(path, line, col)
    if isinstance(exc, UnexpectedCharacters):
        char = source[exc.pos_in_stream] if exc.pos_in_stream < len(source) else "?"
        err = error(loc, f"unexpected character {char!r}")
    else:
        expected = sorted({TOKEN_NAMES.get(t, _describe_terminal(t)) for t in (exc.expected or [])})
        got = "end of file" if isinstance(exc, UnexpectedEOF) else _describe_token(exc)
        want = ", ".join(expected[:8]) + (", ..." if len(expected) > 8 else "")
        err = error(loc, f"syntax error: unexpected {got}" + (f"; expected {want}" if want else ""))
    err.sources[path] = source
    return err


def _describe_token(exc: UnexpectedInput) -> str:
    token = getattr(exc, "token", None)
    if token is None or token.type == "$END":
        return "end of file"
    if token.type in ("NAME", "INT", "FLOAT", "STRING"):
        return f"{TOKEN_NAMES[token.type]} {str(token)!r}"
    return repr(str(token))


def _describe_terminal(name: str) -> str:
    try:
        pattern = _lark().get_terminal(name).pattern
    except KeyError:
        return name.lower()
    return f"'{pattern.value}'" if pattern.type == "str" else name.lower()


def _loc(path: str, meta) -> Loc:
    return Loc(path, meta.line, meta.column, meta.end_line, meta.end_column)


def _tok_loc(path: str, tok: Token) -> Loc:
    return Loc(path, tok.line, tok.column, tok.end_line, tok.end_column)


def _string_value(tok: Token, path: str) -> str:
    # The token matched the STRING terminal, so literal_eval sees exactly one string literal.
    try:
        return pyast.literal_eval(str(tok))
    except (ValueError, SyntaxError) as exc:
        raise error(_tok_loc(path, tok), f"bad string literal: {exc}") from None


def _number(tok: Token, path: str) -> int | float:
    text = str(tok).replace("_", "")
    if any(c in text for c in ".eE"):
        value = float(text)
        if value == float("inf"):
            raise error(_tok_loc(path, tok), f"the number {_cut(text)} is too large")
        return value
    if len(text) > len(str(MAX_INT)) or int(text) > MAX_INT:
        raise error(_tok_loc(path, tok), f"the integer {_cut(text)} is too large", "the largest is 2**63 - 1")
    return int(text)


def _cut(text: str) -> str:
    return text if len(text) <= 24 else f"{text[:20]}... ({len(text):,} digits)"


@v_args(meta=True)
class _ToAst(Transformer):
    """Builds dslc.ast nodes bottom-up; every node carries its source location."""

    def __init__(self, path: str, source: str):
        super().__init__()
        self.path = path
        self.source = source

    def _l(self, meta) -> Loc:
        return _loc(self.path, meta)

    # -- top level
    def start(self, meta, children):
        doc = None
        if children and isinstance(children[0], _Doc):
            doc = children.pop(0).text
        return children, doc

    def docstring(self, meta, children):
        return _Doc(_string_value(children[0], self.path))

    def import_all(self, meta, children):
        path_tok, alias = children
        return ast.Import(self._l(meta), _string_value(path_tok, self.path), str(alias) if alias else None, None)

    def import_names(self, meta, children):
        path_tok, *names = children
        return ast.Import(self._l(meta), _string_value(path_tok, self.path), None, [str(n) for n in names])

    def const_decl(self, meta, children):
        return ast.Const(self._l(meta), str(children[0]), children[1])

    def param(self, meta, children):
        name, type_name, default = children
        return ast.Param(self._l(meta), str(name), str(type_name), default)

    def block_def(self, meta, children):
        name, *params, (doc, body) = children
        params = [p for p in params if p is not None]
        return ast.BlockDef(self._l(meta), str(name), params, doc, body, is_model=False)

    def model_def(self, meta, children):
        name, (doc, body) = children
        return ast.BlockDef(self._l(meta), str(name), [], doc, body, is_model=True)

    def body(self, meta, children):
        doc = None
        if children and isinstance(children[0], _Doc):
            doc = children.pop(0).text
        return doc, children

    # -- statements
    def input_decl(self, meta, children):
        return ast.InputDecl(self._l(meta), str(children[0]), children[1])

    def output_decl(self, meta, children):
        name, type_, value = children
        return ast.OutputDecl(self._l(meta), str(name), type_, value)

    def param_decl(self, meta, children):
        name, type_, init = children
        return ast.ParamDecl(self._l(meta), str(name), type_, init)

    def tie_stmt(self, meta, children):
        target, source = children
        return ast.Tie(self._l(meta), target, source)

    def assign(self, meta, children):
        *targets, value = children
        return ast.Assign(self._l(meta), [str(t) for t in targets], value)

    def if_stmt(self, meta, children):
        cond, body, *rest = children
        orelse = rest.pop() if rest and not isinstance(rest[-1], tuple) else None
        branches = [(cond, body)] + [b for b in rest if b is not None]
        return ast.If(self._l(meta), branches, orelse or [])

    def elif_clause(self, meta, children):
        return (children[0], children[1])

    def stmt_block(self, meta, children):
        return list(children)

    def tensor_type(self, meta, children):
        dtype, *dims = children
        return ast.TensorTypeExpr(self._l(meta), str(dtype), [d for d in dims if d is not None])

    # -- training
    def train_def(self, meta, children):
        name, *items = children
        doc = None
        if items and isinstance(items[0], _Doc):
            doc = items.pop(0).text
        return ast.TrainDef(self._l(meta), str(name) if name else None, doc, items)

    def setting(self, meta, children):
        return ast.Setting(self._l(meta), str(children[0]), children[1])

    def section(self, meta, children):
        kind, name, *items = children
        return ast.Section(self._l(meta), str(kind), str(name) if name else None, items)

    # -- pipelines
    def pipe(self, meta, children):
        return ast.Pipe(self._l(meta), children[0], children[1:])

    def named_stage(self, meta, children):
        return ast.NamedStage(self._l(meta), str(children[0]), children[1])

    def layer_ref(self, meta, children):
        return ast.LayerCall(self._l(meta), children[0], [], [], bare=True)

    def layer_call(self, meta, children):
        name, arglist = children
        args, kwargs = arglist or ([], [])
        return ast.LayerCall(self._l(meta), name, args, kwargs)

    def repeat(self, meta, children):
        return ast.Repeat(self._l(meta), children[0], children[1])

    def group(self, meta, children):
        return ast.Group(self._l(meta), list(children))

    def for_stage(self, meta, children):
        *names, items, stages = children
        return ast.ForStage(self._l(meta), [str(n) for n in names], items, stages)

    def if_stage(self, meta, children):
        cond, stages, *rest = children
        orelse = rest.pop()  # the else arm, None without one
        return ast.IfStage(self._l(meta), [(cond, stages), *rest], orelse or [])

    def stage_seq(self, meta, children):
        return list(children)

    def stage_elif(self, meta, children):
        return (children[0], children[1])

    def dotted_name(self, meta, children):
        return ".".join(str(c) for c in children)

    # -- expressions
    def int_lit(self, meta, children):
        return ast.Num(self._l(meta), _number(children[0], self.path))

    def float_lit(self, meta, children):
        return ast.Num(self._l(meta), _number(children[0], self.path))

    def str_lit(self, meta, children):
        return ast.Str(self._l(meta), _string_value(children[0], self.path))

    def true_lit(self, meta, children):
        return ast.Bool(self._l(meta), True)

    def false_lit(self, meta, children):
        return ast.Bool(self._l(meta), False)

    def none_lit(self, meta, children):
        return ast.NoneLit(self._l(meta))

    def name(self, meta, children):
        return ast.Name(self._l(meta), str(children[0]))

    def call(self, meta, children):
        func, arglist = children
        args, kwargs = arglist or ([], [])
        return ast.Call(self._l(meta), func, args, kwargs)

    def arglist(self, meta, children):
        args, kwargs = [], []
        for child in children:
            if isinstance(child, tuple):
                kwargs.append(child)
            elif kwargs:
                raise error(child.loc, "positional argument after keyword argument")
            else:
                args.append(child)
        return args, kwargs

    def kwarg(self, meta, children):
        return (str(children[0]), children[1])

    def cond_expr(self, meta, children):
        then, cond, orelse = children
        return ast.CondExpr(self._l(meta), cond, then, orelse)

    def tuple_lit(self, meta, children):
        return ast.TupleLit(self._l(meta), [c for c in children if c is not None])

    def list_lit(self, meta, children):
        return ast.ListLit(self._l(meta), [c for c in children if c is not None])

    def index(self, meta, children):
        return ast.Index(self._l(meta), children[0], children[1:])

    def sub_index(self, meta, children):
        return children[0]

    def sub_slice(self, meta, children):
        start, stop, step = (children + [None, None, None])[:3]
        return ast.Slice(self._l(meta), start, stop, step)

    def sub_ellipsis(self, meta, children):
        return ast.EllipsisLit(self._l(meta))

    def sub_newaxis(self, meta, children):
        return ast.NewAxis(self._l(meta))

    def _binop(op):  # noqa: N805 - helper that builds methods
        def method(self, meta, children):
            return ast.BinOp(self._l(meta), op, children[0], children[1])

        return method

    add, sub, mul, div = _binop("+"), _binop("-"), _binop("*"), _binop("/")
    floordiv, mod, matmul, pow = _binop("//"), _binop("%"), _binop("@"), _binop("**")

    def _chain(op):  # noqa: N805
        def method(self, meta, children):
            result = children[0]
            for child in children[1:]:
                result = ast.BinOp(self._l(meta), op, result, child)
            return result

        return method

    or_, and_ = _chain("or"), _chain("and")

    def compare(self, meta, children):
        if len(children) == 1:
            return children[0]
        left, op, right = children
        return ast.BinOp(self._l(meta), str(op), left, right)

    def neg(self, meta, children):
        return ast.UnaryOp(self._l(meta), "-", children[0])

    def not_(self, meta, children):
        return ast.UnaryOp(self._l(meta), "not", children[0])

    def factor(self, meta, children):  # unary plus
        return children[0]


class _Doc:
    def __init__(self, text: str):
        self.text = text


def _comments_by_line(source: str) -> dict[int, str]:
    """Comment text per line, found with the real lexer so `#` inside strings is not a comment."""
    found: dict[int, str] = {}
    for tok in _lark().lex(source, dont_ignore=True):
        if tok.type == "COMMENT":
            found[tok.line] = tok.value[1:].strip()
    return found


def _attach_comments(items: list, source: str, comments: dict[int, str]) -> None:
    """Give each statement the comments on the lines just above it and on its own line."""
    lines = source.split("\n")

    def leading(line: int) -> list[str]:
        out: list[str] = []
        n = line - 1
        while n >= 1 and n in comments and lines[n - 1].lstrip().startswith("#"):
            out.insert(0, comments[n])
            n -= 1
        if line in comments and not lines[line - 1].lstrip().startswith("#"):
            out.append(comments[line])
        return out

    def visit_stmts(stmts: list[ast.Stmt]) -> None:
        for stmt in stmts:
            stmt.comments = leading(stmt.loc.line)
            if isinstance(stmt, ast.If):
                for _, body in stmt.branches:
                    visit_stmts(body)
                visit_stmts(stmt.orelse)

    for item in items:
        item.comments = leading(item.loc.line)
        if isinstance(item, ast.BlockDef):
            visit_stmts(item.body)
