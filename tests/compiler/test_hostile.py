"""Hostile specs: nothing from a spec may run as Python, however it is smuggled in."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dslc.build import build, load_generated
from dslc.checker import check_file
from dslc.emit_torch import emit_program
from dslc.errors import DslcError

PAYLOAD = "__import__('pathlib').Path({sentinel!r}).write_text('pwned')"


def payload(tmp_path) -> tuple[str, object]:
    sentinel = tmp_path / "pwned"
    return PAYLOAD.format(sentinel=str(sentinel)), sentinel


def compile_and_run(path, tmp_path):
    """Generate, import and run every model: the payload must not execute."""
    program = check_file(path)
    source = emit_program(program)
    compile(source, str(path), "exec")
    result = build(path, tmp_path / "out")
    module = load_generated(result.python_path)
    for name in module.MODELS:
        module.MODELS[name]()
    return source


def test_docstrings_cannot_close_the_string(write_spec, tmp_path):
    code, sentinel = payload(tmp_path)
    spec = write_spec(f'''
        """Evil: \\""" + {code} + \\"""  and a backslash at the end \\\\"""
        model m {{
            """ends with a quote" \\\\x00 \\u2028 {code} """
            input x: float32[batch, 2]
            output y = x
        }}
    ''')
    compile_and_run(spec, tmp_path)
    assert not sentinel.exists()


def test_comments_cannot_break_lines(write_spec, tmp_path):
    code, sentinel = payload(tmp_path)
    for breaker in ("\r", "\x0b", "\x0c", "\x1c", "\x85", "\u2028"):
        spec = write_spec(
            f"model m {{\n    input x: float32[batch, 2]  # doc{breaker}{code}\n"
            f"    # comment{breaker}{code}\n    output y = x -> Linear(2)  # trailing{breaker}{code}\n}}\n"
        )
        try:
            source = compile_and_run(spec, tmp_path)
        except DslcError:
            continue  # refused ("\r" reads as a line break, leaving the payload as bad syntax): also safe
        finally:
            assert not sentinel.exists()
        assert not any(line.strip().startswith("__import__") for line in source.split("\n"))


def test_the_training_script_numbers_lines_as_the_lexer_does(write_spec):
    """`# line N:` comments count only \\n as a line break: a U+2028 or U+0085 in a comment does not shift them."""
    from dslc.emit_train import emit_train_script

    spec = write_spec(
        "model m {\n    input features: float32[batch, 10]  # a\u2028b\n    output y = features -> Linear(1)\n}\n"
        "train {\n    data = diabetes()  # c\x85d\n    loss = mse(y, target)\n}\n"
    )
    script = emit_train_script(check_file(spec))
    assert "    # line 7: loss = mse(y, target)\n" in script


def test_string_arguments_are_escaped_or_refused(write_spec, tmp_path):
    code, sentinel = payload(tmp_path)
    spec = write_spec(
        f"model m {{\n input x: float32[b, 2, 8]\n output y = x -> Conv1d(2, 3, padding=\"same') + {code} + ('\")\n}}\n"
    )
    with pytest.raises(DslcError, match="padding must be"):
        check_file(spec)
    spec = write_spec(f'model m {{\n input x: float32[b, 4]\n output y = x -> GELU(approximate="{code}")\n}}\n')
    with pytest.raises(DslcError, match="must be one of"):
        check_file(spec)
    assert not sentinel.exists()


@pytest.mark.parametrize(
    "name",
    ["__import__", "__class__", "self", "torch", "nn", "F", "math", "import", "lambda", "def", "MODELS", "super"],
)
def test_dangerous_identifiers_are_refused(write_spec, name):
    spec = write_spec(f"model m {{\n input x: float32[b, 2]\n {name} = x\n output y = x\n}}\n")
    with pytest.raises(DslcError) as info:
        check_file(spec)
    assert info.value.diagnostics[0].loc.line in (2, 3)


def test_names_cannot_hold_code(write_spec):
    for text in ("model m; import os {", "model m { input x: float32[b, 2] output y = x }; os.system('x')"):
        with pytest.raises(DslcError, match="syntax error|unexpected character"):
            check_file(write_spec(text))


def test_deep_nesting_is_a_clean_error(write_spec):
    spec = write_spec("model m {\n input x: float32[b, 2]\n output y = " + "(" * 3000 + "x" + ")" * 3000 + "\n}\n")
    result = subprocess.run([sys.executable, "-m", "dslc.cli", "check", str(spec)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "nest more than" in result.stderr


def test_huge_repeat_is_refused(write_spec):
    spec = write_spec("model m {\n input x: float32[b, 2]\n output y = x -> repeat 100000000 ReLU\n}\n")
    with pytest.raises(DslcError, match="repeat"):
        check_file(spec)


def test_train_section_strings_and_comments_stay_data(tmp_path):
    """The generated training script escapes spec strings (here a data file name) and comments."""
    import ast as pyast

    from dslc.emit_train import emit_train_script

    evil_name = "d\"); __import__('os').getcwd(); (\".csv"
    (tmp_path / evil_name).write_text("a,b,c,t\n1,2,3,4\n5,6,7,8\n9,10,11,12\n")
    dsl_name = evil_name.replace('"', '\\"')
    spec = tmp_path / "t.model"
    spec.write_text(
        "model m {\n input features: float32[batch, 3]\n output y = features -> Linear(1)\n}\n"
        "train {\n"
        f'    data = csv("{dsl_name}", features=["a", "b", "c"], target="t")  # """ + __import__("os").getcwd() + """\n'
        "    loss = mse(y, target)\n"
        "}\n"
    )
    program = check_file(spec)
    script = emit_train_script(program)
    tree = pyast.parse(script)  # valid Python
    calls = [n for n in pyast.walk(tree) if isinstance(n, pyast.Call) and getattr(n.func, "id", "") == "__import__"]
    assert calls == []
    assert evil_name in {
        n.value for n in pyast.walk(tree) if isinstance(n, pyast.Constant) and isinstance(n.value, str)
    }
