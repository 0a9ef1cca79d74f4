"""Spec text never becomes code: the two injection holes found from outside, and a check that every
string-bearing construct of the language, and every shipped spec, stays inside literals and comments."""

from __future__ import annotations

import io
import tokenize
from pathlib import Path

import pytest

from dslc.build import build
from dslc.checker import check_file
from dslc.emit_torch import emit_program
from dslc.emit_train import emit_train_script
from dslc.errors import DslcError
from dslc.pytext import module_name
from tests.conftest import SPECS

TINY_TRAIN = """
model m {
    input features: float32[batch, 10]
    output prediction = features -> Linear(1)
}
train {
    data = diabetes(validation=0.2)
    loss = mse(prediction, target)
    optimizer = sgd(lr=0.01)
    epochs = 1
}
"""


def code_tokens(source: str) -> list[str]:
    """The text of every token of generated Python that is code, not a string or a comment."""
    skip = {tokenize.STRING, tokenize.COMMENT}  # Python 3.11: no f-string tokens; generated code has no f-strings
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return [t.string for t in tokens if t.type not in skip]


def assert_stays_data(source: str, name: str) -> None:
    """`name` (a Python name the payload calls) is no token of the generated code's own."""
    compile(source, "<generated>", "exec")
    assert name not in code_tokens(source), f"{name!r} reached generated code outside literals and comments"


def test_string_block_argument_cannot_close_the_class_docstring(write_spec, tmp_path):
    """Hole 1: a str block parameter landed unescaped in the generated class docstring."""
    sentinel = tmp_path / "PWNED"
    attack = f'"""+str(__import__("pathlib").Path({str(sentinel)!r}).write_text("1"))+"""'
    spec = write_spec(
        "block Act(mode: str) {\n    input x: float32[batch, 4]\n    output y = x -> ReLU\n}\n"
        f"model m {{\n    input x: float32[batch, 4]\n    output y = x -> Act({_dsl_string(attack)})\n}}\n"
    )
    source = emit_program(check_file(spec))
    assert_stays_data(source, "__import__")
    build(spec, tmp_path / "out")  # imports the generated module and runs it for verification
    assert not sentinel.exists()


def _dsl_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.mark.parametrize(
    "stem",
    [
        'os import path; open("PWNED_stem","w").write("1"); from os',
        "my-net",
        "2layer",
        "torch",
        "import",
        "..",
        "spaces and ünïcode",
    ],
)
def test_file_names_are_never_code(tmp_path, stem, monkeypatch):
    """Hole 2: the training script imported the generated module by the spec's raw file name."""
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / f"{stem}.model"
    spec.write_text(TINY_TRAIN, encoding="utf-8")
    program = check_file(spec)
    name = program.module_name
    assert name.isidentifier() and name == module_name(stem)
    script = emit_train_script(program)
    assert f"from {name} import MODELS" in script
    assert_stays_data(script, "open")
    assert_stays_data(emit_program(program), "open")

    from dslc.training.command import prepare_run, run_script

    out = tmp_path / "run"
    run_script(prepare_run(spec, out, [], resume=False), ["--out", str(out), "--quiet", "--epochs", "1"], nproc=1)
    assert (out / "m.onnx").exists()
    assert not list(tmp_path.rglob("PWNED_stem"))


@pytest.mark.parametrize(
    ("stem", "expected"),
    [("cnn", "cnn"), ("my-net", "my_net"), ("2layer", "model_2layer"), ("torch", "torch_model"), ("os", "os_model")],
)
def test_module_names(stem, expected):
    assert module_name(stem) == expected


PAYLOAD = '__import__("os").system("echo PWNED")'
ESCAPES = ['"""', "'''", "\\", "\\n", "\r", "\x00", "\u2028", "\u202e", "\x85", "#", "\\x41", "\\N{BULLET}"]


def every_string_construct(payload: str) -> str:
    """A spec that puts `payload` into every place of the grammar that holds free text."""
    s = _dsl_string(payload)
    doc = payload.replace("\\", "\\\\").replace('"', '\\"')
    return f'''"""File docstring {doc}"""
# leading comment {payload}
const label = {s}
block Act(mode: str = {s}) {{
    """Block docstring {doc}"""
    input x: float32[batch, 10]  # input comment {payload}
    # statement comment {payload}
    output y = x -> ReLU  # trailing comment {payload}
}}
model m {{
    """Model docstring {doc}"""
    input features: float32[batch, 10]  # {payload}
    h = features -> Act(label) -> Act({s}) -> Act(mode={s})
    output prediction = h -> Linear(1)  # {payload}
}}
train {{
    """Train docstring {doc}"""
    data = diabetes(validation=0.2)  # {payload}
    loss = mse(prediction, target)  # {payload}
    optimizer = sgd(lr=0.01)
    epochs = 1
}}
'''


@pytest.mark.parametrize("escape", ESCAPES)
def test_every_string_construct_stays_data(write_spec, tmp_path, escape):
    payload = f"{escape}{PAYLOAD}{escape}"
    spec = write_spec(every_string_construct(payload).replace("\r", " " if escape == "\r" else "\r"))
    try:
        program = check_file(spec)
    except DslcError as exc:  # a spec the language refuses is safe too, but it must say where
        assert all(d.loc is not None for d in exc.diagnostics)
        return
    for source in (emit_program(program), emit_train_script(program)):
        assert_stays_data(source, "system")


@pytest.mark.parametrize("spec", sorted(SPECS.glob("*.model")), ids=lambda p: p.stem)
def test_shipped_spec_text_stays_in_literals(spec: Path):
    """No string, docstring or comment of a shipped spec appears in its generated code outside string
    literals and comments (compared with all whitespace removed, as a code injection would appear)."""
    program = check_file(spec)
    sources = [emit_program(program)] + ([emit_train_script(program)] if program.train is not None else [])
    texts = [_squeeze(t) for t in _free_text(spec.read_text(encoding="utf-8"))]
    for source in sources:
        code = _squeeze("".join(code_tokens(source)))
        leaked = [t for t in texts if len(t) >= 6 and not t.isidentifier() and t in code]
        assert not leaked, f"{spec.name}: spec text in generated code: {leaked}"


def _free_text(source: str) -> list[str]:
    """The spec's string literals (quotes stripped) and comments, as the lexer finds them."""
    import ast as pyast

    from dslc.parser import _lark

    tokens = list(_lark().lex(source, dont_ignore=True))
    strings = [pyast.literal_eval(t.value) for t in tokens if t.type == "STRING"]
    return strings + [t.value[1:] for t in tokens if t.type == "COMMENT"]


def _squeeze(text: str) -> str:
    return "".join(text.split())
