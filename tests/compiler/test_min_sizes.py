"""Ops that need an input size to be at least some minimum (`Inferred.at_least`): reflection padding narrower
than the size it reflects, topk's k, normalisation over more than one position. A fixed size below the minimum
is a located error at check; a symbolic one becomes a size rule (`require ... >=` in `dslc check --ir`), and build
verifies at sizes meeting it, where before the rule verification ran PyTorch at sizes it refuses."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest

from dslc import ir_text
from dslc.build import build
from dslc.checker import check_file
from dslc.errors import DslcError
from dslc.layers import REGISTRY, Inferred
from tests.conftest import ROOT

# A kernel of 8 leaves `time - 7`: 1 at verification's smallest length (8) unless a rule raises it.
SYMBOLIC = {
    "ReflectionPad1d": (
        "input x: float32[batch, 4, time]\noutput y = x -> Conv1d(4, kernel=8) -> ReflectionPad1d(3)",
        [("time - 7", 4)],
    ),
    "ReflectionPad2d": (
        "input x: float32[batch, 2, h, w]\noutput y = x -> Conv2d(2, kernel=8) -> ReflectionPad2d((1, 2, 3, 0))",
        [("h - 7", 4), ("w - 7", 3)],
    ),
    "pad_reflect": (
        'input x: float32[batch, 4, time]\nh = x -> Conv1d(4, kernel=8)\noutput y = pad(h, (0, 5), mode="reflect")',
        [("time - 7", 6)],
    ),
    "topk": ("input x: float32[batch, time]\nv, i = topk(x, 12, dim=time)\noutput y = v\noutput z = i", [("time", 12)]),
    "topk_after_slice": (
        "input x: float32[batch, time, 3]\nv, i = topk(x[:, 4:], 9, dim=1)\noutput y = v",
        [("time - 4", 9)],
    ),
    "GroupNorm": (
        "input x: float32[batch, 4, time]\noutput y = x -> Conv1d(4, kernel=8) -> GroupNorm(4)",
        [("time - 7", 2)],
    ),
    "InstanceNorm1d": (
        "input x: float32[batch, 4, time]\noutput y = x -> Conv1d(4, kernel=8) -> InstanceNorm1d(affine=true)",
        [("time - 7", 2)],
    ),
    "InstanceNorm2d": (
        "input x: float32[batch, 2, h, w]\noutput y = x -> Conv2d(2, kernel=8) -> InstanceNorm2d",
        [("-7*h + h*w - 7*w + 49", 2)],
    ),
}


def _model(body: str) -> str:
    return "model m {\n" + "".join(f"    {line}\n" for line in body.split("\n")) + "}\n"


def _rules(module) -> set[tuple[str, int]]:
    return {(str(rule.dim), rule.at_least) for rule in module.size_rules}


@pytest.mark.parametrize("case", sorted(SYMBOLIC))
def test_a_symbolic_size_gets_a_rule_and_builds(write_spec, tmp_path, case):
    body, rules = SYMBOLIC[case]
    spec = write_spec(_model(body))
    program = check_file(spec)
    module = program.model("m")
    assert set(rules) <= _rules(module), _rules(module)
    text = ir_text.dump(program)
    for dim, at_least in rules:
        assert f"require {dim} >= {at_least}" in text, text
    for rule in module.size_rules:
        assert rule.loc.line >= 2 and rule.why  # located at the op needing it
    result = build(spec, tmp_path / "out")
    (report,) = result.models
    assert report.verified


def test_a_group_of_several_channels_needs_no_rule(write_spec):
    """GroupNorm(2) of 4 channels normalises 2 values a position: one position is enough."""
    module = check_file(write_spec(_model("input x: float32[batch, 4, time]\noutput y = x -> GroupNorm(2)"))).model("m")
    assert module.size_rules == []


def test_a_product_of_sizes_that_is_always_large_enough_needs_no_rule(write_spec):
    module = check_file(write_spec(_model("input x: float32[batch, 3, 2, w]\noutput y = x -> InstanceNorm2d"))).model(
        "m"
    )
    assert module.size_rules == []


def test_a_reused_layer_records_the_rule_of_its_second_input(write_spec, tmp_path):
    spec = write_spec(
        _model(
            "input x: float32[batch, 4, time]\n"
            "a = x -> pad1: ReflectionPad1d(3)\n"
            "b = x -> Conv1d(4, kernel=8) -> pad1\n"
            "output y = b"
        )
    )
    assert ("time - 7", 4) in _rules(check_file(spec).model("m"))
    assert build(spec, tmp_path / "out").models[0].verified


def test_a_rule_inside_a_block_reaches_the_model(write_spec, tmp_path):
    spec = write_spec("""
        block Top(k: int) {
            input x: float32[batch, time]
            v, i = topk(x, k)
            output y = v
        }

        model m {
            input x: float32[batch, time]
            output y = x[:, 4:] -> Top(12)
        }
    """)
    assert ("time - 4", 12) in _rules(check_file(spec).model("m"))
    assert build(spec, tmp_path / "out").models[0].verified


FIXED = [
    ("input x: float32[batch, 4, 3]\noutput y = x -> ReflectionPad1d(5)", "reflection padding must be smaller"),
    ("input x: float32[batch, 2, 3, 9]\noutput y = x -> ReflectionPad2d((1, 1, 3, 0))", "got padding 3 for size 3"),
    ('input x: float32[batch, 4, 3]\noutput y = pad(x, (0, 3), mode="reflect")', "is 3 and the padding 3"),
    ("input x: float32[batch, 5]\nv, i = topk(x, 6)\noutput y = v", "topk: k is 6, but dimension 1"),
    ("input x: float32[batch, 4, 1]\noutput y = x -> GroupNorm(4)", "holds one value per sample"),
    ("input x: float32[batch, 4, 1]\noutput y = x -> InstanceNorm1d", "InstanceNorm1d normalises over positions"),
    ("input x: float32[batch, 4, 1, 1]\noutput y = x -> InstanceNorm2d", "InstanceNorm2d normalises over positions"),
]


@pytest.mark.parametrize(("body", "message"), FIXED)
def test_a_fixed_size_below_the_minimum_is_a_located_error(write_spec, body, message):
    with pytest.raises(DslcError) as info:
        check_file(write_spec(_model(body)))
    (diagnostic,) = info.value.diagnostics
    assert message in diagnostic.message
    assert diagnostic.loc.line == 3 and diagnostic.loc.col > 1


def test_a_rule_no_size_meets_is_a_located_error_on_the_command_line(write_spec):
    spec = write_spec(_model("input x: float32[batch, time]\nv, i = topk(x, 100000)\noutput y = v"))
    result = subprocess.run(
        [sys.executable, "-m", "dslc.cli", "check", str(spec)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{spec}:3:12: error: topk: k=100000 needs dimension 1 (size time) to be at least 100000" in result.stderr
    assert "no input size up to 4096 gives that" in result.stderr and "^^^" in result.stderr


def test_the_checker_refuses_a_fixed_size_below_an_ops_minimum(write_spec, monkeypatch):
    """The checker's own refusal of a fixed size, for an op whose shape rule leaves it to `at_least`."""
    topk = REGISTRY["topk"]

    def infer(args, inputs):
        inferred = topk.infer(args, inputs)
        return Inferred(inferred.outputs, inferred.init, [(inputs[0].shape[-1], 9, "this needs 9")])

    monkeypatch.setitem(REGISTRY, "topk", replace(topk, infer=infer))
    with pytest.raises(DslcError) as info:
        check_file(write_spec(_model("input x: float32[batch, 5]\nv, i = topk(x, 2)\noutput y = v")))
    (diagnostic,) = info.value.diagnostics
    assert diagnostic.message == "topk: this needs 9" and (diagnostic.loc.line, diagnostic.loc.col) == (3, 12)
