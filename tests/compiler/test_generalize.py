"""The generalisation pass: the uses of each block become one class with the block's parameters."""

from __future__ import annotations

import re
import warnings

import pytest
import torch

from dslc import traced
from dslc.build import load_generated
from dslc.checker import check_file
from dslc.emit_torch import emit_program
from dslc.layers import HELPERS
from tests.conftest import SPECS

SPEC_FILES = sorted(SPECS.glob("*.model"))
HELPER_CLASSES = {m.group(1) for source in HELPERS.values() for m in re.finditer(r"^class (\w+)", source, re.M)}


def generated_classes(source: str) -> dict[str, str]:
    """class name -> its body, for the classes generated from blocks and models (not helpers)."""
    parts = re.split(r"^class (\w+)\(nn\.Module\):\n", source, flags=re.M)
    bodies = dict(zip(parts[1::2], parts[2::2]))
    return {name: body.split("\n\n\n")[0] for name, body in bodies.items() if name not in HELPER_CLASSES}


@pytest.mark.parametrize("spec", SPEC_FILES, ids=lambda p: p.stem)
def test_one_class_per_block_definition_and_per_model(spec):
    program = check_file(spec)
    definitions = {(m.kind, m.spec_name) for m in program.modules}
    classes = generated_classes(emit_program(program))
    assert len(classes) == len(definitions), sorted(classes)
    bodies = [re.sub(r'""".*?"""', "", body, flags=re.S) for body in classes.values()]
    assert len(set(bodies)) == len(bodies), "two generated classes have the same code"


def test_resnet18_reads_like_torchvision():
    source = emit_program(check_file(SPECS / "resnet18.model"))
    assert source.count("class BasicBlock(") == 1
    assert "def __init__(self, channels: int, planes: int, stride: int = 1) -> None:" in source
    assert "self.conv1 = nn.Conv2d(channels, planes, 3, stride=stride, padding=1, bias=False)" in source
    assert "if stride != 1 or channels != planes:" in source  # the downsample, built where it is needed
    assert "self.layer1 = nn.Sequential(*(BasicBlock(64, 64) for _ in range(2)))" in source
    assert "self.layer2 = nn.Sequential(BasicBlock(64, 128, stride=2), BasicBlock(128, 128))" in source


def test_a_generated_block_class_works_for_sizes_no_use_had(tmp_path):
    """The class is general: BasicBlock(32, 48, stride=2) was never in the spec, yet builds and runs."""
    path = tmp_path / "resnet18.py"
    path.write_text(emit_program(check_file(SPECS / "resnet18.model")))
    module = load_generated(path)
    block = module.BasicBlock(32, 48, stride=2).eval()
    assert hasattr(block, "downsample")
    assert block(torch.randn(2, 32, 10, 10)).shape == (2, 48, 5, 5)
    same = module.BasicBlock(48, 48).eval()
    assert not hasattr(same, "downsample")
    assert same(torch.randn(1, 48, 7, 7)).shape == (1, 48, 7, 7)


def test_an_arm_no_use_takes_refuses_to_build(write_spec, tmp_path):
    path = write_spec("""
        block Scale(wide: bool = false) {
            input x: float32[batch, c]
            if wide {
                output y = x -> Linear(c * 2)
            } else {
                output y = x -> Linear(c)
            }
        }
        model m {
            input x: float32[batch, 4]
            output y = x -> Scale() -> Scale()
        }
    """)
    source = emit_program(check_file(path))
    assert "def __init__(self, c: int, wide: bool = False) -> None:" in source
    assert "raise NotImplementedError(" in source  # the `wide` arm was never checked
    out = tmp_path / "t.py"
    out.write_text(source)
    module = load_generated(out)
    assert module.Scale(5)(torch.randn(2, 5)).shape == (2, 5)
    with pytest.raises(NotImplementedError, match="was not compiled"):
        module.Scale(5, wide=True)


