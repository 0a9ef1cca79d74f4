"""Hover, completion, go to definition, document symbols and inlay hints, from an analysis and the text.

Every function takes the buffer's current text (`dslc.lsp.text.Text`) and the latest analysis that has
facts, which may be of an older text: while someone types, most texts do not parse. Positions of the
analysis are mapped onto the current text line by line (`LineMap`): a fact of a line that changed is
not shown at a position, but what is known by name (a tensor's type in the enclosing body, a constant's
value, a layer's parameters) still is. Nothing here raises on any text; positions are 1-based lines and
code-point columns, offsets index the text.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from dslc import ast, ir
from dslc.errors import DOCS_URL, Loc
from dslc.layers import REGISTRY, Op
from dslc.lsp.analysis import Analysis, Body, reference_uri, same_file
from dslc.lsp.text import Item, Text, Token, enclosing, outline, string_closed
from dslc.params import REQUIRED, Param, brief, dsl_value, signature
from dslc.shapes import DTYPES, Sym, TensorType

Pos = tuple[int, int]
MAX_USES_SHOWN = 6  # a block's uses listed in a hover


# ---------------------------------------------------------------- mapping an analysis onto the current text


class LineMap:
    """Lines of an analysed text that are unchanged in the current one, both ways."""

    def __init__(self, old: str, new: str):
        self.identity = old == new
        self.old_to_new: dict[int, int] = {}
        self.new_to_old: dict[int, int] = {}
        if self.identity:
            return
        a, b = old.split("\n"), new.split("\n")
        for block in difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks():
            for k in range(block.size):
                self.old_to_new[block.a + k + 1] = block.b + k + 1
                self.new_to_old[block.b + k + 1] = block.a + k + 1

    def to_old(self, line: int) -> int | None:
        return line if self.identity else self.new_to_old.get(line)

    def to_new(self, line: int) -> int | None:
        return line if self.identity else self.old_to_new.get(line)

    def loc_to_new(self, loc: Loc) -> Loc | None:
        """A span of the old text in the new one, when its first and last lines are unchanged."""
        start = self.to_new(loc.line)
        end = self.to_new(loc.end_line or loc.line)
        if start is None or end is None or (end - start) != ((loc.end_line or loc.line) - loc.line):
            return None
        return Loc(loc.file, start, loc.col, end if loc.end_line else None, loc.end_col)


_maps: dict[tuple[int, int], tuple[str, str, LineMap]] = {}


def line_map(analysis: Analysis, text: Text) -> LineMap:
    key = (id(analysis), id(text))
    cached = _maps.get(key)
    if cached is None or cached[0] is not analysis.source or cached[1] is not text.source:
        if len(_maps) > 64:
            _maps.clear()
        cached = _maps[key] = (analysis.source, text.source, LineMap(analysis.source, text.source))
    return cached[2]


@dataclass
class Context:
    """Where the cursor is: the enclosing items of the outline, and the analysis bodies of the innermost."""

    chain: list[Item]
    analysis: Analysis | None
    text: Text

    @property
    def top(self) -> Item | None:
        return self.chain[0] if self.chain else None

    @property
    def kind(self) -> str | None:
        return self.top.kind if self.top else None

    @property
    def bodies(self) -> list[Body]:
        if self.analysis is None or self.top is None or not self.analysis.facts:
            return []
        if self.top.kind == "train":
            return [b for b in self.analysis.bodies if b.kind == "train" and same_file(b.path, self.analysis.path)]
        return self.analysis.bodies_of(self.top.name, self.analysis.path)


def context(analysis: Analysis | None, text: Text, offset: int) -> Context:
    return Context(enclosing(outline(text), offset), analysis, text)


# ---------------------------------------------------------------- describing values


def type_text(value: Any) -> str | None:
    """`float32[batch, 64, 14, 14]` for a tensor (several: joined), a value as the language writes it."""
    if isinstance(value, ir.Expr):
        return ", ".join(str(t) for t in value.types)
    if isinstance(value, TensorType):
        return str(value)
    if isinstance(value, Sym):
        return f"size {value}"
    if value is None or isinstance(value, (int, float, str, bool, tuple)):
        return brief(value)
    return None


def op_doc(op: Op, heading: bool = True) -> str:
    """An op's signature (defaults shown), its one-line doc and its parameters."""
    lines = [f"```dslc\n{signature(op.name, op.params)}\n```"] if heading else []
    if op.doc:
        lines.append(op.doc.strip().split("\n")[0])
    if op.shape_rule:
        lines.append(f"Shape: {op.shape_rule}")
    params = _param_lines(op.params)
    if params:
        lines.append("\n".join(params))
    section = f"op-{op.name.lower()}"
    uri = reference_uri(section)
    lines.append(f"See [{DOCS_URL}#{section}]({uri})" if uri else f"See: {DOCS_URL}#{section}")
    return "\n\n".join(lines)


def _param_lines(params: tuple[Param, ...]) -> list[str]:
    out = []
    for p in params:
        default = "" if p.required else f" = {dsl_value(p.default)}"
        out.append(f"- `{p.name}{default}`" + (f": {p.doc}" if p.doc else ""))
    return out


def _training_registries() -> dict[str, dict[str, Any]]:
    from dslc.data.registry import DATASETS
    from dslc.initializers import INITIALIZERS
    from dslc.training.functions import METRICS, OPTIMIZERS, SCHEDULES

    return {"data set": DATASETS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES, "metric": METRICS,
            "initialiser": INITIALIZERS}  # fmt: skip


