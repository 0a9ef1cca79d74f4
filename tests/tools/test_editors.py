"""Editor support stays in step with the language: highlighting, VS Code manifest, shell completion."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from dslc.cli import main
from dslc.docgen import keywords
from tests.conftest import ROOT, SPECS
from tests.tools.textmate import Grammar

EDITOR = ROOT / "editors" / "textmate"
GRAMMAR = Grammar(EDITOR / "dslc.tmLanguage.json")
KEYWORD_SCOPES = ("keyword.", "storage.", "constant.language.")
SPEC_FILES = sorted(SPECS.glob("*.model")) + sorted((ROOT / "dslc" / "templates").glob("*.model"))


@pytest.mark.parametrize("spec", SPEC_FILES, ids=lambda p: p.stem)
def test_every_character_of_a_spec_is_highlighted(spec):
    unknown = [t for t in GRAMMAR.tokenize(spec.read_text(encoding="utf-8")) if not t.scope]
    assert not unknown, [(t.line, t.col, t.text) for t in unknown]


def test_every_keyword_of_the_lark_grammar_is_highlighted():
    words = keywords()
    assert {"model", "block", "input", "output", "train", "repeat", "if", "else"} <= set(words)
    for word in words:
        (token,) = GRAMMAR.tokenize(word)
        assert token.scope.startswith(KEYWORD_SCOPES), f"keyword {word!r} is highlighted as {token.scope!r}"


def test_scopes():
    source = 'model m {\n    x = y -> conv: Conv2d(3, padding="same")  # c\n}\n"""doc\nmore"""\n'
    scopes = {t.text: t.scope for t in GRAMMAR.tokenize(source)}
    assert scopes["model"].startswith("storage.type")
    assert scopes["m"].startswith("entity.name.type")
    assert scopes["->"].startswith("keyword.operator")
    assert scopes["conv"].startswith("entity.name.tag")
    assert scopes["Conv2d"].startswith("entity.name.type")
    assert scopes["3"].startswith("constant.numeric")
    assert scopes["# c"].startswith("comment")
    assert scopes["doc"].startswith("string.quoted.triple")
    assert scopes['more"""'].startswith("string.quoted.triple")


def test_numbers_follow_the_lark_terminals():
    lark = (ROOT / "grammar" / "dslc.lark").read_text(encoding="utf-8")
    assert re.search(r"INT\.2: /0\|\[1-9\]\[0-9_\]\*/", lark), "INT changed: update the number rule of the grammar"
    for text in ["0", "1_000", "1e-3", "3.", ".25", "2.5e+2"]:
        (token,) = GRAMMAR.tokenize(text)
        assert token.scope.startswith("constant.numeric"), text


def test_vscode_manifest_points_at_the_grammar():
    manifest = json.loads((EDITOR / "package.json").read_text())
    (grammar,) = manifest["contributes"]["grammars"]
    assert (EDITOR / grammar["path"]).exists() and grammar["scopeName"] == "source.dslc"
    assert ".model" in manifest["contributes"]["languages"][0]["extensions"]
    json.loads((EDITOR / "language-configuration.json").read_text())


def test_vscode_extension_starts_the_language_server():
    manifest = json.loads((EDITOR / "package.json").read_text())
    script = EDITOR / manifest["main"].removeprefix("./")
    assert script.exists() and "onLanguage:dslc" in manifest["activationEvents"]
    assert "vscode-languageclient" in manifest["dependencies"]
    settings = manifest["contributes"]["configuration"]["properties"]
    assert settings["dslc.server.path"]["default"] == "dslc" and settings["dslc.server.args"]["default"] == ["lsp"]
    assert settings["dslc.inlayHints.enabled"]["default"] is True
    code = script.read_text()
    assert 'require("vscode-languageclient/node")' in code and '"dslc.server"' in code
    node = shutil.which("node")
    if node:
        assert subprocess.run([node, "--check", str(script)], capture_output=True).returncode == 0


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(shell):
    result = CliRunner().invoke(main, ["completion", shell])
    assert result.exit_code == 0 and "_DSLC_COMPLETE" in result.output


def test_completion_completes_commands():
    from click.shell_completion import ShellComplete

    names = [c.value for c in ShellComplete(main, {}, "dslc", "_DSLC_COMPLETE").get_completions([], "")]
    assert {"check", "build", "fmt", "graph", "init", "completion"} <= set(names)
