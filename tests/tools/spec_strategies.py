"""Hypothesis strategies that write random, syntactically valid specs with random layout and comments.

A spec is built as a list of tokens from the grammar's rules, then joined with random separators:
spaces, newlines, blank lines, own-line comments and trailing comments (`# cN`, numbered so a test
can check that every one survives).
"""

from __future__ import annotations

from hypothesis import strategies as st

NAMES = ["x", "y", "h", "hidden", "Foo", "bar_2", "d_model", "time"]
DTYPES = ["float32", "int64", "bool"]


class _Gen:
    def __init__(self, draw):
        self.draw = draw

    def pick(self, options):
        return self.draw(st.sampled_from(options))

    def chance(self, p: float = 0.5) -> bool:
        return self.draw(st.floats(0, 1)) < p

    def count(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))

    def name(self) -> list[str]:
        return [self.pick(NAMES)]

    # -- expressions, one function per grammar level
    def expr(self, depth: int) -> list[str]:
        out = self.or_test(depth)
        if depth > 0 and self.chance(0.2):
            for _ in range(self.count(1, 3)):
                out += ["->", *self.stage(depth - 1)]
        return out

    def _chain(self, sub, ops, depth: int, most: int = 2) -> list[str]:
        out = sub(depth)
        for _ in range(self.count(0, most) if depth > 0 else 0):
            out += [self.pick(ops), *sub(depth - 1)]
        return out

    def or_test(self, depth):
        return self._chain(self.and_test, ["or"], depth, 1)

    def and_test(self, depth):
        return self._chain(self.not_test, ["and"], depth, 1)

    def not_test(self, depth):
        if depth > 0 and self.chance(0.1):
            return ["not", *self.not_test(depth - 1)]
        out = self.arith(depth)
        if depth > 0 and self.chance(0.15):
            out += [self.pick(["==", "!=", "<", "<=", ">", ">="]), *self.arith(depth - 1)]
        return out

    def arith(self, depth):
        return self._chain(self.term, ["+", "-"], depth)

    def term(self, depth):
        return self._chain(self.factor, ["*", "/", "//", "%", "@"], depth)

    def factor(self, depth):
        if depth > 0 and self.chance(0.15):
            return [self.pick(["-", "+"]), *self.factor(depth - 1)]
        out = self.postfix(depth)
        if depth > 0 and self.chance(0.1):
            out += ["**", *self.factor(depth - 1)]
        return out

    def postfix(self, depth):
        out = self.atom(depth)
        if depth > 0 and self.chance(0.15):
            items = [self.subscript(depth - 1) for _ in range(self.count(1, 2))]
            out += ["[", *_join(items), "]"]
        return out

    def subscript(self, depth):
        kind = self.pick(["index", "slice", "ellipsis"])
        if kind == "index":
            return self.arith(depth)
        if kind == "ellipsis":
            return ["..."]
        parts = [self.arith(depth) if self.chance() else [] for _ in range(3)]
        out = [*parts[0], ":", *parts[1]]
        return out + [":", *parts[2]] if self.chance(0.3) else out

    def atom(self, depth):
        kind = self.pick(["int", "float", "str", "lit", "name", "name", "call", "paren", "tuple", "list"])
        if depth <= 0 and kind in ("call", "paren", "tuple", "list"):
            kind = "name"
        if kind == "int":
            return [self.pick(["0", "1", "28", "1_000"])]
        if kind == "float":
            return [self.pick(["0.5", "1e-3", "3.", ".25", "2.5e+2"])]
        if kind == "str":
            return [self.pick(['"same"', "'valid'", '"a \\"quoted\\" word"', '"x # not a comment"'])]
        if kind == "lit":
            return [self.pick(["true", "false", "none"])]
        if kind == "name":
            return self.name()
        if kind == "call":
            return [self.pick(["mean", "softmax", "nn.relu"]), "(", *self.arglist(depth - 1), ")"]
        if kind == "paren":
            return ["(", *self.expr(depth - 1), ")"]
        if kind == "tuple":
            items = [self.expr(depth - 1) for _ in range(self.count(1, 3))]
            return ["(", *_join(items), ",", ")"] if len(items) == 1 else ["(", *_join(items), ")"]
        return ["[", *_join([self.expr(depth - 1) for _ in range(self.count(0, 3))]), "]"]

    def arglist(self, depth):
        args = [self.expr(depth) for _ in range(self.count(0, 2))]
        args += [[self.pick(["dim", "kernel", "p"]), "=", *self.expr(depth)] for _ in range(self.count(0, 2))]
        return _join(args)

    # -- pipeline stages
    def stage(self, depth):
        if depth > 0 and self.chance(0.2):
            return [self.pick(["enc", "head"]), ":", *self.stage_body(depth - 1)]
        return self.stage_body(depth)

    def stage_body(self, depth):
        kind = self.pick(["ref", "call", "call", "repeat", "group"] if depth > 0 else ["ref", "call"])
        if kind == "ref":
            return [self.pick(["ReLU", "Flatten", "blocks.Res"])]
        if kind == "call":
            return [self.pick(["Linear", "Conv2d", "Dropout"]), "(", *self.arglist(max(depth - 1, 0)), ")"]
        if kind == "repeat":
            count = self.pick([["3"], ["layers"], ["(", "2", "*", "n", ")"]])
            return ["repeat", *count, *self.stage_body(depth - 1)]
        stages = [self.stage(depth - 1) for _ in range(self.count(1, 3))]
        return ["(", *_join(stages, "->"), ")"]

    # -- statements and items
    def tensor_type(self):
        dims = [self.arith(1) for _ in range(self.count(0, 3))]
        return [self.pick(DTYPES), "[", *_join(dims), "]"]

    def statement(self, depth: int) -> list[str]:
        kind = self.pick(["input", "output", "assign", "assign", "if"] if depth > 0 else ["input", "output", "assign"])
        if kind == "input":
            return ["input", *self.name(), ":", *self.tensor_type()]
        if kind == "output":
            out = ["output", *self.name()]
            if self.chance():
                out += [":", *self.tensor_type()]
            return out + ["=", *self.expr(3)] if self.chance(0.7) else out
        if kind == "assign":
            targets = [self.name() for _ in range(self.count(1, 2))]
            return [*_join(targets), "=", *self.expr(3)]
        out = ["if", *self.expr(1), *self.block_body(depth - 1)]
        for _ in range(self.count(0, 1)):
            out += ["elif", *self.expr(1), *self.block_body(depth - 1)]
        return out + ["else", *self.block_body(depth - 1)] if self.chance() else out

    def block_body(self, depth: int, doc: bool = False) -> list[str]:
        out = ["{"]
        if doc and self.chance(0.3):
            out.append(self.pick(['"""One line."""', '"""Two\n    lines, indented."""']))
        for _ in range(self.count(0, 4)):
            out += self.statement(depth)
        return out + ["}"]

    def train_items(self, depth: int) -> list[str]:
        out: list[str] = []
        for _ in range(self.count(0, 3)):
            if depth > 0 and self.chance(0.3):
                head = [self.pick(["optimizer", "data", "loss"])] + (
                    [self.pick(["adam", "digits"])] if self.chance() else []
                )
                out += [*head, "{", *self.train_items(depth - 1), "}"]
            else:
                out += [self.pick(["epochs", "lr", "seed", "batch_size"]), "=", *self.expr(2)]
        return out

    def item(self) -> list[str]:
        kind = self.pick(["import", "from", "const", "block", "model", "model", "train"])
        if kind == "import":
            return ["import", '"blocks.model"'] + (["as", "blocks"] if self.chance() else [])
        if kind == "from":
            return ["from", '"blocks.model"', "import", *_join([["Res"], ["Conv"]][: self.count(1, 2)])]
        if kind == "const":
            return ["const", *self.name(), "=", *self.expr(2)]
        if kind == "block":
            params = []
            for _ in range(self.count(0, 3)):
                p = [*self.name(), ":", self.pick(["int", "float", "bool", "str"])]
                params.append(p + ["=", *self.expr(1)] if self.chance() else p)
            return ["block", "Foo", "(", *_join(params), ")", *self.block_body(2, doc=True)]
        if kind == "model":
            return ["model", *self.name(), *self.block_body(2, doc=True)]
        head = ["train"] + ([self.pick(["main", "fine_tune"])] if self.chance() else [])
        doc = ['"""Training."""'] if self.chance(0.2) else []
        return [*head, "{", *doc, *self.train_items(2), "}"]

    def program(self) -> list[str]:
        out = ['"""A spec."""'] if self.chance(0.3) else []
        for _ in range(self.count(1, 4)):
            out += self.item()
        return out


def _join(parts: list[list[str]], sep: str = ",") -> list[str]:
    out: list[str] = []
    for i, part in enumerate(parts):
        if i:
            out.append(sep)
        out += part
    return out


@st.composite
def spec_sources(draw) -> str:
    """Source text of a random valid spec, with random whitespace and numbered comments."""
    tokens = _Gen(draw).program()
    seps = draw(
        st.lists(
            st.sampled_from([" ", " ", " ", "\n", "\n\n", "  ", "C", "\nC\n", "\n\n  C\n"]),
            min_size=len(tokens),
            max_size=len(tokens),
        )
    )
    out, n = [], 0
    for token, sep in zip(tokens, seps):
        if "C" in sep:
            n += 1
            sep = sep.replace("C", f"# c{n}") + ("" if sep.endswith("\n") else "\n")
            sep = " " + sep if not sep.startswith("\n") else sep
        out += [token, sep]
    return "".join(out)
