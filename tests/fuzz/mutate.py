"""Deterministic mutations of the shipped specs.

A mutant is rebuilt exactly from its key `KIND:SEED:INDEX` (`mutant_from_key`): the base spec and
every random choice come from a generator seeded with that key alone, so the kinds selected for a
run do not change what a given key produces. Tokens come from a small regex of our own, not from
dslc's lexer, so that a lexer bug cannot shape the mutants meant to find it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BASE_PATTERNS = ("specs/*.model", "dslc/templates/*.model")

TOKEN_RE = re.compile(
    r'''(?P<string>"""(?:[^"\\]|\\.|"(?!""))*"""|"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
      |(?P<comment>\#[^\n]*)
      |(?P<number>\d[\d_]*(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)
      |(?P<name>[A-Za-z_]\w*)
      |(?P<space>\s+)
      |(?P<punct>->|\*\*|//|==|!=|<=|>=|\.\.\.|.)''',
    re.VERBOSE | re.DOTALL | re.ASCII,
)


@dataclass(frozen=True)
class Token:
    kind: str  # string, comment, number, name, space or punct
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Mutant:
    kind: str
    seed: int
    index: int
    base: str  # the spec it was made from, relative to the repository
    detail: str  # what was changed, and where
    data: bytes = field(repr=False)

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.seed}:{self.index}"

    def describe(self) -> str:
        return f"{self.key} {self.base}: {self.detail}"


# ------------------------------------------------------------------ text helpers


def tokenize(text: str) -> list[Token]:
    return [Token(m.lastgroup or "punct", m.start(), m.end(), m.group()) for m in TOKEN_RE.finditer(text)]


def significant(tokens: list[Token]) -> list[Token]:
    return [t for t in tokens if t.kind not in ("space", "comment")]


def decode(data: bytes) -> str:
    """Bytes to text and back without loss, even for invalid UTF-8 (minimised mutants may hold any bytes)."""
    return data.decode("utf-8", "surrogateescape")


def encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def replace(text: str, start: int, end: int, new: str) -> str:
    return text[:start] + new + text[end:]


def where(text: str, offset: int) -> str:
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return f"{line}:{col}"


def shorten(text: str, limit: int = 40) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else f"{shown[: limit - 12]}...<{len(text)} chars>"


def pick(rng: random.Random, tokens: list[Token], kinds: tuple[str, ...] = ()) -> Token | None:
    candidates = [t for t in tokens if not kinds or t.kind in kinds]
    return rng.choice(candidates) if candidates else None


def pick_sized(rng: random.Random, sizes: dict[int, int]) -> int:
    """A size drawn with the given weights: the largest inputs are the slowest, so they are the rarest."""
    return rng.choices(list(sizes), weights=list(sizes.values()))[0]


def item_start(text: str) -> int:
    """Offset of the first top-level item (after the file docstring): where a new `const` can go."""
    match = re.search(r"^(?:const|model|block|train|import|from)\b", text, re.MULTILINE)
    return match.start() if match else len(text)


def statement_starts(text: str) -> list[tuple[int, str]]:
    """(offset, indentation) of each statement line inside a model or block body."""
    found = []
    for header in re.finditer(r"^(?:model|block)\b[^{]*\{", text, re.MULTILINE):
        closing = re.search(r"^\}", text[header.end() :], re.MULTILINE)
        body_end = header.end() + (closing.start() if closing else len(text))
        statement = re.compile(r"^([ \t]+)(?:input\b|output\b|\w+(?:\s*,\s*\w+)*\s*=[^=])", re.MULTILINE)
        found += [(m.start(), m.group(1)) for m in statement.finditer(text, header.end(), body_end)]
    return found


def input_names(text: str) -> list[tuple[int, str, str]]:
    """(end of line, indentation, name) of each `input NAME:` declaration."""
    found = []
    for m in re.finditer(r"^([ \t]+)input\s+(\w+)\s*:[^\n]*\n", text, re.MULTILINE):
        found.append((m.end(), m.group(1), m.group(2)))
    return found


def expression_slot(text: str, rng: random.Random) -> tuple[int, int, str]:
    """(start, end, what) of a spot that holds an expression: a number if there is one, else a name after `=`."""
    tokens = significant(tokenize(text))
    number = pick(rng, tokens, ("number",))
    if number:
        return number.start, number.end, f"number {number.text!r} at {where(text, number.start)}"
    after_equals = [b for a, b in zip(tokens, tokens[1:]) if a.text == "=" and b.kind == "name"]
    if after_equals:
        tok = rng.choice(after_equals)
        return tok.start, tok.end, f"name {tok.text!r} at {where(text, tok.start)}"
    return len(text), len(text), "end of file"


# ------------------------------------------------------------------ the mutation kinds

Mutator = Callable[[str, random.Random], tuple[bytes, str]]


def byte_flip(text: str, rng: random.Random) -> tuple[bytes, str]:
    data = bytearray(encode(text))
    flips = []
    for _ in range(rng.randint(1, 4)):
        pos, bit = rng.randrange(len(data)), 1 << rng.randrange(8)
        data[pos] ^= bit
        flips.append(f"byte {pos}^{bit:#04x}")
    return bytes(data), ", ".join(flips)


def token_delete(text: str, rng: random.Random) -> tuple[bytes, str]:
    tokens = significant(tokenize(text))
    doomed = sorted(rng.sample(tokens, min(len(tokens), rng.randint(1, 3))), key=lambda t: t.start, reverse=True)
    for tok in doomed:
        text = replace(text, tok.start, tok.end, "")
    return encode(text), "deleted " + ", ".join(f"{shorten(t.text)} at byte {t.start}" for t in reversed(doomed))


def token_swap(text: str, rng: random.Random) -> tuple[bytes, str]:
    first, second = sorted(rng.sample(significant(tokenize(text)), 2), key=lambda t: t.start)
    text = text[: first.start] + second.text + text[first.end : second.start] + first.text + text[second.end :]
    detail = f"swapped {shorten(first.text)} at byte {first.start} with {shorten(second.text)} at byte {second.start}"
    return encode(text), detail


def token_duplicate(text: str, rng: random.Random) -> tuple[bytes, str]:
    tokens = significant(tokenize(text))
    tok, target = rng.choice(tokens), rng.choice(tokens)
    if rng.random() < 0.5:
        target = tok  # next to itself: `Linear Linear`, `-> ->`, `((`
    copies = rng.choice([1, 1, 1, 2, 10])
    text = replace(text, target.end, target.end, " " * rng.randint(0, 1) + tok.text * copies)
    return encode(text), f"{copies} x {shorten(tok.text)} (byte {tok.start}) after byte {target.end}"


def truncate(text: str, rng: random.Random) -> tuple[bytes, str]:
    data = encode(text)
    if rng.random() < 0.5:
        pos = rng.randrange(len(data))  # anywhere, even inside a multi-byte character
    else:
        pos = len(encode(text[: rng.choice(tokenize(text)).start]))
    return data[:pos], f"truncated at byte {pos} of {len(data)}"


UNICODE_SAMPLES = [
    ("\u00e9", "e acute"),
    ("\u0436", "Cyrillic zhe"),
    ("\u0430", "Cyrillic a (looks like a)"),
    ("\u4e2d", "CJK ideograph"),
    ("\u200f", "right-to-left mark"),
    ("\u202e", "right-to-left override"),
    ("\u2028", "line separator"),
    ("\u2029", "paragraph separator"),
    ("\u0085", "next line (NEL)"),
    ("\u0301", "combining acute accent"),
    ("\u200d", "zero-width joiner"),
    ("\u200b", "zero-width space"),
    ("\ufeff", "byte order mark"),
    ("\u00a0", "no-break space"),
    ("\uff11", "fullwidth digit one"),
    ("\u00b2", "superscript two"),
    ("\u0663", "Arabic-Indic digit three"),
    ("\u01c5", "titlecase digraph"),
    ("\U0001f600", "emoji"),
    ("\U0001f468\u200d\U0001f469\u200d\U0001f467", "emoji ZWJ sequence"),
    ("\U000e0041", "tag character"),
    ("\U0010fffd", "last plane private use"),
]


def unicode_insert(text: str, rng: random.Random) -> tuple[bytes, str]:
    char, label = rng.choice(UNICODE_SAMPLES)
    tokens = tokenize(text)
    tok = pick(rng, tokens, rng.choice([("name",), ("string",), ("comment",), ("number",), ()])) or tokens[0]
    if rng.random() < 0.2:
        pos, at = 0, "start of file"
    elif tok.end - tok.start > 1 and rng.random() < 0.6:
        pos = rng.randrange(tok.start + 1, tok.end)
        at = f"inside {tok.kind} {shorten(tok.text)} at {where(text, pos)}"
    else:
        pos, at = tok.start, f"before {tok.kind} {shorten(tok.text)} at {where(text, tok.start)}"
    count = rng.choice([1, 1, 1, 3, 100])
    return encode(replace(text, pos, pos, char * count)), f"{count} x U+{ord(char[0]):04X} ({label}) {at}"


HUGE_NUMBERS = [
    ("1" + "0" * 5000, "10**5000"),
    ("9" * 4301, "4301 nines (above Python's int string limit)"),
    ("1" + "0" * 100_000 + ".0", "1e100000 written out as a float"),
    (str(2**64), "2**64"),
    (str(2**64 + 1), "2**64+1"),
    (str(2**63), "2**63"),
    (str(2**63 - 1), "2**63-1"),
    (str(2**31), "2**31"),
    ("1000000000", "10**9"),
    ("1000000000000", "10**12"),
    ("1_000_000_000_000_000", "10**18 with underscores"),
    ("1e309", "1e309 (overflows a float)"),
    ("1e-400", "1e-400 (underflows a float)"),
    ("1" + "0" * 400 + ".5", "a 400-digit float"),
]


def replace_number(text: str, rng: random.Random, choices: list[tuple[str, str]], what: str) -> tuple[bytes, str]:
    start, end, slot = expression_slot(text, rng)
    new, label = rng.choice(choices)
    old = text[start:end]
    new = new.replace("N", old if old.isdigit() else "8")
    return encode(replace(text, start, end, new)), f"{slot} -> {what} {label}"


def huge_number(text: str, rng: random.Random) -> tuple[bytes, str]:
    return replace_number(text, rng, HUGE_NUMBERS, "huge number")


def negative_number(text: str, rng: random.Random) -> tuple[bytes, str]:
    choices = [("-N", "-N"), ("0", "0"), ("-1", "-1"), ("-0", "-0"), ("-0.0", "-0.0"), ("(-N)", "(-N)")]
    choices += [("-" + str(2**63), "-2**63"), ("- - N", "- - N"), ("-1e309", "-1e309")]
    return replace_number(text, rng, choices, "negative or zero")


def exponent_tower(text: str, rng: random.Random) -> tuple[bytes, str]:
    choices = [("2 ** 2 ** 64", "2 ** 2 ** 64"), ("10 ** 10 ** 10", "10 ** 10 ** 10"), ("9 ** 9 ** 9", "9 ** 9 ** 9")]
    choices += [("2 ** 64", "2 ** 64"), ("(2 ** 63) ** 2", "(2 ** 63) ** 2"), ("2.0 ** 10000", "2.0 ** 10000")]
    choices += [("N ** N ** N ** N", "N ** N ** N ** N"), ("2 ** -1", "2 ** -1"), ("(-8) ** 0.5", "(-8) ** 0.5")]
    return replace_number(text, rng, choices, "power")


def arith_edge(text: str, rng: random.Random) -> tuple[bytes, str]:
    choices = [("N // 0", "N // 0"), ("N % 0", "N % 0"), ("N / 0", "N / 0"), ("0 ** -1", "0 ** -1")]
    choices += [("N / 3", "N / 3"), ("N * 0", "N * 0"), ("1e308 * 10", "1e308 * 10"), ("N - N", "N - N")]
    choices += [("N // 0.0", "N // 0.0"), ("1e308 * 10 - 1e308 * 10", "inf - inf (nan)"), ("N.5", "N.5")]
    return replace_number(text, rng, choices, "arithmetic")


NESTING_DEPTHS = {1_000: 6, 3_000: 3, 10_000: 2, 100_000: 1}


EXPRESSION_NESTINGS: dict[str, Callable[[int], str]] = {
    "parentheses": lambda depth: "(" * depth + "1" + ")" * depth,
    "lists": lambda depth: "[" * depth + "1" + "]" * depth,
    "calls": lambda depth: "max(" * depth + "1" + ")" * depth,
    "tuples": lambda depth: "(1, " * depth + "1" + ")" * depth,
    "negations": lambda depth: "-" * depth + "1",
    "nots": lambda depth: "not " * depth + "true",
    "sums": lambda depth: "1 + " * depth + "1",
    "powers": lambda depth: "1 ** " * depth + "1",
    "comparisons": lambda depth: "(1 < " * depth + "1" + ")" * depth,
    "indexing": lambda depth: "[1]" + "[0]" * depth,
}
STAGE_NESTINGS = {"pipeline": "(ReLU -> ", "groups": "("}  # `-> (ReLU -> (ReLU -> ... ReLU)) ->`


def nested_stage(text: str, rng: random.Random, form: str, depth: int) -> tuple[bytes, str] | None:
    arrows = [t for t in significant(tokenize(text)) if t.text == "->"]
    if not arrows:
        return None
    arrow = rng.choice(arrows)
    new = "-> " + STAGE_NESTINGS[form] * depth + "ReLU" + ")" * depth + " ->"
    return encode(replace(text, arrow.start, arrow.end, new)), f"{depth}-deep {form} at {where(text, arrow.start)}"


def nested_ifs(text: str, rng: random.Random, depth: int) -> tuple[bytes, str] | None:
    slots = statement_starts(text)
    if not slots:
        return None
    pos, indent = rng.choice(slots)
    new = indent + "if true { " * depth + "}" * depth + "\n"
    return encode(replace(text, pos, pos, new)), f"{depth}-deep ifs at {where(text, pos)}"


def deep_nesting(text: str, rng: random.Random) -> tuple[bytes, str]:
    depth = pick_sized(rng, NESTING_DEPTHS)
    form = rng.choice([*EXPRESSION_NESTINGS, *STAGE_NESTINGS, "ifs"])
    made = nested_stage(text, rng, form, depth) if form in STAGE_NESTINGS else None
    made = nested_ifs(text, rng, depth) if form == "ifs" else made
    if made:
        return made
    form = form if form in EXPRESSION_NESTINGS else "parentheses"
    start, end, slot = expression_slot(text, rng)
    return encode(replace(text, start, end, EXPRESSION_NESTINGS[form](depth))), f"{slot} -> {depth}-deep {form}"


IDENTIFIER_LENGTHS = {256: 4, 4_096: 3, 100_000: 2, 1_000_000: 1}


def long_identifier(text: str, rng: random.Random) -> tuple[bytes, str]:
    length = pick_sized(rng, IDENTIFIER_LENGTHS)
    tok = pick(rng, tokenize(text), ("name",))
    if tok is None:
        return encode(text), "no name to lengthen"
    new = (tok.text + "_" + "x" * length)[:length]
    if rng.random() < 0.5:  # every use, so the spec can still check and the long name reaches the generated code
        renamed = re.sub(rf"\b{re.escape(tok.text)}\b", new, text)
        return encode(renamed), f"renamed every {tok.text!r} to a {length}-char name"
    detail = f"{tok.text!r} at {where(text, tok.start)} -> {length}-char name"
    return encode(replace(text, tok.start, tok.end, new)), detail


def nul_byte(text: str, rng: random.Random) -> tuple[bytes, str]:
    data = bytearray(encode(text))
    spots = sorted((rng.randrange(len(data) + 1) for _ in range(rng.randint(1, 3))), reverse=True)
    for pos in spots:
        data[pos:pos] = b"\x00"
    return bytes(data), "NUL inserted at bytes " + ", ".join(map(str, reversed(spots)))


INVALID_UTF8 = [
    (b"\xff", "0xff"),
    (b"\xfe\xff", "UTF-16 byte order mark"),
    (b"\xc3", "lead byte without its continuation"),
    (b"\x80", "lone continuation byte"),
    (b"\xed\xa0\x80", "encoded surrogate"),
    (b"\xc0\xaf", "overlong slash"),
    (b"\xf4\x90\x80\x80", "above U+10FFFF"),
    (b"\xe2\x82", "truncated 3-byte sequence"),
]


def invalid_utf8(text: str, rng: random.Random) -> tuple[bytes, str]:
    data = encode(text)
    raw, label = rng.choice(INVALID_UTF8)
    pos = rng.randrange(len(data) + 1)
    return data[:pos] + raw + data[pos:], f"{label} at byte {pos} ({where(text, len(decode(data[:pos])))})"


def line_endings(text: str, rng: random.Random) -> tuple[bytes, str]:
    style = rng.choice(["crlf", "cr", "lone-cr", "tabs", "tab", "vertical-tab", "form-feed", "one-line", "mixed"])
    if style == "crlf":
        return encode(text.replace("\n", "\r\n")), "every LF -> CRLF"
    if style == "cr":
        return encode(text.replace("\n", "\r")), "every LF -> CR"
    if style == "tabs":
        tabbed = re.sub(r"^( {4})+", lambda m: "\t" * (len(m.group()) // 4), text, flags=re.MULTILINE)
        return encode(tabbed), "indentation -> tabs"
    if style == "one-line":  # newlines carry no meaning, except that they end comments
        return encode(re.sub(r"#[^\n]*", "", text).replace("\n", " ")), "comments removed, everything on one line"
    if style == "mixed":
        lines = text.split("\n")
        joined = "".join(line + rng.choice(["\n", "\r\n", "\r"]) for line in lines[:-1]) + lines[-1]
        return encode(joined), "each line ends with LF, CRLF or CR at random"
    char = {"lone-cr": "\r", "tab": "\t", "vertical-tab": "\x0b", "form-feed": "\x0c"}[style]
    tok = rng.choice(tokenize(text))
    pos = rng.choice([tok.start, (tok.start + tok.end) // 2])
    return encode(replace(text, pos, pos, char)), f"{char!r} at {where(text, pos)}"


STATEMENT_COUNTS = {1_000: 6, 3_000: 3, 10_000: 1}


def many_statements(text: str, rng: random.Random) -> tuple[bytes, str]:
    count = pick_sized(rng, STATEMENT_COUNTS)
    style = rng.choice(["consts", "comments", "blank-lines", "assignments", "repeated-line"])
    inputs = input_names(text)
    if style == "assignments" and inputs:
        pos, indent, name = rng.choice(inputs)
        chain = [f"{indent}fuzz_0 = {name}\n"] + [f"{indent}fuzz_{i} = fuzz_{i - 1} -> ReLU\n" for i in range(1, count)]
        return encode(replace(text, pos, pos, "".join(chain))), f"{count} chained assignments after input {name!r}"
    if style == "repeated-line":
        lines = text.split("\n")
        n = rng.randrange(len(lines))
        lines[n:n] = [lines[n]] * count
        return encode("\n".join(lines)), f"line {n + 1} repeated {count} times"
    if style in ("consts", "assignments"):  # assignments need an input to start from: consts instead
        pos, new, style = item_start(text), "".join(f"const fuzz_{i} = {i}\n" for i in range(count)), "consts"
    else:
        pos, new = rng.choice(tokenize(text)).start, ("# fuzz\n" if style == "comments" else "\n") * count
    return encode(replace(text, pos, pos, new)), f"{count} {style} at {where(text, pos)}"


REPETITIONS = [
    '"a" * 1000000000',
    "(1, 2) * 100000000",
    "[0] * 1000000000",
    '"ab" * 2 ** 62',
    '("x",) * 10 ** 10',
    "[[0] * 100000] * 100000",
    '"a" * -1',
    "[1, 2] * 2 ** 64",
    '"x" * 100000 * 100000',
]


def huge_repetition(text: str, rng: random.Random) -> tuple[bytes, str]:
    expr = rng.choice(REPETITIONS)
    if rng.random() < 0.5:
        pos = item_start(text)
        detail = f"const fuzz_c = {expr} at {where(text, pos)}"
        return encode(replace(text, pos, pos, f"const fuzz_c = {expr}\n")), detail
    start, end, slot = expression_slot(text, rng)
    return encode(replace(text, start, end, expr)), f"{slot} -> {expr}"


def splice(text: str, rng: random.Random) -> tuple[bytes, str]:
    donor_name, donor = rng.choice(sorted(base_specs().items()))
    donor_lines = donor.split("\n")
    first = rng.randrange(len(donor_lines))
    piece = donor_lines[first : first + rng.randint(1, 4)]
    lines = text.split("\n")
    at = rng.randrange(len(lines) + 1)
    replaced = rng.randint(0, 1)
    lines[at : at + replaced] = piece
    detail = f"lines {first + 1}-{first + len(piece)} of {donor_name} {'over' if replaced else 'before'} line {at + 1}"
    return encode("\n".join(lines)), detail


MUTATORS: dict[str, Mutator] = {
    "byte-flip": byte_flip,
    "token-delete": token_delete,
    "token-swap": token_swap,
    "token-duplicate": token_duplicate,
    "truncate": truncate,
    "unicode": unicode_insert,
    "huge-number": huge_number,
    "negative-number": negative_number,
    "exponent-tower": exponent_tower,
    "arith-edge": arith_edge,
    "deep-nesting": deep_nesting,
    "long-identifier": long_identifier,
    "nul-byte": nul_byte,
    "invalid-utf8": invalid_utf8,
    "line-endings": line_endings,
    "many-statements": many_statements,
    "huge-repetition": huge_repetition,
    "splice": splice,
}
KINDS = tuple(MUTATORS)


# ------------------------------------------------------------------ mutants


@cache
def base_specs() -> dict[str, str]:
    """The shipped specs by repository-relative path, in a fixed order."""
    paths = sorted(p for pattern in BASE_PATTERNS for p in ROOT.glob(pattern))
    return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in paths}


def mutant(kind: str, seed: int, index: int) -> Mutant:
    rng = random.Random(f"{kind}:{seed}:{index}")
    base, text = rng.choice(sorted(base_specs().items()))
    data, detail = MUTATORS[kind](text, rng)
    return Mutant(kind, seed, index, base, detail, data)


def mutant_from_key(key: str) -> Mutant:
    kind, seed, index = key.rsplit(":", 2)
    if kind not in MUTATORS:
        raise ValueError(f"unknown mutation kind {kind!r}; known: {', '.join(KINDS)}")
    return mutant(kind, int(seed), int(index))


def mutants(seed: int, count: int, kinds: tuple[str, ...] = KINDS) -> Iterator[Mutant]:
    """`count` mutants, each of a kind drawn (with the seed) from `kinds`."""
    chooser = random.Random(f"kinds:{seed}")
    for index in range(count):
        yield mutant(chooser.choice(kinds), seed, index)
