"""`dslc graph`, `dslc init` and the `--help` of every command."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from dslc.checker import check_file
from dslc.cli import main
from dslc.graph import program_dot
from dslc.templates import TEMPLATES
from tests.conftest import SPECS

SPEC_FILES = sorted(SPECS.glob("*.model"))
runner = CliRunner()


@pytest.mark.parametrize("spec", SPEC_FILES, ids=lambda p: p.stem)
def test_graph_of_every_spec(spec):
    program = check_file(spec)
    expanded, collapsed = program_dot(program, expand=True), program_dot(program, expand=False)
    for dot in (expanded, collapsed):
        assert dot.startswith("digraph dslc {") and dot.rstrip().endswith("}")
        assert dot.count("{") == dot.count("}")
    for model in program.exported:
        for port in model.inputs + model.outputs:
            assert f"{port.name}\\n{port.type}" in expanded  # input and output nodes show their types
    if any(m.kind == "block" for m in program.modules):
        assert "subgraph cluster_" in expanded


def test_graph_shapes_on_edges_and_collapse():
    program = check_file(SPECS / "transformer_encoder.model")
    expanded = program_dot(program, expand=True)
    assert 'label="[batch, time, 64]"' in expanded and "EncoderLayer(heads=4" in expanded
    collapsed = program_dot(program, expand=False)
    assert "encoder: EncoderLayer × 2" in collapsed and "attention:" not in collapsed


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
@pytest.mark.parametrize("suffix", ["svg", "png"])
def test_graph_renders(tmp_path, suffix):
    out = tmp_path / f"cnn.{suffix}"
    result = runner.invoke(main, ["graph", str(SPECS / "cnn.model"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") if suffix == "png" else b"<svg" in data


def test_graph_without_dot(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    result = runner.invoke(main, ["graph", str(SPECS / "cnn.model"), "-o", str(tmp_path / "m.svg")])
    assert result.exit_code == 1 and "Graphviz" in result.output and "install" in result.output
    result = runner.invoke(main, ["graph", str(SPECS / "cnn.model"), "-o", str(tmp_path / "m.dot")])
    assert result.exit_code == 0 and (tmp_path / "m.dot").read_text().startswith("digraph")


def test_graph_errors(tmp_path):
    result = runner.invoke(main, ["graph", str(SPECS / "cnn.model"), "-o", str(tmp_path / "m.jpg2")])
    assert result.exit_code == 1 and "unknown picture format" in result.output
    result = runner.invoke(main, ["graph", str(SPECS / "cnn.model"), "-o", str(tmp_path / "m.dot"), "--model", "nope"])
    assert result.exit_code == 1 and "no model 'nope'" in result.output


@pytest.mark.parametrize("template", TEMPLATES)
def test_init_templates_check_and_are_formatted(template, tmp_path):
    from dslc.fmt import format_source

    target = tmp_path / f"my-{template}"
    result = runner.invoke(main, ["init", str(target), "--template", template])
    assert result.exit_code == 0, result.output
    spec = tmp_path / f"my-{template}.model"
    program = check_file(spec)
    assert program.exported and (template == "gan" or program.exported[0].spec_name == f"my_{template}")
    assert program.train is not None
    text = spec.read_text()
    assert format_source(text) == text


def test_init_builds(tmp_path):
    from dslc.build import build

    runner.invoke(main, ["init", str(tmp_path / "digits"), "--template", "cnn"])
    result = build(tmp_path / "digits.model", tmp_path / "out", [], export_onnx=True, verify_onnx=False)
    assert result.python_path.exists() and result.models


def test_init_refuses_to_overwrite(tmp_path):
    spec = tmp_path / "x.model"
    spec.write_text("keep me")
    result = runner.invoke(main, ["init", str(tmp_path / "x")])
    assert result.exit_code == 1 and "already exists" in result.output
    assert spec.read_text() == "keep me"


def _commands():
    return sorted(main.commands)


@pytest.mark.parametrize("command", _commands())
def test_every_command_has_help_with_an_example(command):
    result = runner.invoke(main, [command, "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output and f"dslc {command}" in result.output.split("Example:")[1]


def test_main_help_lists_the_tools():
    result = runner.invoke(main, ["--help"])
    for command in ("fmt", "graph", "init", "completion"):
        assert command in result.output