def _registry_entry(name: str) -> tuple[str, Any] | None:
    for what, registry in _training_registries().items():
        if name in registry:
            return what, registry[name]
    return None


def _entry_doc(what: str, entry: Any) -> str:
    params = tuple(getattr(entry, "params", ()))
    doc = (getattr(entry, "doc", "") or "").strip().split("\n")[0]
    head = f"```dslc\n{signature(entry.name, params)}\n```\n\n{what}" + (f": {doc}" if doc else "")
    lines = _param_lines(params)
    return head + ("\n\n" + "\n".join(lines) if lines else "")


# ---------------------------------------------------------------- hover


@dataclass
class Hover:
    markdown: str
    start: Pos
    end: Pos


def hover(analysis: Analysis | None, text: Text, offset: int) -> Hover | None:
    tok = text.word_at(offset)
    if tok is None or tok.kind != "name":
        return None
    ctx = context(analysis, text, offset)
    body = _hover_markdown(ctx, tok)
    return Hover(body, tok.pos, tok.end_pos) if body else None


def _neighbours(text: Text, tok: Token) -> tuple[Token | None, Token | None, Token | None]:
    i = text.index(tok)
    prev = text.code[i - 1] if i > 0 else None
    prev2 = text.code[i - 2] if i > 1 else None
    nxt = text.code[i + 1] if i + 1 < len(text.code) else None
    return prev2, prev, nxt


def _hover_markdown(ctx: Context, tok: Token) -> str | None:
    name = tok.text
    prev2, prev, nxt = _neighbours(ctx.text, tok)
    callee = _callee_of_kwarg(ctx.text, tok) if nxt is not None and nxt.text == "=" else None
    if callee is not None:
        return _kwarg_doc(ctx, callee, name)
    stage_name = nxt is not None and nxt.text == ":" and prev is not None and prev.text in ("->", "(")
    if stage_name:  # `conv1: Conv2d(...)`: the layer it names
        i = ctx.text.index(tok)
        layer = ctx.text.code[i + 2] if i + 2 < len(ctx.text.code) else None
        if layer is not None and layer.kind in ("name", "op", "keyword"):
            use = _uses_at(ctx, layer)
            head = f"layer `{name}`" + (f": {_what_at(ctx, layer)}" if _what_at(ctx, layer) else "")
            return head + (f"\n\n{use}" if use else "")
    applied = (prev is not None and prev.text in ("->", ":", "(")) or (nxt is not None and nxt.text == "(")
    facts_value = _value_of(ctx, tok)
    if applied or facts_value is None:
        found = _callable_doc(ctx, tok, name)
        if found:
            return found
    if facts_value is not None:
        return facts_value
    return _static_doc(ctx, name)


def _callable_doc(ctx: Context, tok: Token, name: str) -> str | None:
    use = _uses_at(ctx, tok)
    op = REGISTRY.get(name)
    if op is not None:
        return op_doc(op) + (f"\n\n---\n{use}" if use else "")
    block = _block_named(ctx, name)
    if block is not None:
        return _block_doc(ctx, block) + (f"\n\n---\n{use}" if use else "")
    model = _model_named(ctx, name)
    if model is not None:
        return _model_doc(model)
    entry = _registry_entry(name)
    if entry is not None:
        return _entry_doc(*entry)
    for body in ctx.bodies:  # a named layer reused: `-> encoder`
        for rec in body.records:
            if rec.module == name:
                return f"layer `{name}`: {rec.what} -> `{rec.output}`, {rec.params:,} parameters" + (
                    f"\n\n{use}" if use else ""
                )
    return None


def _static_doc(ctx: Context, name: str) -> str | None:
    analysis = ctx.analysis
    if analysis is not None and analysis.scope is not None and name in analysis.scope.consts:
        value = analysis.scope.consts[name]
        return f"```dslc\nconst {name} = {brief(value)}\n```\n\noverride: `dslc check FILE --set {name}={_set_value(value)}`"
    for item in outline(ctx.text):
        if item.kind == "const" and item.name == name:
            return f"constant `{name}`"
    if name in DTYPES:
        return f"dtype `{name}`"
    return None


def _set_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, (int, float, str)) else "..."


def _value_of(ctx: Context, tok: Token) -> str | None:
    """The type (or compile-time value) of a name at this point of its body, for each use of the body."""
    bodies = ctx.bodies
    if not bodies:
        return None
    analysis = ctx.analysis
    lmap = line_map(analysis, ctx.text)
    old_line = lmap.to_old(tok.line)
    statement = _statement_start(ctx.text, tok)
    old_statement = lmap.to_old(statement[0]) if statement else None
    shown: list[tuple[str, str]] = []
    for body in bodies:
        stale = body.stale
        value = _binding_before(body, tok.text, old_line, None if stale else old_statement, statement, tok)
        if value is None and tok.text in body.dims:
            value = body.dims[tok.text]
            if isinstance(value, Sym):
                shown.append((body.label, f"dimension `{value}` (symbolic: its size is given at run time)"))
                continue
            shown.append((body.label, f"dimension `{tok.text}` = {brief(value)}"))
            continue
        if value is None and tok.text in body.fields:
            shown.append((body.label, f"data set field: `{body.fields[tok.text]}`"))
            continue
        if value is None:
            continue
        described = type_text(value)
        if described is not None:
            kind = "tensor" if isinstance(value, ir.Expr) else "value"
            shown.append((body.label, f"{kind} `{tok.text}`: `{described}`"))
    if not shown:
        return None
    return _per_use(shown)


