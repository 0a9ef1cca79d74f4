"""The editor features in process (no pygls): the scanner and outline of half-typed text, analyses of every
prefix, and hover, completion, definition and inlay hints on every prefix of some specs."""

from __future__ import annotations

import random

import pytest

from dslc.errors import DslcError
from dslc.lsp import features
from dslc.lsp.analysis import analyze, diagnostic_text
from dslc.lsp.text import Text, balanced, outline
from dslc.parser import parse
from tests.conftest import SPECS

SPEC_FILES = sorted(SPECS.glob("*.model"))
SMALL = [p for p in SPEC_FILES if len(p.read_text()) <= 1200]


def test_the_scanner_never_refuses_and_keeps_positions():
    source = 'model m {  # c\n    h = x -> "unterminated\n    """doc\nstill doc""" ° 1.5e3 ...\n'
    text = Text(source)
    kinds = [t.kind for t in text.tokens]
    assert "error" in kinds and kinds.count("string") == 2 and "comment" in kinds
    for tok in text.tokens:
        assert text.position(tok.start) == tok.pos and text.position(tok.end) == tok.end_pos
        assert source[tok.start : tok.end] == tok.text
    assert not balanced(text)


def test_rescanning_after_an_edit_gives_the_same_tokens():
    source = (SPECS / "transformer.model").read_text()
    rng = random.Random(0)
    previous = Text(source)
    for _ in range(500):
        s = previous.source
        i = rng.randrange(len(s) + 1)
        edit = rng.choice(['"', "#", "\n", "x", '"""', "(", "->", ""])
        current = s[:i] + edit + s[i + rng.randrange(3) :]
        incremental = Text(current, previous)
        assert incremental.tokens == Text(current).tokens
        previous = incremental


def test_outline_of_a_finished_and_a_half_typed_spec():
    source = (SPECS / "gan.model").read_text()
    items = outline(Text(source))
    assert [(i.kind, i.name) for i in items if i.kind in ("model", "train")] == [
        ("model", "generator"),
        ("model", "discriminator"),
        ("train", "train"),
    ]
    train = items[-1]
    assert [c.name for c in train.children if c.kind == "step"] == ["discriminator", "generator"]
    half = source[: source.index("model discriminator") + 30]
    items = outline(Text(half))
    assert items[-1].name == "discriminator" and items[-1].body[1] is None  # not closed yet


@pytest.mark.parametrize("spec", SPEC_FILES, ids=lambda p: p.stem)
def test_an_analysis_has_the_cli_diagnostics(spec):
    result = analyze(str(spec), spec.read_text())
    assert result.diagnostics == [] and result.facts and result.program is not None
    assert any(b.kind == "model" for b in result.bodies)


def test_diagnostic_text_is_the_cli_message_without_the_location():
    source = "model m {\n    input x: float32[batch, 4, 4]\n    output y = x -> Linear(3) -> Conv2d(3, kernel=3)\n}\n"
    result = analyze("t.model", source)
    (diag,) = result.diagnostics
    text = diagnostic_text(diag)
    assert text.startswith("Conv2d expects [batch, channels, height, width], got [batch, 4, 3]")
    assert text.endswith("see: docs/reference.md#op-conv2d")


@pytest.mark.parametrize("spec", SPEC_FILES, ids=lambda p: p.stem)
def test_prefixes_analyse_with_located_diagnostics(spec):
    """A check of a prefix gives the parser's or checker's own errors, never an internal one: every prefix of
    the small specs, about 150 spread over each larger one (the server replay in test_lsp.py types them all)."""
    source = spec.read_text()
    for n in range(0, len(source) + 1, 1 if spec in SMALL else max(1, len(source) // 150)):
        result = analyze(str(spec), source[:n])
        for diag in result.diagnostics:
            assert not diag.message.startswith("internal error"), (n, diag.message)
            assert diag.loc is None or diag.loc.line >= 1


@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda p: p.stem)
def test_every_feature_answers_on_prefixes(path):
    """Hover, completion, definition, outline and inlay hints on each prefix (every third of the larger specs),
    from the finished spec's analysis (stale while typing, as in an editor) and from none."""
    source = path.read_text()
    full = analyze(str(path), source)
    previous = None
    for n in range(0, len(source) + 1, 1 if path in SMALL else 3):
        text = Text(source[:n], previous)
        previous = text
        for analysis in (full, None):
            features.hover(analysis, text, max(n - 1, 0))
            features.complete(analysis, text, n)
            features.definition(analysis, text, max(n - 1, 0))
            features.inlay_hints(analysis, text)
        outline(text)


def test_completion_contexts():
    path = SPECS / "cnn.model"
    source = path.read_text()
    analysis = analyze(str(path), source)

    def labels(edited: str, marker: str = "|") -> list[str]:
        offset = edited.index(marker)
        result = features.complete(analysis, Text(edited.replace(marker, "")), offset)
        return [c.label for c in result.items]

    assert {"Conv2d", "ReLU", "Flatten", "repeat"} <= set(labels(source.replace("-> Flatten", "-> |")))
    assert "cross_entropy" not in labels(source.replace("-> Flatten", "-> |"))  # a loss is not a stage
    assert labels(source.replace("input image: float32", "input image: |float32"))[:2] == ["float32", "float64"]
    assert set(labels(source.replace("const classes = 10", "|\nconst classes = 10"))) >= {"model", "block", "train"}
    body = labels(source.replace("    output probabilities", "    |\n    output probabilities"))
    assert {"input", "output", "features", "classes", "softmax"} <= set(body)
    assert "digits" in labels(source.replace("data = digits(", "data = |digits("))
    assert {"accuracy", "top_k"} <= set(labels(source.replace("metrics = [accuracy, top_k(3)]", "metrics = [|]")))
    train = labels(source.replace("    epochs = 8", "    |\n    epochs = 8"))
    assert {"epochs", "optimizer", "step", "label", "logits"} <= set(train)
    assert labels(source.replace("# fields", "# fie|lds")) == []  # in a comment


def test_hover_while_the_text_does_not_parse():
    """The last analysis that had facts answers by name when the current text does not parse."""
    path = SPECS / "cnn.model"
    source = path.read_text()
    analysis = analyze(str(path), source)
    broken = source.replace(
        "    output probabilities = softmax(logits, dim=-1)\n", "    output probabilities = softmax(\n"
    )
    with pytest.raises(DslcError):
        parse(broken)
    text = Text(broken)
    found = features.hover(
        analysis, text, broken.index("logits, dim") if "logits, dim" in broken else broken.index("features =")
    )
    assert found is not None and "float32[batch, " in found.markdown
    hints = features.inlay_hints(analysis, text)
    assert any(h.label == "float32[batch, 3136]" for h in hints)  # unchanged lines keep their hints


def test_inlay_hints_of_a_block_used_with_several_shapes():
    path = SPECS / "resnet18.model"
    source = path.read_text()
    hints = {h.pos[0]: h for h in features.inlay_hints(analyze(str(path), source), Text(source))}
    lines = source.split("\n")
    first = next(n for n, line in enumerate(lines, 1) if "-> conv1: Conv2d(planes" in line)
    assert hints[first].label.startswith("float32[batch, ") and "(and 3 more)" in hints[first].label
    assert "BasicBlock(planes=64, stride=1)" in hints[first].tooltip
