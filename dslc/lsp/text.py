"""Tokens and an outline of any text, finished or half-typed: what an editor needs between two checks.

The parser refuses a file at its first syntax error, and while someone types that is most of the time.
This scanner never refuses: an unterminated string runs to the end of its line (or of the file, for
`\"\"\"`), an unknown character is an `error` token. Positions are 1-based lines and code-point columns,
as `dslc.errors.Loc` has them; lines end at `\\n` only, as the lexer counts them.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

from dslc.parser import KEYWORDS

_TOKEN = re.compile(
    r'''(?P<string>"""(?:[^"\\]|\\.|"(?!""))*(?:"""|\Z)|"(?:[^"\\\n]|\\.)*"?|'(?:[^'\\\n]|\\.)*'?)'''
    r"|(?P<comment>#[^\n]*)"
    r"|(?P<number>(?:[0-9][0-9_]*)?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>->|\*\*|//|==|!=|<=|>=|\.\.\.|[-+*/%@<>=()\[\]{},:.])"
    r"|(?P<space>\s+)"
    r"|(?P<error>.)",
    re.S,
)
KEYWORD_SET = frozenset(KEYWORDS)
OPEN, CLOSE = "([{", ")]}"


class Token(NamedTuple):
    kind: str  # name | keyword | number | string | comment | op | error
    text: str
    start: int  # offsets into the text
    end: int
    line: int
    col: int
    end_line: int
    end_col: int  # the column after the last character, as Loc.end_col

    @property
    def pos(self) -> tuple[int, int]:
        return (self.line, self.col)

    @property
    def end_pos(self) -> tuple[int, int]:
        return (self.end_line, self.end_col)


class Text:
    """A buffer's text with its tokens (comments included), line starts and offsets."""

    def __init__(self, source: str, previous: Text | None = None):
        """`previous`, the text before an edit, lets the tokens before the edit be kept rather than found again."""
        self.source = source
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", source)]
        self.tokens: list[Token] = []
        line, line_start, pos = 1, 0, 0
        if previous is not None:
            same = _common_prefix(previous.source, source) - 3  # a token ending near the edit may change
            keep = bisect.bisect_left(previous._all_ends, same) if same > 0 else 0
            if keep:
                self.tokens = previous.tokens[:keep]
                last = self.tokens[-1]
                line, line_start, pos = last.end_line, last.end - last.end_col + 1, last.end
        for match in _TOKEN.finditer(source, pos):
            kind, value, start = match.lastgroup, match.group(), match.start()
            newlines = value.count("\n")
            last_start = start + value.rfind("\n") + 1 if newlines else line_start
            if kind != "space":
                if kind == "name" and value in KEYWORD_SET:
                    kind = "keyword"
                col = start - line_start + 1
                end_col = match.end() - last_start + 1 if newlines else col + len(value)
                self.tokens.append(Token(kind, value, start, match.end(), line, col, line + newlines, end_col))
            line, line_start = line + newlines, last_start
        self._all_ends = [t.end for t in self.tokens]
        self.code = [t for t in self.tokens if t.kind != "comment"]
        self._starts = [t.start for t in self.code]
        self._all_starts = [t.start for t in self.tokens]
        self._outline: list[Item] | None = None

    @property
    def lines(self) -> list[str]:
        return self.source.split("\n")

    def position(self, offset: int) -> tuple[int, int]:
        """(line, column) of an offset, 1-based."""
        line = bisect.bisect_right(self.line_starts, offset) - 1
        return line + 1, offset - self.line_starts[line] + 1

    def offset(self, line: int, col: int) -> int:
        """The offset of a 1-based (line, column), clamped to the text."""
        if line < 1:
            return 0
        if line > len(self.line_starts):
            return len(self.source)
        start = self.line_starts[line - 1]
        end = self.line_starts[line] - 1 if line < len(self.line_starts) else len(self.source)
        return min(start + max(col, 1) - 1, end)

    def code_index_before(self, offset: int) -> int:
        """The index in `code` of the last token starting before `offset` (-1 if none)."""
        return bisect.bisect_left(self._starts, offset) - 1

    def index(self, tok: Token) -> int:
        """The index of a code token in `code`."""
        return bisect.bisect_left(self._starts, tok.start)

    def token_at(self, offset: int) -> Token | None:
        """The token under the cursor: the one containing `offset`, or ending just at it (a word being typed)."""
        i = bisect.bisect_right(self._all_starts, offset) - 1
        for j in (i, i - 1):
            if 0 <= j < len(self.tokens) and self.tokens[j].start <= offset <= self.tokens[j].end:
                tok = self.tokens[j]
                if offset == tok.end and tok.kind not in ("name", "keyword") and j == i - 1:
                    continue
                return tok
        return None

    def word_at(self, offset: int) -> Token | None:
        """The name or keyword under (or just before) the cursor."""
        i = self.code_index_before(offset + 1)
        for j in (i, i - 1):
            if 0 <= j < len(self.code):
                tok = self.code[j]
                if tok.kind in ("name", "keyword") and tok.start <= offset <= tok.end:
                    return tok
        return None


@dataclass
class Item:
    """An outline entry: a model, block, const, import or train section, a step or section inside a train
    section, or an input, output or named tensor of a body."""

    kind: str  # model | block | const | import | train | step | section | input | output | param | tensor | setting
    name: str
    start: tuple[int, int]
    end: tuple[int, int]
    name_start: tuple[int, int]
    name_end: tuple[int, int]
    detail: str = ""
    children: list[Item] = field(default_factory=list)
    body: tuple[int, int | None] | None = None  # offsets of `{` and its `}` (None: not closed yet)

    def contains(self, offset: int) -> bool:
        return self.body is not None and self.body[0] < offset and (self.body[1] is None or offset <= self.body[1])


@lru_cache(maxsize=16)
def scan(source: str) -> Text:
    return Text(source)


def _common_prefix(a: str, b: str) -> int:
    """The length of the longest common prefix, found by halving (string comparisons run in C)."""
    lo, hi = 0, min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def outline(text: Text) -> list[Item]:
    """The items of a file, found by tokens and braces alone (so a half-typed file has one too)."""
    if text._outline is None:
        text._outline = _outline(text)
    return text._outline


def _outline(text: Text) -> list[Item]:
    tokens = text.code
    matching = _match_brackets(tokens)
    items: list[Item] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if tok.kind == "keyword" and tok.text in ("model", "block") and nxt is not None and nxt.kind == "name":
            item, i = _body_item(text, tokens, matching, i, tok.text, nxt)
            items.append(item)
            continue
        if tok.kind == "keyword" and tok.text == "train":
            name_tok = nxt if nxt is not None and nxt.kind == "name" else tok
            item, i = _body_item(text, tokens, matching, i, "train", name_tok)
            item.name = "train" if name_tok is tok else f"train {name_tok.text}"
            items.append(item)
            continue
        if tok.kind == "keyword" and tok.text == "const" and nxt is not None and nxt.kind == "name":
            end = _statement_end(tokens, matching, i + 1)
            items.append(_leaf("const", nxt.text, tok, tokens[end], nxt))
            i = end + 1
            continue
        if tok.kind == "keyword" and tok.text in ("import", "from") and nxt is not None and nxt.kind == "string":
            end = _statement_end(tokens, matching, i + 1)
            items.append(_leaf("import", nxt.text, tok, tokens[end], nxt))
            i = end + 1
            continue
        i = matching.get(i, i) + 1 if tok.text in OPEN else i + 1
    return items


def balanced(text: Text) -> bool:
    """Whether every bracket closes in order and every string ends: a quick test before parsing."""
    stack: list[str] = []
    for tok in text.code:
        if tok.kind == "error" or (tok.kind == "string" and not string_closed(tok)):
            return False
        if tok.kind == "op" and tok.text in OPEN:
            stack.append(tok.text)
        elif tok.kind == "op" and tok.text in CLOSE and (not stack or OPEN.index(stack.pop()) != CLOSE.index(tok.text)):
            return False
    return not stack


_CLOSED_STRING = re.compile(r'''"""(?:[^"\\]|\\.|"(?!""))*"""|"(?:[^"\\\n]|\\.)*"''' + r"|'(?:[^'\\\n]|\\.)*'", re.S)


def string_closed(tok: Token) -> bool:
    return _CLOSED_STRING.fullmatch(tok.text) is not None


def _match_brackets(tokens: list[Token]) -> dict[int, int]:
    """Index of each opening bracket -> index of its closing one (unclosed ones are absent)."""
    stack: list[int] = []
    pairs: dict[int, int] = {}
    for i, tok in enumerate(tokens):
        if tok.kind != "op":
            continue
        if tok.text in OPEN:
            stack.append(i)
        elif tok.text in CLOSE:
            while stack and OPEN.index(tokens[stack[-1]].text) != CLOSE.index(tok.text):
                stack.pop()  # an unclosed bracket inside: it ends here
            if stack:
                pairs[stack.pop()] = i
    return pairs


_STARTS = {"model", "block", "const", "import", "from", "train"}


def _statement_end(tokens: list[Token], matching: dict[int, int], i: int) -> int:
    """The last token of a top-level statement starting before `i`: up to the next item keyword."""
    last = i
    j = i
    while j < len(tokens):
        tok = tokens[j]
        if tok.kind == "keyword" and tok.text in _STARTS and j > i:
            break
        if tok.text == "}" and tok.kind == "op":
            break
        last = matching.get(j, j) if tok.text in OPEN and tok.kind == "op" else j
        j = last + 1
    return min(last, len(tokens) - 1)


def _leaf(kind: str, name: str, first: Token, last: Token, name_tok: Token) -> Item:
    return Item(kind, name, first.pos, last.end_pos, name_tok.pos, name_tok.end_pos)


def _body_item(text: Text, tokens, matching, i: int, kind: str, name_tok: Token) -> tuple[Item, int]:
    """A model, block or train section: its `{ ... }` and the entries inside."""
    j = i + 1
    while j < len(tokens) and not (tokens[j].kind == "op" and tokens[j].text == "{"):
        if tokens[j].kind == "keyword" and tokens[j].text in _STARTS and j > i + 1:
            break
        j = matching.get(j, j) + 1 if tokens[j].text in OPEN and tokens[j].kind == "op" else j + 1
    detail = ""
    if kind == "block":
        header = text.source[tokens[i + 1].end : tokens[j].start if j < len(tokens) else len(text.source)]
        detail = " ".join(header.split())
    if j >= len(tokens) or tokens[j].text != "{":
        last = tokens[min(j, len(tokens)) - 1]
        return Item(kind, name_tok.text, tokens[i].pos, last.end_pos, name_tok.pos, name_tok.end_pos, detail), j
    close = matching.get(j)
    last = tokens[close] if close is not None else tokens[-1]
    body = (tokens[j].start, tokens[close].start if close is not None else None)
    item = Item(kind, name_tok.text, tokens[i].pos, last.end_pos, name_tok.pos, name_tok.end_pos, detail, body=body)
    end = close if close is not None else len(tokens) - 1
    item.children = _children(tokens, matching, j + 1, end, kind)
    return item, end + 1


def _children(tokens: list[Token], matching, i: int, end: int, parent: str) -> list[Item]:
    """Entries of a body between token indices i and end: declarations, named tensors, steps."""
    found: list[Item] = []
    while i < end:
        tok = tokens[i]
        nxt = tokens[i + 1] if i + 1 < end else None
        if (
            tok.kind == "keyword"
            and tok.text in ("input", "output", "param")
            and nxt is not None
            and nxt.kind == "name"
        ):
            stop = _line_end(tokens, matching, i, end)
            found.append(_leaf(tok.text, nxt.text, tok, tokens[stop], nxt))
            i = stop + 1
            continue
        if parent == "train" and tok.kind == "name" and nxt is not None and (nxt.text == "{" or nxt.kind == "name"):
            brace = i + 1 if nxt.text == "{" else i + 2
            if brace < end and tokens[brace].text == "{":
                close = matching.get(brace, end)
                kind = "step" if tok.text == "step" else "section"
                name = nxt.text if nxt.kind == "name" else tok.text
                label = name if kind == "step" else f"{tok.text} {name}" if nxt.kind == "name" else tok.text
                item = Item(kind, label, tok.pos, tokens[min(close, end)].end_pos, nxt.pos, nxt.end_pos)
                item.body = (tokens[brace].start, tokens[close].start if brace in matching else None)
                item.children = _children(tokens, matching, brace + 1, min(close, end), "train")
                found.append(item)
                i = min(close, end) + 1
                continue
        if tok.kind == "name" and nxt is not None and (nxt.text == "=" or nxt.text == ","):
            names, j = [tok], i + 1
            while j + 1 < end and tokens[j].text == "," and tokens[j + 1].kind == "name":
                names.append(tokens[j + 1])
                j += 2
            if j < end and tokens[j].text == "=":
                stop = _line_end(tokens, matching, j, end)
                kind = "setting" if parent == "train" else "tensor"
                for name_tok in names:
                    found.append(_leaf(kind, name_tok.text, tok, tokens[stop], name_tok))
                i = stop + 1
                continue
        if tok.kind == "op" and tok.text in OPEN:
            close = matching.get(i, end)
            if tok.text == "{":  # an if's arm: its declarations belong to the body
                found += _children(tokens, matching, i + 1, min(close, end), parent)
            i = close + 1
            continue
        i += 1
    return found


def _line_end(tokens: list[Token], matching, i: int, end: int) -> int:
    """The last token of the statement starting at i: the next statement starts on a later line with a name
    or keyword that is not a continuation (`->`, an operator or a bracket keep a statement going)."""
    last = i
    j = i + 1
    while j < end:
        tok, prev = tokens[j], tokens[last]
        if tok.line > prev.end_line and _starts_statement(tok, prev):
            break
        if tok.kind == "op" and tok.text == "}":
            break
        last = matching.get(j, j) if tok.kind == "op" and tok.text in OPEN else j
        last = min(last, end - 1) if last >= end else last
        j = last + 1
    return last


def _starts_statement(tok: Token, prev: Token) -> bool:
    if prev.kind == "op" and prev.text not in CLOSE:
        return False  # `->`, `=`, `,` or an operator ends the previous line: the statement goes on
    if tok.kind == "keyword":
        return tok.text in ("input", "output", "param", "if", "tie")
    return tok.kind == "name"


def enclosing(items: list[Item], offset: int) -> list[Item]:
    """The items whose bodies contain `offset`, outermost first."""
    chain: list[Item] = []
    level = items
    while True:
        inner = next((it for it in level if it.contains(offset)), None)
        if inner is None:
            return chain
        chain.append(inner)
        level = inner.children