def _per_use(shown: list[tuple[str, str]]) -> str:
    distinct: dict[str, list[str]] = {}
    for label, line in shown:
        distinct.setdefault(line, []).append(label)
    if len(distinct) == 1:
        ((line, labels),) = distinct.items()
        if len(labels) == 1 or labels[0].startswith(("model ", "train")):
            return line
        return f"{line}\n\nin every use ({len(labels)}): " + ", ".join(f"`{x}`" for x in labels[:MAX_USES_SHOWN])
    out = []
    for line, labels in list(distinct.items())[:MAX_USES_SHOWN]:
        out.append(f"- in `{labels[0]}`" + (f" (and {len(labels) - 1} more)" if len(labels) > 1 else "") + f": {line}")
    if len(distinct) > MAX_USES_SHOWN:
        out.append(f"- ... and {len(distinct) - MAX_USES_SHOWN} more")
    return "\n".join(out)


def _binding_before(body: Body, name: str, old_line, old_statement, statement, tok: Token) -> Any:
    """The value `name` has where it is read (the binding before the statement) or bound (its own)."""
    best, anywhere = None, False
    for loc, bound, value in body.bindings:
        if bound != name:
            continue
        anywhere = True
        if old_statement is None:  # the line changed since the check: the last binding is the best guess
            best = value
            continue
        here = (loc.line, loc.col)
        target = old_statement == loc.line and _is_target(tok, statement)
        if here < (old_statement, statement[1]) or (target and here == (old_statement, statement[1])):
            best = value
    if best is None and (old_statement is None or not anywhere):  # a data field or a model output run for it
        best = body.env.get(name)
    return best


def _is_target(tok: Token, statement: Pos | None) -> bool:
    return statement is not None and (tok.line, tok.col) >= statement


def _statement_start(text: Text, tok: Token) -> Pos | None:
    """The start of the statement holding `tok`, from the outline: (line, col), or None."""
    items = outline(text)
    chain = enclosing(items, tok.start)
    if not chain:
        return None
    inner = chain[-1]
    best = None
    for child in _flatten(inner.children):
        if child.start <= tok.pos <= child.end:
            best = child.start
    return best


def _flatten(items: list[Item]) -> list[Item]:
    out = []
    for it in items:
        out.append(it)
        out += _flatten(it.children)
    return out


def _what_at(ctx: Context, tok: Token) -> str | None:
    records = _records_at(ctx, tok)
    return records[0][1].what if records else None


def _records_at(ctx: Context, tok: Token) -> list[tuple[Body, ir.LayerRecord]]:
    """The layer records of the stage or call starting at `tok` (a use per body that checked it)."""
    analysis = ctx.analysis
    if analysis is None or not analysis.facts:
        return []
    old = line_map(analysis, ctx.text).to_old(tok.line)
    if old is None:
        return []
    found = []
    for body in analysis.bodies:
        if body.stale or not same_file(body.path, analysis.path):
            continue
        last: dict[str, ir.LayerRecord] = {}
        for rec in body.records:
            if rec.loc.line == old and rec.loc.col == tok.col:
                last[rec.output] = rec
        found += [(body, rec) for rec in last.values()]
    return found


def _uses_at(ctx: Context, tok: Token) -> str | None:
    found = _records_at(ctx, tok)
    if not found:
        return None
    shown = []
    for body, rec in found:
        params = f"{rec.params:,} parameters" if rec.params else "no parameters"
        what = f" `{rec.module}`" if rec.module and not rec.module.isdigit() else ""
        shown.append((body.label, f"here{what}: `{rec.output}`, {params}"))
    return _per_use(shown)


def _kwarg_doc(ctx: Context, callee: str, name: str) -> str | None:
    params = _params_of(ctx, callee)
    for p in params or ():
        if p.name == name:
            default = "required" if p.required else f"default {dsl_value(p.default)}"
            return f"`{callee}` argument `{name}` ({default})" + (f": {p.doc}" if p.doc else "")
    return None


def _callee_of_kwarg(text: Text, tok: Token) -> str | None:
    """`Conv2d` for the `kernel` of `Conv2d(32, kernel=3)`."""
    opened = _open_call(text, tok.start)
    return opened[0] if opened else None


def _open_call(text: Text, offset: int) -> tuple[str, int] | None:
    """The callee of the innermost call whose parentheses hold `offset`, and the index of its `(`."""
    depth = 0
    i = text.code_index_before(offset)
    while i >= 0:
        tok = text.code[i]
        if tok.kind == "op" and tok.text in ")]}":
            depth += 1
        elif tok.kind == "op" and tok.text in "([{":
            if depth == 0:
                if tok.text != "(":
                    return None
                before = text.code[i - 1] if i > 0 else None
                if before is not None and before.kind == "name":
                    name = before.text
                    j = i - 2
                    while j >= 1 and text.code[j].text == "." and text.code[j - 1].kind == "name":
                        name = text.code[j - 1].text + "." + name
                        j -= 2
                    return name, i
                return None
            depth -= 1
        elif tok.kind == "op" and tok.text == "{" and depth == 0:
            return None
        i -= 1
    return None


def _params_of(ctx: Context, callee: str) -> tuple[Param, ...] | None:
    op = REGISTRY.get(callee)
    if op is not None:
        return op.params
    block = _block_named(ctx, callee)
    if block is not None:
        return tuple(
            Param(p.name, p.type, REQUIRED if p.default is None else _default_value(p.default)) for p in block.params
        )
    entry = _registry_entry(callee)
    if entry is not None:
        return tuple(getattr(entry[1], "params", ()))
    return None