def test_both_arms_used_give_one_class_with_an_if(write_spec, tmp_path):
    path = write_spec("""
        block Scale(wide: bool = false) {
            input x: float32[batch, c]
            if wide {
                output y = x -> Linear(c * 2)
            } else {
                output y = x -> Linear(c)
            }
        }
        model m {
            input x: float32[batch, 4]
            output y = x -> Scale(wide=true) -> Scale()
        }
    """)
    source = emit_program(check_file(path))
    assert "NotImplementedError" not in source
    assert "if wide:\n            self.fc1 = nn.Linear(c, c * 2)" in source
    assert "self.scale1 = Scale(4, wide=True)" in source and "self.scale2 = Scale(8)" in source
    out = tmp_path / "t.py"
    out.write_text(source)
    model = load_generated(out).MODELS["m"]()
    assert model(torch.randn(3, 4)).shape == (3, 8)


def test_a_block_calling_a_block_passes_its_parameters(write_spec):
    source = emit_program(
        check_file(
            write_spec("""
        block Mlp(hidden: int) {
            input x: float32[batch, d]
            output y = x -> Linear(hidden) -> ReLU -> Linear(d)
        }
        block Residual(hidden: int, scale: float = 0.5) {
            input x: float32[batch, d]
            output y = x + (x -> Mlp(hidden * 2)) * scale
        }
        model m {
            input x: float32[batch, 8]
            output y = x -> Residual(16) -> Residual(32, scale=0.25)
        }
    """)
        )
    )
    assert "self.mlp1 = Mlp(d, hidden * 2)" in source
    assert "y = x + self.mlp1(x) * self.scale" in source
    assert "Residual(8, 16)" in source and "Residual(8, 32, scale=0.25)" in source


def test_traced_arithmetic_keeps_the_expression():
    planes, stride = traced.param("planes", 64), traced.param("stride", 2)
    size = (planes * 4) // stride + 1
    assert size == 129 and isinstance(size, int)
    with pytest.raises(KeyError):  # outside a class no parameter has a name: a value must not leak there
        traced.python_expr(size.expr, repr)
    token = traced.PREFIX.set({"planes": "planes", "stride": "self.stride"})
    try:
        assert traced.python_expr(size.expr, repr) == "planes * 4 // self.stride + 1"
        assert traced.python_expr((3 - planes).expr, repr) == "3 - planes"
        assert traced.python_expr((planes - (stride - 1)).expr, repr) == "planes - (self.stride - 1)"
    finally:
        traced.PREFIX.reset(token)
    assert traced.plain(planes) == 64 and type(traced.plain(planes)) is int
    assert {planes: "a"}[64] == "a"  # hashes and compares as its number


def _module_of(write_spec, tmp_path, text: str):
    path = tmp_path / "gen.py"
    path.write_text(emit_program(check_file(write_spec(text))))
    return load_generated(path), path.read_text()


def test_float_bool_and_str_parameters_reach_the_layers(write_spec, tmp_path):
    module, source = _module_of(
        write_spec,
        tmp_path,
        """
        block FF(hidden: int, drop: float = 0.1, use_bias: bool = true, pad: str = "same") {
            input x: float32[batch, c, h, w]
            output y = x -> Conv2d(hidden, kernel=3, padding=pad, bias=use_bias) -> Dropout(drop)
        }
        model m {
            input x: float32[batch, 3, 16, 16]
            output y = x -> FF(8) -> FF(8, drop=0.2, use_bias=false) -> FF(4, pad="valid")
        }
    """,
    )
    assert source.count("class FF(") == 1 and "class FF2" not in source
    assert "nn.Conv2d(c, hidden, 3, padding=pad, bias=use_bias)" in source and "nn.Dropout(p=drop)" in source
    block = module.FF(3, 5, drop=0.4, use_bias=False, pad="valid")
    assert block.conv1.bias is None and block.dropout1.p == 0.4
    assert block(torch.randn(1, 3, 9, 9)).shape == (1, 5, 7, 7)


