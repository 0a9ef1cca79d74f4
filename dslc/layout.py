"""A small pretty-printer for `dslc fmt`: documents of text, breaks, groups, fills and indents, laid out
at a line width (in the manner of Wadler's "prettier printer" and Prettier's printer).

* `Text(s, src)`: text; `src` is the source line of its first character (the formatter places comments by it).
* `Break(flat, hard)`: a line break, written as `flat` when its group stays on one line; a hard break
  always breaks (and so do the groups around it).
* `Group(parts)`: its own breaks all stay flat if the group fits on the line (up to the next break
  after it), else they all break; groups inside decide for themselves.
* `Fill(parts)`: items and breaks in turn (item, break, item, ...), each break decided on its own: an
  item goes on the line if it fits there; else on a new line if it fits on one; else, when not even a
  line of its own holds it, it stays and breaks inside. After an item that took several lines the
  next break breaks.
* `Indent(parts)`: lines that break inside start one level deeper than the line where it began.

A list is the concatenation of its parts. `render` gives the lines as (level, text, src): the level is
relative to the first line's, and src is the source line of the line's first text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FLAT, BREAK = 0, 1
INDENT_WIDTH = 4


@dataclass
class Text:
    text: str
    src: int | None = None


@dataclass
class Break:
    flat: str = " "
    hard: bool = False


@dataclass
class Group:
    parts: list[Any]
    hard: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.hard = has_hard(self.parts)


@dataclass
class Fill:
    parts: list[Any]  # item, Break, item, Break, ..., item
    hard: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.hard = has_hard(self.parts)


@dataclass
class Indent:
    parts: list[Any]
    hard: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.hard = has_hard(self.parts)


@dataclass
class _FillNext:
    """The printer's bookmark in a fill: the break before item `index`, and the line the previous item began on."""

    fill: Fill
    index: int
    began: int


def has_hard(doc: Any) -> bool:
    if isinstance(doc, Break):
        return doc.hard
    if isinstance(doc, (Group, Fill, Indent)):
        return doc.hard
    if isinstance(doc, list):
        return any(has_hard(d) for d in doc)
    return False


def flat(doc: Any) -> str:
    """The document on one line (hard breaks as their flat text)."""
    if isinstance(doc, Text):
        return doc.text
    if isinstance(doc, str):
        return doc
    if isinstance(doc, Break):
        return doc.flat
    if isinstance(doc, (Group, Fill, Indent)):
        return flat(doc.parts)
    return "".join(flat(d) for d in doc)


def render(doc: Any, base: int, width: int) -> list[tuple[int, str, int | None]]:
    """The lines of `doc` laid out at `width` columns, its first line at indentation level `base`."""
    return _Printer(base, width).run(doc)


class _Printer:
    def __init__(self, base: int, width: int):
        self.base = base
        self.width = width
        self.lines: list[tuple[int, str, int | None]] = []
        self.parts: list[str] = []
        self.level = 0  # the current line's level, relative to base
        self.column = base * INDENT_WIDTH
        self.src: int | None = None
        self.last_src: int | None = None

    # ------------------------------------------------------------ output

    def text(self, value: str, src: int | None) -> None:
        if self.src is None and src is not None:  # an empty text can mark where a line starts (a bare `:` slice)
            self.src = src
        if not value:
            return
        self.parts.append(value)
        self.column += len(value)

    def newline(self, level: int) -> None:
        self.flush()
        self.level = level
        self.column = (self.base + level) * INDENT_WIDTH

    def flush(self) -> None:
        text = "".join(self.parts).rstrip()
        src = self.src if self.src is not None else self.last_src
        self.lines.append((self.level, text, src))
        self.last_src = src
        self.parts, self.src = [], None

    def run(self, doc: Any) -> list[tuple[int, str, int | None]]:
        stack: list[tuple[int, int, Any]] = [(0, BREAK, doc)]
        while stack:
            ind, mode, d = stack.pop()
            if isinstance(d, Text):
                self.text(d.text, d.src)
            elif isinstance(d, str):
                self.text(d, None)
            elif isinstance(d, list):
                stack.extend((ind, mode, x) for x in reversed(d))
            elif isinstance(d, Break):
                if mode == FLAT and not d.hard:
                    self.text(d.flat, None)
                else:
                    self.newline(ind)
            elif isinstance(d, Indent):
                stack.append((self.level + 1 if mode == BREAK else ind, mode, d.parts))
            elif isinstance(d, Group):
                here = self.level
                if (
                    mode == FLAT
                    and not d.hard
                    or not d.hard
                    and self.fits([(here, FLAT, d.parts)], stack, self.width - self.column)
                ):
                    stack.append((here, FLAT, d.parts))
                else:
                    stack.append((here, BREAK, d.parts))
            elif isinstance(d, Fill):
                if mode == FLAT and not d.hard:
                    stack.append((ind, FLAT, d.parts))
                    continue
                if len(d.parts) > 1:
                    stack.append((ind, BREAK, _FillNext(d, 2, len(self.lines))))
                stack.append((ind, BREAK, d.parts[0]))
            elif isinstance(d, _FillNext):
                self.fill_next(ind, d, stack)
        self.flush()
        return self.lines

    def fill_next(self, ind: int, bookmark: _FillNext, stack: list) -> None:
        parts, i = bookmark.fill.parts, bookmark.index
        sep, item = parts[i - 1], parts[i]
        last = i + 1 >= len(parts)
        rest = stack if last else []  # the last item is followed by what follows the fill
        hard = has_hard(item)
        if sep.hard or len(self.lines) > bookmark.began:  # the author's break, or after an item of several lines
            same = False
        elif not hard and self.fits([(ind, FLAT, [sep.flat, item])], rest, self.width - self.column):
            same = True
        elif not hard and self.fits([(ind, FLAT, item)], rest, self.width - (self.base + ind) * INDENT_WIDTH):
            same = False
        else:  # no line holds it: it breaks inside, and starts here if its first line fits
            same = self.fits([(ind, BREAK, [sep.flat, item])], [], self.width - self.column)
        if not same:
            self.newline(ind)
        if not last:
            stack.append((ind, BREAK, _FillNext(bookmark.fill, i + 2, len(self.lines))))
        stack.append((ind, BREAK, [sep.flat, item] if same else item))

    def fits(self, cmds: list, rest: list, room: int) -> bool:
        """Whether `cmds`, and `rest` up to its next line break, fit in `room` columns."""
        todo = list(reversed(cmds))
        r = len(rest)
        while room >= 0:
            if not todo:
                if r == 0:
                    return True
                r -= 1
                todo.append(rest[r])
                continue
            ind, mode, d = todo.pop()
            if isinstance(d, Text):
                room -= len(d.text)
            elif isinstance(d, str):
                room -= len(d)
            elif isinstance(d, list):
                todo.extend((ind, mode, x) for x in reversed(d))
            elif isinstance(d, Break):
                if mode == BREAK or d.hard:
                    return True
                room -= len(d.flat)
            elif isinstance(d, (Group, Fill, Indent)):
                todo.append((ind, BREAK if d.hard else mode, d.parts))
            elif isinstance(d, _FillNext):
                return True  # the fill's next break may break
        return False