def _default_value(expr: ast.Expr) -> Any:
    if isinstance(expr, (ast.Num, ast.Str, ast.Bool)):
        return expr.value
    if isinstance(expr, ast.Name):
        return _Raw(expr.id)
    return _Raw("...")


class _Raw(str):
    """A default written as the source writes it (a constant's name)."""


def _block_named(ctx: Context, name: str) -> ast.BlockDef | None:
    analysis = ctx.analysis
    if analysis is not None and analysis.scope is not None:
        found = analysis.scope.lookup_block(name)
        if found is not None and not found[0].is_model:
            return found[0]
    return None


def _model_named(ctx: Context, name: str) -> ir.ModuleIR | None:
    program = ctx.analysis.models if ctx.analysis is not None else None
    if program is None:
        return None
    return next((m for m in program.modules if m.kind == "model" and m.spec_name == name), None)


def _block_doc(ctx: Context, block: ast.BlockDef) -> str:
    params = ", ".join(
        f"{p.name}: {p.type}" + (f" = {_expr_text(p.default)}" if p.default is not None else "") for p in block.params
    )
    head = f"```dslc\nblock {block.name}({params})\n```"
    if block.doc:
        head += "\n\n" + block.doc.strip().split("\n")[0]
    uses = ctx.analysis.bodies_of(block.name) if ctx.analysis else []
    if uses:
        head += f"\n\nchecked for {len(uses)} distinct use{'s' if len(uses) != 1 else ''}"
    return head


def _model_doc(model: ir.ModuleIR) -> str:
    inputs = ", ".join(f"{p.name}: {p.type}" for p in model.inputs)
    outputs = ", ".join(f"{p.name}: {p.type}" for p in model.outputs)
    text = f"```dslc\nmodel {model.spec_name}({inputs}) -> ({outputs})\n```\n\n{model.param_count:,} parameters"
    if model.doc:
        text += "\n\n" + model.doc.strip().split("\n")[0]
    return text


def _expr_text(expr: ast.Expr) -> str:
    if isinstance(expr, ast.Num):
        return repr(expr.value)
    if isinstance(expr, (ast.Str, ast.Bool)):
        return dsl_value(expr.value)
    if isinstance(expr, ast.Name):
        return expr.id
    return "..."


# ---------------------------------------------------------------- completion


@dataclass
class Completion:
    label: str
    kind: str  # layer | block | function | variable | constant | keyword | field | property | module | value | type | file
    detail: str = ""
    documentation: str = ""
    insert: str | None = None  # plain text to insert (default: the label)
    snippet: str | None = None  # the same with placeholders, for clients that take snippets
    sort: str = ""


@dataclass
class Completions:
    items: list[Completion] = field(default_factory=list)
    start: int = 0  # the offsets the chosen item replaces (the word typed so far)
    end: int = 0


TOP_KEYWORDS = ("model", "block", "const", "import", "from", "train")
BODY_KEYWORDS = ("input", "output", "param", "if")
STAGE_KEYWORDS = ("repeat", "for", "if")
PARAM_TYPES = ("int", "float", "bool", "str")


def complete(analysis: Analysis | None, text: Text, offset: int) -> Completions:
    offset = max(0, min(offset, len(text.source)))
    word = text.word_at(offset)
    if word is not None and word.end < offset:
        word = None
    start = word.start if word is not None and word.start < offset else offset
    result = Completions(start=start, end=offset)
    inside = text.token_at(offset)
    if inside is not None and inside.kind == "comment" and inside.start < offset:
        return result
    if (
        inside is not None
        and inside.kind == "string"
        and inside.start < offset < inside.end + (not string_closed(inside))
    ):
        result.items = _import_paths(analysis, text, inside, offset, result)
        return result
    i = text.code_index_before(start)
    prev = text.code[i] if i >= 0 else None
    prev2 = text.code[i - 1] if i >= 1 else None
    ctx = context(analysis, text, offset)
    result.items = _items_for(ctx, text, start, prev, prev2)
    prefix = text.source[start:offset]
    if prefix:
        low = prefix.lower()
        result.items = [c for c in result.items if c.label.lower().startswith(low) or low in c.label.lower()]
        result.items.sort(
            key=lambda c: (not c.label.startswith(prefix), not c.label.lower().startswith(low), c.sort, c.label)
        )
    return result


