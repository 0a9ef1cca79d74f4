"""Limits: what would make checking slow, huge or deeply recursive is refused at its location."""

from __future__ import annotations

import os

import pytest

from dslc.checker import check_file
from dslc.errors import DslcError
from dslc.parser import MAX_NAME_LENGTH, MAX_SPEC_CHARS

MODEL = "model m {{\n    input x: float32[b, 2]\n    {body}\n}}\n"


def errors_of(path) -> list[str]:
    with pytest.raises(DslcError) as info:
        check_file(path)
    rendered = info.value.render()
    assert all(d.loc is not None and d.loc.line >= 1 for d in info.value.diagnostics), rendered
    return [d.message for d in info.value.diagnostics]


N = 5_000  # deep enough for any recursion limit, small enough for the size limit
DEEP = {
    "parentheses": "output y = " + "(" * N + "x" + ")" * N,
    "lists": "output y = concat(" + "[" * N + "x" + "]" * N + ")",
    "calls": "output y = " + "relu(" * N + "x" + ")" * N,
    "groups": "output y = x -> " + "(ReLU -> " * N + "ReLU" + ")" * N,
    "ifs": "if true { " * N + "y = x" + " }" * N + "\n    output y",
    "negations": "output y = " + "-" * N + "x",
    "powers": "output y = x * (" + "2 ** " * N + "1)",
    "sums": "output y = " + " + ".join(["x"] * 15_000),
}


@pytest.mark.parametrize("kind", sorted(DEEP))
def test_deep_nesting_is_refused_where_it_starts(write_spec, kind):
    (message,) = errors_of(write_spec(MODEL.format(body=DEEP[kind])))
    assert "nest" in message and "levels deep" in message


@pytest.mark.parametrize(
    ("const", "message"),
    [
        ("9" * 5000, "is too large"),
        ("99999999999999999999", "is too large"),
        ("1e999", "is too large"),
        ("2 ** 2 ** 64", "larger than 2**63 - 1"),
        ("10 ** 10 ** 10", "larger than 2**63 - 1"),
        ("2 ** 62 * 4", "larger than 2**63 - 1"),
        ("-(2 ** 62) * 4", "larger than 2**63 - 1"),
        ("1e300 * 1e300", "not a finite number"),
        ("2.0 ** 5000", "too large"),
        ("(-8) ** 0.5", "not a real number"),
        ('"a" * 1000000000', "at most 10,000"),
        ("(1, 2) * 100000000", "at most 10,000"),
        ("1 // 0", "division by zero"),
        ("0 ** -1", "division by zero"),
    ],
)
def test_constant_arithmetic_is_bounded(write_spec, const, message):
    spec = write_spec(f"const c = {const}\n" + MODEL.format(body="output y = x"))
    (found,) = errors_of(spec)
    assert message in found


def test_long_names_and_large_specs_are_refused(write_spec):
    name = "a" * (MAX_NAME_LENGTH + 1)
    assert "name longer than" in errors_of(write_spec(MODEL.format(body=f"{name} = x\n    output y = x")))[0]
    long_name = "b" * 50_000
    assert "name longer than" in errors_of(write_spec(MODEL.format(body=f"output y = {long_name}")))[0]
    padding = "# padding\n" * (MAX_SPEC_CHARS // 10 + 1)
    assert "longer than" in errors_of(write_spec(padding + MODEL.format(body="output y = x")))[0]
    # a long name inside a string or comment is text, not a name
    check_file(write_spec(f"# {name}\n" + MODEL.format(body="output y = x")))


def test_bad_utf8_is_located(tmp_path):
    spec = tmp_path / "latin1.model"
    spec.write_bytes(b"model m {\n    input x: float32[b, 2]  # caf\xe9\n    output y = x\n}\n")
    with pytest.raises(DslcError) as info:
        check_file(spec)
    (diag,) = info.value.diagnostics
    assert (diag.loc.line, diag.loc.col) == (2, 34)
    assert "not UTF-8" in diag.message and "0xe9" in diag.message


def test_special_files_are_not_read(tmp_path):
    fifo = tmp_path / "pipe.model"
    os.mkfifo(fifo)
    with pytest.raises(DslcError, match="not a regular file"):
        check_file(fifo)  # reading a FIFO with no writer would block forever


def test_many_errors_are_counted_not_all_printed(write_spec):
    body = "\n    ".join(f"h{i} = unknown{i}" for i in range(200)) + "\n    output y = x"
    with pytest.raises(DslcError) as info:
        check_file(write_spec(MODEL.format(body=body)))
    assert len(info.value.diagnostics) == 200
    assert "... and 150 more errors" in info.value.render()


@pytest.mark.parametrize(
    ("source", "glued"),
    [("modelm{\n input x: float32[b, 2]\n output y = x\n}\n", "'modelm'"), ("consthidden = 3\n", "'consthidden'")],
)
def test_keywords_do_not_glue_to_names(write_spec, source, glued):
    (message,) = errors_of(write_spec(source + MODEL.format(body="output y = x").replace("model m", "model k")))
    assert glued in message and "reads as the keyword" in message


def test_reshape_takes_sizes_not_strings(write_spec):
    (message,) = errors_of(write_spec(MODEL.format(body='output y = x -> Reshape(b, "a" * 2)')))
    assert "takes sizes" in message


def test_blocks_that_fan_out_with_new_arguments_are_bounded(write_spec):
    blocks = ["block B0(k: int) {\n    input x: float32[batch, 4]\n    output y = x * 1.0\n}"]
    for i in range(1, 15):  # 2**14 distinct uses if nothing bounded them
        blocks.append(
            f"block B{i}(k: int) {{\n    input x: float32[batch, 4]\n    h = x -> B{i - 1}(2 * k)\n"
            f"    output y = h -> B{i - 1}(2 * k + 1)\n}}"
        )
    spec = write_spec(
        "\n".join(blocks) + "\n" + MODEL.format(body="output y = x -> B14(0)").replace("[b, 2]", "[batch, 4]")
    )
    assert any("distinct block uses" in m for m in errors_of(spec))


def test_nested_repeats_are_bounded(write_spec):
    spec = write_spec(
        "block R() {\n    input x: float32[b, 2]\n    output y = x -> repeat 1024 ReLU\n}\n"
        + MODEL.format(body="output y = x -> repeat 1024 R()")
    )
    assert any("more than 20,000 layers" in m for m in errors_of(spec))


@pytest.mark.parametrize("target", ["folder", ".", "", "fifo", "missing"])
def test_imports_of_what_is_not_a_spec_are_located(write_spec, tmp_path, target):
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "fifo")
    spec = write_spec(f'import "{target}"\n' + MODEL.format(body="output y = x"))
    (message,) = errors_of(spec)
    assert message.startswith("cannot import")
