"""`dslc fmt`: canonical, idempotent, meaning-preserving, and no comment is ever lost."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings

from dslc.checker import check_file
from dslc.cli import main
from dslc.emit_torch import emit_program
from dslc.fmt import MAX_WIDTH, SOFT, format_source, strip_locations
from dslc.layout import Indent, Text, render
from dslc.parser import parse
from tests.conftest import SPECS
from tests.tools.spec_strategies import spec_sources

SPEC_FILES = sorted(SPECS.glob("*.model"))


def _generated(path) -> str:
    """Generated Python without what legitimately follows the layout: comments, sha256, line numbers."""
    code = emit_program(check_file(path))
    code = re.sub(r"(?m)^\s*#.*\n", "", code)
    code = re.sub(r"sha256 [0-9a-f]+", "sha256", code)
    return re.sub(r"\.model:\d+", ".model", code)


@pytest.mark.parametrize("spec", SPEC_FILES, ids=lambda p: p.stem)
def test_shipped_spec_formats_to_the_same_program(spec, tmp_path):
    source = spec.read_text(encoding="utf-8")
    once = format_source(source, str(spec))
    assert format_source(once) == once, "not idempotent"
    assert strip_locations(parse(once)) == strip_locations(parse(source))
    assert sorted(parse(once).comments.values()) == sorted(parse(source).comments.values())
    copy = tmp_path / spec.name
    copy.write_text(once, encoding="utf-8")
    for other in spec.parent.glob("*.model"):  # imports resolve next to the copy
        if other != spec:
            (tmp_path / other.name).write_text(other.read_text(encoding="utf-8"), encoding="utf-8")
    assert _generated(copy) == _generated(spec)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec_sources())
def test_random_specs(source):
    once = format_source(source)
    assert format_source(once) == once, "not idempotent"
    assert strip_locations(parse(once)) == strip_locations(parse(source))
    for n in range(1, source.count("# c") + 1):
        assert re.search(rf"# c{n}\b", once), f"comment c{n} lost"
    assert max(len(line) for line in once.split("\n")) <= MAX_WIDTH  # the random specs' tokens are short


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec_sources())
def test_random_specs_at_a_narrow_width(source):
    """At 40 columns nearly every statement breaks: the layout is still stable and keeps the meaning."""
    once = format_source(source, width=40)
    assert format_source(once, width=40) == once, "not idempotent"
    assert strip_locations(parse(once)) == strip_locations(parse(source))


def _too_long(text: str) -> list[str]:
    """Lines over the width that hold more than one token (a docstring's line, or a comment, is one token)."""
    from dslc.lsp.text import Text

    scanned = Text(text)
    bad = []
    for number, line in enumerate(text.split("\n"), start=1):
        if len(line) > MAX_WIDTH:
            on_line = [t for t in scanned.tokens if t.line <= number <= t.end_line]
            if len(on_line) > 1:
                bad.append(line)
    return bad


@pytest.mark.parametrize("spec", SPEC_FILES, ids=lambda p: p.stem)
def test_no_formatted_line_is_wider_than_the_width(spec):
    source = spec.read_text(encoding="utf-8")
    assert _too_long(format_source(source, str(spec))) == []
    for width in (40, 60):
        narrow = format_source(source, str(spec), width=width)
        assert format_source(narrow, width=width) == narrow, f"not idempotent at {width}"
        assert strip_locations(parse(narrow)) == strip_locations(parse(source))


def test_long_calls_and_lists_wrap():
    source = (
        'train {\n    data = csv("data/a/long/path/to/the/iris/measurements.csv", features=["sepal_length", '
        '"sepal_width", "petal_length", "petal_width"], label="species", validation=0.2, shuffle=true)\n}\n'
        "const SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072]\n"
    )
    assert format_source(source) == (
        "train {\n"
        "    data = csv(\n"
        '        "data/a/long/path/to/the/iris/measurements.csv",\n'
        '        features=["sepal_length", "sepal_width", "petal_length", "petal_width"],\n'
        '        label="species",\n'
        "        validation=0.2,\n"
        "        shuffle=true\n"
        "    )\n"
        "}\n\n"
        "const SIZES = [\n"
        "    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072\n"
        "]\n"
    )


def test_a_multi_line_group_keeps_its_lines_and_long_pipelines_fill_the_width():
    source = (
        "model m {\n    input x: float32[batch, 3, 32, 32]\n    h = x -> features: (\n"
        '        Conv2d(32, kernel=3, padding="same") -> BatchNorm2d -> ReLU\n'
        '        -> Conv2d(64, kernel=3, padding="same") -> BatchNorm2d -> ReLU -> MaxPool2d(2)\n'
        "    ) -> Flatten\n"
        "    g = x -> Conv2d(8, kernel=3) -> ReLU -> Conv2d(8, kernel=3) -> ReLU -> Conv2d(8, kernel=3) -> ReLU -> Flatten\n"
        "    output y = concat([h, g], dim=1) -> Linear(10)\n}\n"
    )
    assert format_source(source) == (
        "model m {\n    input x: float32[batch, 3, 32, 32]\n    h = x -> features: (\n"
        '        Conv2d(32, kernel=3, padding="same") -> BatchNorm2d -> ReLU\n'
        '        -> Conv2d(64, kernel=3, padding="same") -> BatchNorm2d -> ReLU -> MaxPool2d(2))\n'
        "        -> Flatten\n"
        "    g = x -> Conv2d(8, kernel=3) -> ReLU -> Conv2d(8, kernel=3) -> ReLU -> Conv2d(8, kernel=3)\n"
        "        -> ReLU -> Flatten\n"
        "    output y = concat([h, g], dim=1) -> Linear(10)\n}\n"
    )
    short = "model m {\n    input x: float32[b, 2]\n    output y = x -> g: (\n        Linear(2) -> ReLU\n    )\n}\n"
    assert "output y = x -> g: (Linear(2) -> ReLU)\n" in format_source(short)  # it fits: one line


def test_a_trailing_comment_that_would_overflow_goes_above_its_line():
    source = (
        "model m {\n    input x: float32[batch, 8]\n"
        "    h = x -> Linear(8)  # a comment long enough to push this line past the hundred-column limit, surely\n"
        "    output y = h  # short\n}\n"
    )
    once = format_source(source)
    assert once == (
        "model m {\n    input x: float32[batch, 8]\n"
        "    # a comment long enough to push this line past the hundred-column limit, surely\n"
        "    h = x -> Linear(8)\n    output y = h  # short\n}\n"
    )
    assert format_source(once) == once


def test_layout_rules():
    source = (
        '"""Doc."""\nconst  a=1\nconst b = (2)\n\n\n\nmodel m {   # the model\n\n'
        "    input x : float32[batch,4]\n# lead\n    h = x->Linear(8) # trailing\n"
        "       ->ReLU\n    output y=-(h)**2 + h [0 :2]\n\n}\n# end\n"
    )
    assert format_source(source) == (
        '"""Doc."""\n\nconst a = 1\nconst b = 2\n\nmodel m {  # the model\n'
        "    input x: float32[batch, 4]\n    # lead\n    h = x -> Linear(8)  # trailing\n"
        "        -> ReLU\n    output y = -h ** 2 + h[0:2]\n}\n# end\n"
    )


def test_train_sections_and_if():
    source = "train  main{epochs=3\n  optimizer adam {lr=1e-3 # small\n}\n}\nmodel m { if a {x=1}else{ # e\n} }\n"
    assert format_source(source) == (
        "train main {\n    epochs = 3\n    optimizer adam {\n        lr = 1e-3  # small\n    }\n}\n\n"
        "model m {\n    if a {\n        x = 1\n    } else {  # e\n    }\n}\n"
    )


def test_check_mode_and_rewrite(tmp_path):
    good = tmp_path / "good.model"
    good.write_text(format_source((SPECS / "mlp.model").read_text()))
    bad = tmp_path / "bad.model"
    bad.write_text("model m {input x: float32[b, 2]\noutput y = x}\n")
    runner = CliRunner()
    result = runner.invoke(main, ["fmt", "--check", str(good), str(bad)])
    assert result.exit_code == 1 and "would reformat" in result.output and str(bad) in result.output
    assert str(good) not in result.output
    assert bad.read_text().startswith("model m {input")  # --check writes nothing
    assert runner.invoke(main, ["fmt", str(bad)]).exit_code == 0
    assert bad.read_text() == "model m {\n    input x: float32[b, 2]\n    output y = x\n}\n"
    assert runner.invoke(main, ["fmt", "--check", str(bad)]).exit_code == 0


def test_diff_prints_a_unified_diff_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.model"
    bad.write_text("model m {input x: float32[b, 2]\noutput y = x}\n")
    runner = CliRunner()
    result = runner.invoke(main, ["fmt", "--diff", str(bad)])
    assert result.exit_code == 0
    assert result.output.startswith(f"--- {bad}\n+++ {bad} (formatted)\n@@ ")
    assert "-model m {input x: float32[b, 2]\n" in result.output and "+    input x: float32[b, 2]\n" in result.output
    assert bad.read_text().startswith("model m {input")
    assert runner.invoke(main, ["fmt", "--diff", "--check", str(bad)]).exit_code == 1
    runner.invoke(main, ["fmt", str(bad)])
    result = runner.invoke(main, ["fmt", "--diff", "--check", str(bad)])
    assert result.exit_code == 0 and result.output == ""


def test_syntax_error_is_reported(tmp_path):
    bad = tmp_path / "bad.model"
    bad.write_text("model m { input x: }\n")
    result = CliRunner().invoke(main, ["fmt", str(bad)])
    assert result.exit_code == 1 and "syntax error" in result.output


def test_shipped_specs_are_formatted():
    """specs/ is kept in canonical layout: run `dslc fmt specs/*.model` after editing a spec."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    specs = sorted(str(p) for p in (root / "specs").glob("*.model"))
    result = subprocess.run(
        [sys.executable, "-m", "dslc.cli", "fmt", "--check", *specs], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_empty_body_whose_only_comment_trails_its_brace_stays_empty():
    """Found by test_random_specs: `{ # c\n}` became `{\n}` once and `{}` the next time."""
    source = 'block Foo ( x : int = 0 [ 0 ] ** 0 + 0 == # c1\n0 # c2\n-> Linear ( ) ) { # c8\n} import "b.model"\n'
    once = format_source(source)
    assert format_source(once) == once
    assert format_source("block Foo() { # c\n}\n") == "block Foo() {}  # c\n"


def test_a_bare_slice_on_its_own_line_keeps_the_comments_around_it_in_place():
    """Found by test_random_specs_at_a_narrow_width: a `:` slice has no text of its own before the colon, and its
    line took the source line of the line above, so a comment moved from before the `:` to after it when formatted
    again."""
    source = (
        "model x { if 0 { if 0 { y = -0 * (not 0.5 -> Linear() -> ReLU) ** 0 == (0 -> ReLU) # c1\n[:][0] ** 0 } } }\n"
    )
    once = format_source(source, width=40)
    assert re.search(r"\[\n\s+:\n", once), "the case needs the `:` on a line of its own"
    assert format_source(once, width=40) == once
    lines = render([Text("a[", 1), Indent([SOFT, Text("", 3), Text(":")]), SOFT, Text("]", 4)], 0, 3)
    assert lines == [(0, "a[", 1), (1, ":", 3), (0, "]", 4)]