def _items_for(ctx: Context, text: Text, start: int, prev: Token | None, prev2: Token | None) -> list[Completion]:
    kind = ctx.kind
    if prev is None or (kind is None and _statement_boundary(prev, start, text)):
        return [Completion(k, "keyword", sort="0") for k in TOP_KEYWORDS]
    if prev.text == ":" and prev2 is not None and prev2.kind == "name":
        before = _token_before(text, prev2)
        if before is not None and before.text in ("input", "param", "output"):
            return [Completion(d, "type", f"dtype {d}", sort="0") for d in DTYPES]
        if before is not None and before.text in ("(", ",") and _in_block_header(text, prev2):
            return [Completion(t, "type", sort="0") for t in PARAM_TYPES]
    if prev.text == "->" or (prev.text == ":" and _after_arrow(text, prev2)) or _stage_start(text, prev):
        return _stage_items(ctx)
    opened = _open_call(text, start)
    if opened is not None and prev.text in ("(", ","):
        return _kwarg_items(ctx, text, opened, start) + _expression_items(ctx, text, start)
    if prev.text == "=" and prev2 is not None and prev2.kind == "name" and kind == "train" and opened is None:
        setting = _train_setting_items(prev2.text)
        if setting is not None:
            return setting
    if prev.text == "[" and prev2 is not None and prev2.text == "=" and kind == "train":
        before = _token_before(text, prev2)
        if before is not None and before.text == "metrics":
            return _registry_items("metric")
    if prev.text == "," and kind == "train" and _in_metrics_list(text, start):
        return _registry_items("metric")
    if _statement_boundary(prev, start, text):
        if kind is None:
            return [Completion(k, "keyword", sort="0") for k in TOP_KEYWORDS]
        if kind == "train":
            return _train_statement_items(ctx)
        return [Completion(k, "keyword", sort="0") for k in BODY_KEYWORDS] + _expression_items(ctx, text, start)
    return _expression_items(ctx, text, start)


def _token_before(text: Text, tok: Token) -> Token | None:
    i = text.index(tok)
    return text.code[i - 1] if i > 0 else None


def _after_arrow(text: Text, name: Token | None) -> bool:
    if name is None or name.kind != "name":
        return False
    before = _token_before(text, name)
    return before is not None and before.text in ("->", "(") and _in_pipeline(text, before)


def _in_pipeline(text: Text, tok: Token) -> bool:
    if tok.text == "->":
        return True
    # `(` opens a group when it follows `->`, `name:` or `repeat N`
    before = _token_before(text, tok)
    if before is None:
        return False
    if before.text in ("->", ":"):
        return True
    twice = _token_before(text, before)
    return twice is not None and twice.text == "repeat"


def _stage_start(text: Text, prev: Token) -> bool:
    """After `repeat N`, or right after a group's `(`: the next word is a stage."""
    if prev.kind in ("number", "name"):
        before = _token_before(text, prev)
        return before is not None and before.text == "repeat"
    if prev.text == "(":
        return _in_pipeline(text, prev)
    if prev.text == "{":  # `-> for x in items {` and `-> if cond {`: the arm's stages
        i = text.index(prev) - 1
        depth = 0
        while i >= 0:
            tok = text.code[i]
            if tok.kind == "op" and tok.text in ")]":
                depth += 1
            elif tok.kind == "op" and tok.text in "([":
                depth -= 1
            elif depth == 0 and tok.kind == "keyword" and tok.text in ("for", "if", "elif", "else"):
                j = i - 1
                while j >= 0 and text.code[j].text in ("}", "else"):
                    j -= 1
                opener = text.code[j] if j >= 0 else None
                return opener is not None and (
                    opener.text in ("->", "(") or (opener.text == "{" and _stage_start(text, opener))
                )
            elif depth == 0 and tok.text in ("{", "}", "="):
                return False
            i -= 1
    return False


def _in_block_header(text: Text, tok: Token) -> bool:
    i = text.index(tok)
    depth = 0
    while i >= 0:
        t = text.code[i]
        if t.text == ")":
            depth += 1
        elif t.text == "(":
            if depth == 0:
                return i >= 2 and text.code[i - 2].text == "block"
            depth -= 1
        elif t.text in "{}":
            return False
        i -= 1
    return False


def _in_metrics_list(text: Text, offset: int) -> bool:
    i = text.code_index_before(offset)
    depth = 0
    while i >= 0:
        t = text.code[i]
        if t.text in ")]":
            depth += 1
        elif t.text in "([":
            if depth == 0:
                return t.text == "[" and i >= 2 and text.code[i - 2].text == "metrics"
            depth -= 1
        elif t.text in "{}":
            return False
        i -= 1
    return False


def _statement_boundary(prev: Token, start: int, text: Text) -> bool:
    """Whether the cursor starts a statement: after a brace, or on a later line than a finished one."""
    if prev.kind == "op" and prev.text in "{}":
        return True
    line, _ = text.position(start)
    if line <= prev.end_line:
        return False
    return not (prev.kind == "op" and prev.text not in ")]")


def _snippet(name: str, params: tuple[Param, ...]) -> tuple[str | None, str | None]:
    required = [p for p in params if p.required]
    if not required:
        return None, None
    placeholders = ", ".join(f"${{{i + 1}:{p.name}}}" for i, p in enumerate(required))
    return f"{name}(", f"{name}({placeholders})$0"


def _op_item(op: Op, key: str, sort: str) -> Completion:
    return _op_item_cached(key, sort)


@lru_cache(maxsize=1024)
def _op_item_cached(key: str, sort: str) -> Completion:
    op = REGISTRY[key]
    params = op.params
    insert, snippet = _snippet(key, params)
    kind = "layer" if op.category in ("layer", "shape", "activation") and key[:1].isupper() else "function"
    return Completion(
        key, kind, signature(key, params), op_doc(op, heading=False), insert=insert, snippet=snippet, sort=sort
    )


def _stage_items(ctx: Context) -> list[Completion]:
    items = []
    for key, op in REGISTRY.items():
        if op.train_only or (key != op.name and not key[:1].isupper() and op.name[:1].isupper()):
            continue  # losses and noise are a train section's; `relu` is listed as ReLU in a pipeline
        sort = "1" if op.category in ("layer", "activation", "shape") else "3"
        items.append(_op_item(op, key, sort))
    items += _block_items(ctx)
    items += _layer_instance_items(ctx)
    items += [Completion(k, "keyword", sort="4") for k in STAGE_KEYWORDS]
    return items


