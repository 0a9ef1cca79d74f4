"""The generated `<stem>_train.py` of every shipped spec with a train section is `ruff check` and `ruff format`
clean at 120 columns, checked where such a script lives (a folder of its own, where dslc is an installed package),
and defines no function it never calls."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dslc.checker import check_file
from dslc.emit_train import emit_train_script
from tests.conftest import SPECS

RULES = "E,F,W,I,B,UP,N,SIM"  # the project's rule set, with E501 (line length) enforced
TRAINED = sorted(p for p in SPECS.glob("*.model") if check_file(p).train is not None)


def ruff(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--isolated", "--line-length", "120", "."],
        capture_output=True,
        text=True,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def scripts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scripts")
    for spec in TRAINED:
        program = check_file(spec)
        (folder / f"{program.module_name}_train.py").write_text(emit_train_script(program))
    return folder


def test_the_shipped_specs_train():
    assert len(TRAINED) >= 15


def test_every_generated_script_passes_ruff_check(scripts):
    result = ruff("check", "--select", RULES, "--output-format", "concise", cwd=scripts)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_generated_script_is_ruff_formatted(scripts):
    result = ruff("format", "--check", cwd=scripts)
    assert result.returncode == 0, result.stdout + result.stderr


def test_evaluate_is_written_only_where_main_calls_it():
    for spec in TRAINED:
        text = emit_train_script(check_file(spec))
        assert ("def evaluate(" in text) == ("evaluate(models, eval_batches, run)" in text), spec.name
    assert "def evaluate(" not in emit_train_script(check_file(SPECS / "gan.model"))
    assert "def evaluate(" in emit_train_script(check_file(SPECS / "cnn.model"))
