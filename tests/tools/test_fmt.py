"""`dslc fmt`: canonical, idempotent, meaning-preserving, and no comment is ever lost."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings

from dslc.checker import check_file
from dslc.cli import main
from dslc.emit_torch import emit_program
from dslc.fmt import format_source, strip_locations
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