def _block_items(ctx: Context) -> list[Completion]:
    analysis = ctx.analysis
    found: dict[str, Completion] = {}
    if analysis is not None and analysis.scope is not None:
        for name, (block, _) in analysis.scope.blocks.items():
            if block.is_model:
                continue
            params = _params_of(ctx, name) or ()
            insert, snippet = _snippet(name, params)
            doc = (block.doc or "").strip().split("\n")[0]
            detail = (
                f"block {name}("
                + ", ".join(
                    f"{p.name}: {p.type}" + (f" = {_expr_text(p.default)}" if p.default is not None else "")
                    for p in block.params
                )
                + ")"
            )
            found[name] = Completion(name, "block", detail, doc, insert=insert, snippet=snippet, sort="0")
    for item in outline(ctx.text):  # blocks typed since the last check
        if item.kind == "block" and item.name not in found:
            found[item.name] = Completion(item.name, "block", f"block {item.name}{item.detail}", sort="0")
    for alias in analysis.scope.aliases if analysis is not None and analysis.scope is not None else {}:
        scope = analysis.scope.aliases[alias]
        for name, (block, _) in scope.blocks.items():
            if not block.is_model:
                found[f"{alias}.{name}"] = Completion(
                    f"{alias}.{name}", "block", f"block {name} from {alias}", sort="0"
                )
    return list(found.values())


def _layer_instance_items(ctx: Context) -> list[Completion]:
    found: dict[str, Completion] = {}
    for body in ctx.bodies:
        for rec in body.records:
            if rec.module and not rec.module.isdigit() and rec.module in _named_layers(ctx):
                found[rec.module] = Completion(
                    rec.module, "variable", f"layer {rec.module}: {rec.what} -> {rec.output}",
                    "reuse this layer (shared weights)", sort="2",
                )  # fmt: skip
    return list(found.values())


def _named_layers(ctx: Context) -> set[str]:
    """Names given to layers in the enclosing body's text (`conv1: Conv2d(...)`)."""
    top = ctx.top
    if top is None or top.body is None:
        return set()
    tokens = [t for t in ctx.text.code if top.body[0] < t.start and (top.body[1] is None or t.start < top.body[1])]
    names = set()
    for a, b, c in zip(tokens, tokens[1:], tokens[2:]):
        if a.text in ("->", "(") and b.kind == "name" and c.text == ":":
            names.add(b.text)
    return names


def _kwarg_items(ctx: Context, text: Text, opened: tuple[str, int], offset: int) -> list[Completion]:
    callee, paren = opened
    params = _params_of(ctx, callee)
    if not params:
        return []
    depth, given, positional, arg_start = 0, set(), 0, True
    tokens = text.code[paren + 1 :]
    for k, tok in enumerate(tokens):
        if tok.kind == "op" and tok.text in "([{":
            depth += 1
        elif tok.kind == "op" and tok.text in ")]}":
            if depth == 0:
                break
            depth -= 1
        elif depth == 0 and tok.text == ",":
            arg_start = True
            continue
        elif depth == 0 and arg_start:
            keyword = tok.kind == "name" and k + 1 < len(tokens) and tokens[k + 1].text == "="
            if keyword:
                given.add(tok.text)
            elif tok.start < offset:
                positional += 1
        arg_start = False
    items = []
    for n, p in enumerate(params):
        if p.name in given or n < positional:
            continue
        default = "required" if p.required else f"= {dsl_value(p.default)}"
        doc = p.doc + (f"\n\none of: {', '.join(dsl_value(c) for c in p.choices)}" if p.choices else "")
        items.append(
            Completion(
                f"{p.name}=", "property", f"{callee} {p.name} {default}", doc, insert=f"{p.name}=", sort=f"0{n:02d}"
            )
        )
    return items


def _train_setting_items(setting: str) -> list[Completion] | None:
    what = {"data": "data set", "optimizer": "optimizer", "schedule": "schedule"}.get(setting)
    return _registry_items(what) if what else None


def _registry_items(what: str) -> list[Completion]:
    registry = _training_registries()[what]
    items = []
    for name, entry in registry.items():
        params = tuple(getattr(entry, "params", ()))
        doc = _entry_doc(what, entry)
        items.append(Completion(name, "function", signature(name, params), doc, sort="0"))
    return items


def _train_statement_items(ctx: Context) -> list[Completion]:
    from dslc.training.check import ROOT_SETTINGS, STEP_SETTINGS

    in_step = any(it.kind == "step" for it in ctx.chain[1:])
    settings = STEP_SETTINGS if in_step else {**ROOT_SETTINGS, **STEP_SETTINGS}
    items = [
        Completion(k, "property", f"setting: {example}", insert=f"{k} = ", sort="0") for k, example in settings.items()
    ]
    items.append(Completion("step", "keyword", "step NAME { loss = ...  optimizer = ... }", insert="step ", sort="1"))
    items.append(Completion("group", "keyword", "group SUBMODULE { lr = ... }", insert="group ", sort="1"))
    return items + _expression_items(ctx, ctx.text, 0)


