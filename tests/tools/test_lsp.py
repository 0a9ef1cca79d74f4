"""`dslc lsp` over real JSON-RPC: a subprocess speaking LSP on stdio, driven by tests/tools/lsp_client.py.

Diagnostics are the checker's (the CLI's messages, hints and `see:` links, located on the offending
span); hover gives shapes and parameter counts; completion knows the registry's layers with their
arguments; definitions, symbols, formatting and inlay hints work; and typing every shipped spec one
character at a time, with a request after every keystroke, gets no error response and no crash.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from dslc.cli import main
from tests.conftest import ROOT, SPECS
from tests.tools.lsp_client import LspClient

pytest.importorskip("pygls")

SPEC_FILES = sorted(SPECS.glob("*.model"))


@pytest.fixture(scope="module")
def client():
    c = LspClient(ROOT)
    yield c
    assert c.close() == 0


def _position(text: str, needle: str, delta: int = 0) -> dict:
    offset = text.index(needle) + delta
    line = text.count("\n", 0, offset)
    return {"line": line, "character": offset - (text.rfind("\n", 0, offset) + 1)}


def _doc(uri: str) -> dict:
    return {"textDocument": {"uri": uri}}


def _open(client: LspClient, path: Path, text: str) -> str:
    uri = path.as_uri()
    client.version = getattr(client, "version", 0) + 1
    client.open(uri, text, client.version)
    return uri


def test_initialize_announces_the_features(client):
    caps = client.initialized["capabilities"]
    for feature in ("hoverProvider", "completionProvider", "definitionProvider", "documentSymbolProvider",
                    "documentFormattingProvider", "inlayHintProvider"):  # fmt: skip
        assert caps.get(feature), feature
    assert client.initialized["serverInfo"]["name"] == "dslc"


def test_a_spec_with_an_error_gets_the_located_diagnostic_of_the_cli(client, tmp_path):
    source = (SPECS / "cnn.model").read_text().replace("-> Flatten\n", "\n")  # Linear on a 4-D tensor
    path = tmp_path / "cnn.model"
    path.write_text(source)
    uri = _open(client, path, source)
    (diag,) = client.diagnostics(uri, client.version)
    cli = CliRunner().invoke(main, ["check", str(path)])
    message = re.search(r"error: (.*)", cli.output).group(1)
    assert diag["message"].split("\n")[0] == message
    assert "hint: flatten first?" in diag["message"] and "see: docs/reference.md#op-linear" in diag["message"]
    assert diag["severity"] == 1 and diag["source"] == "dslc" and diag["code"] == "op-linear"
    start = _position(source, "Linear(128)")
    assert diag["range"]["start"] == start
    assert diag["range"]["end"] == {"line": start["line"], "character": start["character"] + len("Linear(128)")}


def test_several_errors_are_several_diagnostics_and_a_fix_clears_them(client, tmp_path):
    source = "model m {\n    input x: float32[batch, 4]\n    h = x -> Lineer(3)\n    output y = x -> Conv2d(3, kernel=3)\n}\n"
    uri = _open(client, tmp_path / "two.model", source)
    diags = client.diagnostics(uri, client.version)
    assert len(diags) == 2
    assert "unknown layer 'Lineer'" in diags[0]["message"] and "did you mean 'Linear'?" in diags[0]["message"]
    assert diags[0]["range"]["start"] == _position(source, "Lineer")
    assert diags[1]["range"]["start"] == _position(source, "Conv2d")
    client.version += 1
    fixed = source.replace("Lineer", "Linear").replace("Conv2d(3, kernel=3)", "Linear(2)")
    client.change(uri, fixed, client.version)
    assert client.diagnostics(uri, client.version) == []


def test_a_syntax_error_while_typing(client, tmp_path):
    source = "model m {\n    input x: float32[batch, 4]\n    output y = x ->\n}\n"
    uri = _open(client, tmp_path / "typing.model", source)
    (diag,) = client.diagnostics(uri, client.version)
    assert diag["message"].startswith("syntax error: unexpected '}'")
    assert diag["range"]["start"] == {"line": 3, "character": 0}


def test_an_error_in_an_imported_file_is_shown_at_the_import(client, tmp_path):
    (tmp_path / "blocks.model").write_text(
        "block B(n: int) {\n    input x: float32[b, f]\n    output y = x -> Linear(n, bia=true)\n}\n"
    )
    source = 'import "blocks.model"\n\nmodel m {\n    input x: float32[batch, 4]\n    output y = x -> B(3)\n}\n'
    uri = _open(client, tmp_path / "main.model", source)
    (diag,) = client.diagnostics(uri, client.version)
    assert diag["message"].startswith(f"in {tmp_path / 'blocks.model'}:3:35: Linear has no argument 'bia'")
    assert diag["range"]["start"] == {"line": 0, "character": 0}


def test_hover_gives_shapes_parameters_and_docs(client):
    source = (SPECS / "cnn.model").read_text()
    uri = _open(client, SPECS / "cnn.model", source)
    client.diagnostics(uri, client.version)
    hover = client.request("textDocument/hover", {**_doc(uri), "position": _position(source, "features =")})
    assert "float32[batch, 3136]" in hover["contents"]["value"]
    hover = client.request("textDocument/hover", {**_doc(uri), "position": _position(source, "Conv2d(64")})
    text = hover["contents"]["value"]
    assert "Conv2d(out_channels, kernel, stride=1" in text and "2-D convolution" in text
    assert "float32[batch, 64, 14, 14]" in text and "18,496 parameters" in text
    hover = client.request("textDocument/hover", {**_doc(uri), "position": _position(source, "classes]")})
    assert "const classes = 10" in hover["contents"]["value"] and "--set classes=" in hover["contents"]["value"]
    hover = client.request("textDocument/hover", {**_doc(uri), "position": _position(source, "label)")})
    assert "int64[batch]" in hover["contents"]["value"]  # a data set field in the train section


def test_hover_in_a_block_shows_each_use(client):
    source = (SPECS / "resnet18.model").read_text()
    uri = _open(client, SPECS / "resnet18.model", source)
    client.diagnostics(uri, client.version)
    hover = client.request("textDocument/hover", {**_doc(uri), "position": _position(source, "h + shortcut")})
    value = hover["contents"]["value"]
    assert "BasicBlock(planes=64, stride=1)" in value and "float32[batch, 64, 56, 56]" in value
    assert "BasicBlock(planes=512, stride=2)" in value and "float32[batch, 512, 7, 7]" in value
    use = source.index("BasicBlock(128, stride=2)")
    hover = client.request("textDocument/hover", {**_doc(uri), "position": _position(source, source[use : use + 25])})
    value = hover["contents"]["value"]
    assert "block BasicBlock(planes: int, stride: int = 1)" in value and "float32[batch, 128, 28, 28]" in value
    assert "230,144 parameters" in value


def test_completion_after_an_arrow_lists_layers_with_their_arguments(client, tmp_path):
    source = (SPECS / "cnn.model").read_text().replace("-> Flatten\n", "-> Con\n")
    uri = _open(client, tmp_path / "complete.model", source)
    client.diagnostics(uri, client.version)
    result = client.request("textDocument/completion", {**_doc(uri), "position": _position(source, "-> Con\n", 6)})
    items = {i["label"]: i for i in result["items"]}
    assert {"Conv1d", "Conv2d", "ConvTranspose2d"} <= set(items)
    conv = items["Conv2d"]
    assert conv["detail"].startswith(
        "Conv2d(out_channels, kernel, stride=1, padding=0, dilation=1, groups=1, bias=true"
    )
    assert conv["textEdit"]["newText"] == "Conv2d(${1:out_channels}, ${2:kernel})$0"
    assert conv["textEdit"]["range"]["start"] == _position(source, "Con\n")
    assert "2-D convolution" in conv["documentation"]["value"]


def test_completion_of_arguments_names_and_train_settings(client):
    source = (SPECS / "cnn.model").read_text()
    edited = source.replace('Conv2d(32, kernel=3, padding="same")', "Conv2d(32, )")
    uri = _open(client, SPECS / "cnn.model", edited)
    result = client.request("textDocument/completion", {**_doc(uri), "position": _position(edited, "Conv2d(32, )", 11)})
    labels = [i["label"] for i in result["items"]]
    assert "kernel=" in labels and "stride=" in labels and "out_channels=" not in labels  # given by position
    stride = next(i for i in result["items"] if i["label"] == "stride=")
    assert "= 1" in stride["detail"]
    edited = source.replace("    epochs = 8\n", "    ep\n")
    client.version += 1
    client.change(uri, edited, client.version)
    result = client.request("textDocument/completion", {**_doc(uri), "position": _position(edited, "    ep\n", 6)})
    assert "epochs" in [i["label"] for i in result["items"]]
    edited = source.replace("loss = cross_entropy(logits, label)", "loss = cross_entropy(logits, la)")
    client.version += 1
    client.change(uri, edited, client.version)
    result = client.request("textDocument/completion", {**_doc(uri), "position": _position(edited, "la)", 2)})
    label = next(i for i in result["items"] if i["label"] == "label")
    assert "int64[batch]" in label["detail"]  # a data set field


def test_definition_of_a_block_use_a_constant_and_an_import(client, tmp_path):
    source = (SPECS / "resnet18.model").read_text()
    uri = _open(client, SPECS / "resnet18.model", source)
    client.diagnostics(uri, client.version)
    use = source.index("BasicBlock(", source.index("model resnet18"))
    (loc,) = client.request(
        "textDocument/definition", {**_doc(uri), "position": _position(source, source[use : use + 12], 2)}
    )
    assert loc["uri"] == uri and loc["range"]["start"] == _position(source, "BasicBlock(", 0)
    assert source.split("\n")[loc["range"]["start"]["line"]].startswith("block BasicBlock")
    (tmp_path / "blocks.model").write_text(
        "const width = 8\n\nblock B(n: int) {\n    input x: float32[b, f]\n    output y = x -> Linear(n)\n}\n"
    )
    main_source = 'from "blocks.model" import B, width\n\nmodel m {\n    input x: float32[batch, 4]\n    output y = x -> B(width)\n}\n'
    uri = _open(client, tmp_path / "main.model", main_source)
    client.diagnostics(uri, client.version)
    (loc,) = client.request("textDocument/definition", {**_doc(uri), "position": _position(main_source, "B(width)")})
    assert loc["uri"] == (tmp_path / "blocks.model").as_uri() and loc["range"]["start"] == {"line": 2, "character": 6}
    (loc,) = client.request("textDocument/definition", {**_doc(uri), "position": _position(main_source, "width)")})
    assert loc["range"]["start"] == {"line": 0, "character": 6}
    (loc,) = client.request(
        "textDocument/definition", {**_doc(uri), "position": _position(main_source, "blocks.model", 1)}
    )
    assert loc["uri"] == (tmp_path / "blocks.model").as_uri()


def test_definition_of_a_model_call_in_a_train_step(client):
    source = (SPECS / "gan.model").read_text()
    uri = _open(client, SPECS / "gan.model", source)
    client.diagnostics(uri, client.version)
    train = source.index("train {")
    call = source.index("discriminator(", train)
    (loc,) = client.request(
        "textDocument/definition", {**_doc(uri), "position": _position(source, source[call : call + 14], 1)}
    )
    assert source.split("\n")[loc["range"]["start"]["line"]].startswith("model discriminator")


def test_document_symbols(client):
    source = (SPECS / "gan.model").read_text()
    uri = _open(client, SPECS / "gan.model", source)
    symbols = client.request("textDocument/documentSymbol", _doc(uri))
    names = [s["name"] for s in symbols]
    assert "generator" in names and "discriminator" in names and "train" in names
    train = next(s for s in symbols if s["name"] == "train")
    assert [c["name"] for c in train["children"] if c["kind"] == 6] == ["discriminator", "generator"]  # the steps
    generator = next(s for s in symbols if s["name"] == "generator")
    assert any(c["name"] == "z" and c["kind"] == 8 for c in generator["children"])  # its input


def test_formatting_is_dslc_fmt(client, tmp_path):
    source = "model m {input x: float32[b, 2]\noutput y = x}\n"
    uri = _open(client, tmp_path / "fmt.model", source)
    (edit,) = client.request("textDocument/formatting", {**_doc(uri), "options": {"tabSize": 4, "insertSpaces": True}})
    assert edit["newText"] == "model m {\n    input x: float32[b, 2]\n    output y = x\n}\n"
    assert edit["range"] == {"start": {"line": 0, "character": 0}, "end": {"line": 2, "character": 0}}
    client.version += 1
    client.change(uri, "model m {", client.version)  # a syntax error: nothing to format
    assert (
        client.request("textDocument/formatting", {**_doc(uri), "options": {"tabSize": 4, "insertSpaces": True}}) == []
    )


def test_inlay_hints_give_each_pipeline_lines_output_and_can_be_turned_off(client):
    source = (SPECS / "cnn.model").read_text()
    uri = _open(client, SPECS / "cnn.model", source)
    client.diagnostics(uri, client.version)
    everything = {**_doc(uri), "range": {"start": {"line": 0, "character": 0}, "end": {"line": 100, "character": 0}}}
    hints = client.request("textDocument/inlayHint", everything)
    by_line = {h["position"]["line"]: h["label"] for h in hints}
    lines = source.split("\n")
    first = next(n for n, line in enumerate(lines) if "Conv2d(32" in line)
    assert by_line[first] == "float32[batch, 32, 14, 14]" and by_line[first + 1] == "float32[batch, 64, 7, 7]"
    assert by_line[first + 2] == "float32[batch, 3136]"  # -> Flatten
    assert hints[0]["position"]["character"] == len(lines[first])
    client.notify("workspace/didChangeConfiguration", {"settings": {"dslc": {"inlayHints": {"enabled": False}}}})
    assert not client.request("textDocument/inlayHint", everything)
    client.notify("workspace/didChangeConfiguration", {"settings": {"dslc": {"inlayHints": {"enabled": True}}}})
    assert client.request("textDocument/inlayHint", everything)


def test_positions_are_utf16_code_units(client, tmp_path):
    line = '    output y = x -> Linear(3, bias=("𝛼𝛽" == "")) -> Lineer'
    source = "model m {\n    input x: float32[batch, 4]\n" + line + "\n}\n"
    uri = _open(client, tmp_path / "utf16.model", source)
    (diag,) = client.diagnostics(uri, client.version)
    assert diag["range"]["start"] == {"line": 2, "character": line.index("Lineer") + 2}  # two surrogate pairs


def test_no_errors_were_logged(client):
    assert client.errors_logged() == []


# ---------------------------------------------------------------- every prefix of every spec

KINDS = ["hover", "completion", "documentSymbol", "inlayHint", "definition", "formatting"]
WINDOW = 64  # requests in flight: the replay does not wait for each answer before the next keystroke


def _request(kind: str, uri: str, position: dict) -> tuple[str, dict]:
    doc = _doc(uri)
    before = {"line": position["line"], "character": max(position["character"] - 1, 0)}
    if kind in ("hover", "definition"):
        return f"textDocument/{kind}", {**doc, "position": before}
    if kind == "completion":
        return "textDocument/completion", {**doc, "position": position}
    if kind == "inlayHint":
        whole = {"start": {"line": 0, "character": 0}, "end": {"line": position["line"] + 1, "character": 0}}
        return "textDocument/inlayHint", {**doc, "range": whole}
    if kind == "formatting":
        return "textDocument/formatting", {**doc, "options": {"tabSize": 4, "insertSpaces": True}}
    return "textDocument/documentSymbol", doc


@pytest.fixture(scope="module")
def typist():
    """One server for the replays (each spec is a document of its own): a crash fails every later spec too."""
    c = LspClient(ROOT)
    yield c
    assert c.close() == 0


# The two smallest specs in the fast suite, every shipped spec in the slow step (about 70 s on 2 cores).
FAST_TYPED = {"mlp", "policy"}


@pytest.mark.parametrize(
    "spec",
    [p if p.stem in FAST_TYPED else pytest.param(p, marks=pytest.mark.slow) for p in SPEC_FILES],
    ids=lambda p: p.stem,
)
def test_typing_a_spec_one_character_at_a_time(spec, typist):
    """Every prefix of the spec is sent as a change, each followed by a request (the kinds in turn, not waiting
    for the answer before the next keystroke): every request answers without an error, the server stays up,
    and the finished text gets the CLI's verdict."""
    source = spec.read_text(encoding="utf-8")
    client = typist
    logged = len(client.errors_logged())
    uri = spec.as_uri()
    client.open(uri, "", 0)
    pending: list[tuple[int, str]] = []
    line = character = 0
    for n, char in enumerate(source, start=1):
        client.change(uri, source[:n], n)
        if char == "\n":
            line, character = line + 1, 0
        else:
            character += 1 + (ord(char) > 0xFFFF)
        method, params = _request(KINDS[n % len(KINDS)], uri, {"line": line, "character": character})
        pending.append((client.send_request(method, params), method))
        if len(pending) >= WINDOW:
            for request_id, method in pending[: WINDOW // 2]:
                answer = client.response(request_id)
                assert "error" not in answer, (method, answer["error"])
            del pending[: WINDOW // 2]
    for request_id, method in pending:
        answer = client.response(request_id)
        assert "error" not in answer, (method, answer["error"])
    assert client.diagnostics(uri, len(source), timeout=60) == []  # the shipped spec checks
    assert client.errors_logged()[logged:] == [], client.errors_logged()[logged][:2000]
    client.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
    assert client.process.poll() is None