def test_every_condition_of_an_elif_chain_is_kept(write_spec, tmp_path):
    module, source = _module_of(
        write_spec,
        tmp_path,
        """
        block B(mode: str = "a") {
            input x: float32[batch, d]
            if mode == "a" {
                output y = x -> Linear(d)
            } elif mode == "b" {
                output y = x -> ReLU
            } else {
                output y = x
            }
        }
        model m {
            input x: float32[batch, 4]
            output y = x -> B()
        }
    """,
    )
    assert 'elif mode == "b":' in source
    assert module.B(4)(torch.randn(2, 4)).shape == (2, 4)
    with pytest.raises(NotImplementedError):
        module.B(4, mode="b")  # an arm no use took: refused, not silently the Linear


def test_repeat_count_is_a_constructor_argument(write_spec, tmp_path):
    module, source = _module_of(
        write_spec,
        tmp_path,
        """
        block Stack(depth: int = 2) {
            input x: float32[batch, d]
            output y = x -> layers: repeat depth Linear(d)
        }
        model m {
            input x: float32[batch, 4]
            output y = x -> Stack(depth=1) -> Stack(depth=3)
        }
    """,
    )
    assert source.count("class Stack(") == 1 and "class Stack2" not in source
    assert "nn.Sequential(*(nn.Linear(d, d) for _ in range(depth)))" in source
    assert len(module.Stack(4, depth=5).layers) == 5


def test_same_padding_with_a_kernel_parameter_works_for_every_kernel(write_spec, tmp_path):
    module, source = _module_of(
        write_spec,
        tmp_path,
        """
        block C(k: int = 3) {
            input x: float32[batch, c, h, w]
            output y = x -> Conv2d(4, kernel=k, padding="same")
        }
        model m {
            input x: float32[batch, 3, 16, 16]
            output y = x -> C() -> C(k=5)
        }
    """,
    )
    assert 'nn.Conv2d(c, 4, k, padding="same")' in source
    with warnings.catch_warnings():  # PyTorch notes that an even kernel pads a copy of the input
        warnings.simplefilter("ignore", UserWarning)
        assert module.C(3, k=4)(torch.randn(1, 3, 10, 10)).shape == (1, 4, 10, 10)  # an even kernel too


def test_a_parameter_the_class_cannot_honour_is_checked(write_spec, tmp_path):
    """`ret` picks what an LSTM returns: settled at compile time, so other values raise instead of
    being ignored."""
    module, source = _module_of(
        write_spec,
        tmp_path,
        """
        block R(hidden: int, ret: str = "sequence") {
            input x: float32[batch, time, d]
            output y = x -> LSTM(hidden, returns=ret)
        }
        model m {
            input x: float32[batch, time, 4]
            output y = x -> R(8)
        }
    """,
    )
    assert module.R(4, 8)(torch.randn(2, 5, 4)).shape == (2, 5, 8)
    with pytest.raises(NotImplementedError, match="compiled for ret='sequence' only"):
        module.R(4, 8, ret="last")


def test_spec_constants_become_module_constants(write_spec, tmp_path):
    source = emit_program(check_file(SPECS / "resnet18.model", ["classes=10"]))
    assert "\nCLASSES = 10\n" in source and "self.fc = nn.Linear(512, CLASSES)" in source
    module, source = _module_of(
        write_spec,
        tmp_path,
        """
        const f = 3
        const heads = 2
        block Attend() {
            input x: float32[batch, time, d]
            output y = x -> Reshape(batch, time, heads, d // heads) -> sum(dim=-1) -> Linear(f)
        }
        model m {
            input x: float32[batch, time, 8]
            output y = x -> Attend()
        }
    """,
    )
    assert "\nF_ = 3\nHEADS = 2\n" in source  # `F` is torch.nn.functional
    assert "self.heads" not in source and "nn.Linear(HEADS, F_)" in source
    assert "reshape(x.size(0), x.size(1), HEADS, self.d // HEADS)" in source
    assert module.Attend(8)(torch.randn(2, 5, 8)).shape == (2, 5, 3)