def _expression_items(ctx: Context, text: Text, offset: int) -> list[Completion]:
    """Names in scope, constants (each --set-able), functions; in a train section data fields, models, losses."""
    items: dict[str, Completion] = {}
    in_train = ctx.kind == "train"
    for body in ctx.bodies:
        for name, value in body.env.items():
            described = type_text(value)
            if described is not None and not name.startswith("_"):
                items.setdefault(name, Completion(name, "variable", described, sort="0"))
        for name, size in body.dims.items():
            items.setdefault(name, Completion(name, "variable", f"dimension {size}", sort="1"))
        for name, ttype in body.fields.items():
            items[name] = Completion(name, "field", f"data set field {ttype}", sort="0")
    if ctx.top is not None:
        for child in _flatten(ctx.top.children):  # names typed since the last check
            if child.kind in ("input", "output", "param", "tensor", "setting") and child.name not in items:
                if child.kind == "setting" and child.name in _settings_names():
                    continue
                items[child.name] = Completion(child.name, "variable", child.kind, sort="0")
    analysis = ctx.analysis
    if ctx.kind == "block" and analysis is not None and analysis.scope is not None:
        block = _block_named(ctx, ctx.top.name)
        for p in block.params if block is not None else []:
            items.setdefault(p.name, Completion(p.name, "variable", f"parameter {p.name}: {p.type}", sort="0"))
    for name, value in analysis.scope.consts.items() if analysis is not None and analysis.scope else []:
        items.setdefault(
            name,
            Completion(
                name, "constant", f"const {name} = {brief(value)}", f"--set {name}={_set_value(value)}", sort="1"
            ),
        )
    for item in outline(text):
        if item.kind == "const" and item.name not in items:
            items[item.name] = Completion(item.name, "constant", "const", sort="1")
    if in_train and analysis is not None and analysis.models is not None:
        for model in analysis.models.modules:
            if model.kind != "model":
                continue
            inputs = ", ".join(p.name for p in model.inputs)
            items.setdefault(model.spec_name, Completion(
                model.spec_name, "module", _model_doc(model).split("\n")[1], insert=f"{model.spec_name}(",
                snippet=f"{model.spec_name}(${{1:{inputs}}})$0", sort="1",
            ))  # fmt: skip
            for port in model.outputs:
                items.setdefault(
                    port.name, Completion(port.name, "variable", f"output of {model.spec_name}: {port.type}", sort="0")
                )
    for key, op in REGISTRY.items():
        if key[:1].isupper() and key.lower() in REGISTRY:
            continue  # `ReLU` is listed as `relu` among functions
        if op.category == "layer" or (op.train_only and not in_train):
            continue
        if op.category == "shape" and key[:1].isupper():
            continue
        items.setdefault(key, _op_item(op, key, "2" if op.category != "loss" else "1"))
    items.setdefault("range", Completion("range", "function", "range(stop) or range(start, stop, step)", sort="3"))
    return list(items.values())


def _settings_names() -> set[str]:
    from dslc.training.check import ROOT_SETTINGS, STEP_SETTINGS

    return set(ROOT_SETTINGS) | set(STEP_SETTINGS)


def _import_paths(analysis, text: Text, tok: Token, offset: int, result: Completions) -> list[Completion]:
    """`import "` ...: the .model files next to the buffer."""
    before = _token_before(text, tok) if tok in text.code else None
    if before is None or before.text not in ("import", "from"):
        return []
    if analysis is None:
        return []
    typed = text.source[tok.start + 1 : offset]
    result.start = tok.start + 1
    folder = Path(analysis.path).parent
    try:
        files = sorted(p.name for p in folder.glob("*.model") if not same_file(str(p), analysis.path))
    except OSError:
        return []
    return [Completion(f, "file", insert=f, sort="0") for f in files if f.startswith(typed)]


# ---------------------------------------------------------------- definition


@dataclass
class Location:
    path: str
    start: Pos
    end: Pos


def definition(analysis: Analysis | None, text: Text, offset: int) -> list[Location]:
    tok = text.word_at(offset)
    here = text.token_at(offset)
    if here is not None and here.kind == "string" and analysis is not None:
        before = _token_before(text, here) if here in text.code else None
        if before is not None and before.text in ("import", "from"):
            target = Path(analysis.path).parent / here.text.strip("\"'")
            return [Location(str(target), (1, 1), (1, 1))] if target.is_file() else []
    if tok is None or tok.kind != "name":
        return []
    name = tok.text
    ctx = context(analysis, text, offset)
    found = _definition_from_facts(ctx, tok, name)
    if found:
        return found
    for item in outline(text):  # the current text: blocks, models and constants typed since the last check
        if item.name == name and item.kind in ("block", "model", "const"):
            return [Location(analysis.path if analysis else "", item.name_start, item.name_end)]
    if ctx.top is not None:
        for child in _flatten(ctx.top.children):
            declared = child.name == name and child.kind in ("input", "output", "param", "tensor", "setting")
            if declared and (child.start < tok.pos or child.name_start == tok.pos):
                return [Location(analysis.path if analysis else "", child.name_start, child.name_end)]
    return []


def _definition_from_facts(ctx: Context, tok: Token, name: str) -> list[Location]:
    analysis = ctx.analysis
    if analysis is None or analysis.scope is None:
        return []
    found = analysis.scope.lookup_block(name)
    if found is not None:
        block, scope = found
        return [_name_location(scope.path, scope.program.source, block.loc, name)]
    for scope in analysis.scopes:
        if name in scope.const_locs and (scope is analysis.scope or name in analysis.scope.consts):
            return [_name_location(scope.path, scope.program.source, scope.const_locs[name], name)]
    program = analysis.program
    if ctx.kind == "train" and program is not None:
        for model in program.modules:
            if model.kind == "model" and model.spec_name == name:
                return [_name_location(analysis.path, analysis.source, model.loc, name)]
        for model in program.modules:
            if model.kind == "model":
                for port in model.outputs:
                    if port.name == name:
                        loc = _output_loc(analysis, model.spec_name, name)
                        if loc is not None:
                            return [loc]
    lmap = line_map(analysis, ctx.text)
    for body in ctx.bodies:
        for rec in body.records:  # a reused layer: where it is named
            if rec.module == name and _named_layers(ctx) and name in _named_layers(ctx):
                loc = lmap.loc_to_new(rec.loc)
                if loc is not None:
                    return [_stage_name_location(ctx.text, analysis.path, loc, name)]
    return []


def _output_loc(analysis: Analysis, model: str, output: str) -> Location | None:
    for item in analysis.scope.program.items:
        if isinstance(item, ast.BlockDef) and item.name == model:
            for stmt in _all_statements(item.body):
                if isinstance(stmt, ast.OutputDecl) and stmt.name == output:
                    return _name_location(analysis.path, analysis.source, stmt.loc, output)
    return None


def _all_statements(stmts: list[ast.Stmt]) -> list[ast.Stmt]:
    out = []
    for s in stmts:
        out.append(s)
        if isinstance(s, ast.If):
            for _, body in s.branches:
                out += _all_statements(body)
            out += _all_statements(s.orelse)
    return out


def _name_location(path: str, source: str, loc: Loc, name: str) -> Location:
    """The name's token in the statement at `loc` (`block NAME`, `const NAME`), else the statement's start."""
    from dslc.lsp.text import scan

    text = scan(source)
    start = text.offset(loc.line, loc.col)
    i = text.code_index_before(start + 1)
    for tok in text.code[max(i, 0) : max(i, 0) + 6]:
        if tok.kind == "name" and tok.text == name:
            return Location(path, tok.pos, tok.end_pos)
    return Location(path, (loc.line, loc.col), (loc.line, loc.col))


def _stage_name_location(text: Text, path: str, loc: Loc, name: str) -> Location:
    start = text.offset(loc.line, loc.col)
    i = text.code_index_before(start)
    for tok in text.code[max(i - 2, 0) : i + 1]:
        if tok.kind == "name" and tok.text == name:
            return Location(path, tok.pos, tok.end_pos)
    return Location(path, (loc.line, loc.col), (loc.line, loc.col))


# ---------------------------------------------------------------- inlay hints


@dataclass
class Hint:
    pos: Pos  # where the label goes: the end of the line's code
    label: str
    tooltip: str = ""


def inlay_hints(analysis: Analysis | None, text: Text, first_line: int = 1, last_line: int | None = None) -> list[Hint]:
    """The output type at the end of each pipeline line (and of each one-line tensor statement)."""
    if analysis is None or not analysis.facts:
        return []
    last_line = last_line or len(text.line_starts)
    lmap = line_map(analysis, text)
    ends: dict[int, dict[str, list[tuple[tuple[int, int], str, str]]]] = {}  # line -> body label -> [(span, out, tip)]
    for body in analysis.bodies:
        if body.stale or not same_file(body.path, analysis.path):
            continue
        per_line: dict[int, tuple[tuple[int, int], str, str]] = {}
        for rec in body.records:
            end_line = rec.loc.end_line or rec.loc.line
            span = (rec.loc.end_col or 0, -rec.loc.line * 10000 - rec.loc.col)  # the latest end, then the widest
            tip = f"{rec.what}: {rec.params:,} parameters" if rec.params else rec.what
            if end_line not in per_line or span >= per_line[end_line][0]:
                per_line[end_line] = (span, rec.output, tip)
        for loc, _name, value in body.bindings:
            end_line = loc.end_line or loc.line
            if end_line in per_line or not isinstance(value, ir.Expr) or _declaration(analysis, loc):
                continue
            per_line[end_line] = ((0, 0), type_text(value) or "", "")
        for line, entry in per_line.items():
            ends.setdefault(line, {}).setdefault(body.label, []).append(entry)
    hints = []
    lines = text.lines
    for old_line, by_body in sorted(ends.items()):
        line = lmap.to_new(old_line)
        if line is None or not first_line <= line <= last_line:
            continue
        outputs = []
        for entries in by_body.values():
            out = entries[-1][1]
            if out and out not in outputs:
                outputs.append(out)
        if not outputs:
            continue
        label = outputs[0] if len(outputs) == 1 else f"{outputs[0]} (and {len(outputs) - 1} more)"
        tip = next(iter(by_body.values()))[-1][2]
        if len(by_body) > 1:
            tip = "\n".join(f"{b}: {e[-1][1]}" for b, e in list(by_body.items())[:MAX_USES_SHOWN])
        hints.append(Hint((line, _code_end(text, lines, line)), label, tip))
    return hints


def _declaration(analysis: Analysis, loc: Loc) -> bool:
    line = analysis.program_lines[loc.line - 1] if loc.line <= len(analysis.program_lines) else ""
    return line[loc.col - 1 :].startswith(("input ", "param "))


def _code_end(text: Text, lines: list[str], line: int) -> int:
    """The column after the line's last code character (before a trailing comment)."""
    start = text.line_starts[line - 1]
    end = start + len(lines[line - 1])
    last = start
    for tok in text.code[max(text.code_index_before(start), 0) :]:
        if tok.start >= end:
            break
        if tok.end > start:
            last = max(last, min(tok.end, end))
    return last - start + 1
