"""Checker: names resolved, shapes and dtypes inferred, several located errors per run."""

from __future__ import annotations

import re

import pytest

from dslc.checker import check_file
from dslc.errors import DslcError
from dslc.shapes import Sym, TensorType


def errors_of(path) -> list[str]:
    with pytest.raises(DslcError) as info:
        check_file(path)
    return [
        f"{d.loc.line}:{d.loc.col} {d.message}" + (f" [{d.hint}]" if d.hint else "") for d in info.value.diagnostics
    ]


def test_shapes_through_a_cnn(write_spec):
    program = check_file(
        write_spec("""
        model net {
            input image: float32[batch, 1, 28, 28]
            h = image -> Conv2d(32, 3, padding="same") -> MaxPool2d(2) -> Conv2d(64, 3, stride=2) -> Flatten
            output logits = h -> Linear(10)
        }
    """)
    )
    module = program.model("net")
    batch = Sym.named("batch")
    assert module.outputs[0].type == TensorType("float32", (batch, 10))
    shapes = [r.output for r in module.records]
    assert shapes[:3] == ["float32[batch, 32, 28, 28]", "float32[batch, 32, 14, 14]", "float32[batch, 64, 6, 6]"]
    assert module.param_count == 320 + 18496 + 2304 * 10 + 10


def test_symbolic_sequence_lengths(write_spec):
    program = check_file(
        write_spec("""
        model speech {
            input audio: float32[batch, 13, time]
            h = audio -> Conv1d(32, 11, stride=2) -> Conv1d(32, 3, padding=1)
            output frames = transpose(h, 1, 2)
        }
    """)
    )
    out = program.model("speech").outputs[0].type
    assert str(out) == "float32[batch, ((time - 11) // 2) + 1, 32]" or str(out.shape[1]).startswith("(")
    assert out.shape[0] == Sym.named("batch") and out.shape[2] == 32


def test_reductions_by_dimension_name(write_spec):
    program = check_file(
        write_spec("""
        model pool {
            input x: float32[batch, time, 16]
            output m = mean(x, dim=time)
            output s = sum(x, dim=(time, 2), keepdim=true)
        }
    """)
    )
    outputs = {p.name: str(p.type) for p in program.model("pool").outputs}
    assert outputs == {"m": "float32[batch, 16]", "s": "float32[batch, 1, 1]"}


def test_blocks_repeat_and_weight_sharing(write_spec):
    program = check_file(
        write_spec("""
        const width = 8
        block Mix(scale: float = 1.0) {
            input x: float32[batch, n]
            output y = (x -> Linear(n) -> Tanh) * scale + x
        }
        model m {
            input a: float32[batch, width]
            input b: float32[batch, width]
            ha = a -> shared: Linear(width)
            hb = b -> shared
            output y = (ha + hb) -> stack: repeat 3 Mix(0.5)
        }
    """)
    )
    model = program.model("m")
    subs = {s.attr: s for s in model.submodules}
    assert set(subs) == {"shared", "stack"}
    assert [c.attr for c in subs["stack"].children] == ["0", "1", "2"]
    assert model.param_count == 8 * 8 + 8 + 3 * (8 * 8 + 8)
    # one class per distinct instantiation: the three repeats share it
    assert [m.class_name for m in program.modules] == ["Mix", "M"]


def test_if_on_block_parameters(write_spec):
    program = check_file(
        write_spec("""
        block Down(channels: int, stride: int = 1) {
            input x: float32[batch, c, h, w]
            y = x -> Conv2d(channels, 3, stride=stride, padding=1)
            if stride != 1 or c != channels {
                skip = x -> downsample: (Conv2d(channels, 1, stride=stride, bias=false) -> BatchNorm2d)
            } else {
                skip = x
            }
            output out = relu(y + skip)
        }
        model m {
            input image: float32[batch, 3, 32, 32]
            output y = image -> a: Down(3) -> b: Down(8, stride=2)
        }
    """)
    )
    first, second = program.modules[0], program.modules[1]
    assert "downsample" not in {s.attr for s in first.submodules}
    downsample = next(s for s in second.submodules if s.attr == "downsample")
    assert [c.op for c in downsample.children] == ["Conv2d", "BatchNorm2d"]
    assert str(program.model("m").outputs[0].type) == "float32[batch, 8, 16, 16]"


def test_constants_and_overrides(write_spec):
    path = write_spec("""
        const hidden = 16
        const wide = hidden * 2
        model m {
            input x: float32[batch, 4]
            output y = x -> Linear(wide)
        }
    """)
    assert str(check_file(path).model("m").outputs[0].type) == "float32[batch, 32]"
    assert str(check_file(path, ["hidden=5"]).model("m").outputs[0].type) == "float32[batch, 10]"
    with pytest.raises(DslcError, match="no constant 'hiden'") as info:
        check_file(path, ["hiden=5"])
    assert "did you mean 'hidden'" in info.value.render()
    with pytest.raises(DslcError, match="expected an integer"):
        check_file(path, ["hidden=wide"])


def test_a_list_constant_is_set_as_the_spec_writes_a_list(write_spec):
    path = write_spec("""
        const hidden = 16
        const WIDTHS = [8, 8]
        model m {
            input x: float32[batch, 4]
            output y = x -> for width in WIDTHS { Linear(width) -> ReLU }
        }
    """)
    assert str(check_file(path, ["WIDTHS=[8, hidden * 2]"]).model("m").outputs[0].type) == "float32[batch, 32]"
    for text, message in [("[8, 8", "syntax error"), ("(1 +)", "syntax error"), ("3", "expected a list like [8, 8]")]:
        with pytest.raises(DslcError, match=r"--set WIDTHS: .*" + re.escape(message)):
            check_file(path, [f"WIDTHS={text}"])
    with pytest.raises(DslcError, match=re.escape('--set hidden: expected an integer like 16, got "wide"')):
        check_file(path, ['hidden="wide"'])  # quoted as the spec quotes a string, shown so


def test_imports(tmp_path):
    (tmp_path / "blocks.model").write_text(
        "const size = 6\nblock Act() {\n input x: float32[b, n]\n output y = relu(x)\n}\n"
    )
    (tmp_path / "main.model").write_text(
        'import "blocks.model" as lib\nfrom "blocks.model" import size\n'
        "model m {\n input x: float32[batch, size]\n output y = x -> lib.Act()\n}\n"
    )
    program = check_file(tmp_path / "main.model")
    assert str(program.model("m").outputs[0].type) == "float32[batch, 6]"


def test_import_cycle_is_reported(tmp_path):
    (tmp_path / "a.model").write_text('import "b.model"\n')
    (tmp_path / "b.model").write_text('import "a.model"\n')
    with pytest.raises(DslcError, match="import cycle"):
        check_file(tmp_path / "a.model")


def test_several_errors_in_one_run(write_spec):
    messages = errors_of(
        write_spec("""
        model m {
            input image: float32[batch, 1, 28, 28]
            h = image -> Conv2d(64, 3) -> MaxPool2d(2)
            logits = h -> Linear(10)
            y = h -> Lineer(3)
            z = undefined_thing + 1
            w = image -> Conv2d(32, kernal=3)
            output out = logits
        }
    """)
    )
    assert messages == [
        "4:19 Linear expects [batch, N] or [batch, time, N], got [batch, 64, 13, 13] [flatten first?]",
        "5:14 unknown layer 'Lineer' [did you mean 'Linear'?]",
        "6:9 unknown name 'undefined_thing'",
        "7:36 Conv2d has no argument 'kernal' [did you mean 'kernel'?]",
    ]


def test_an_output_may_name_a_fixed_size(write_spec):
    """A new dimension name binds to a number; only a size that has a name already keeps it."""
    check_file(write_spec("model m {\n input x: float32[batch, 4]\n output y: float32[batch, width] = x\n}\n"))


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("a = x -> Linear(4)\n b = x -> Linear(3)\n output c = a + b", "do not broadcast"),
        ("a = x -> Linear(4)\n output c = a @ a", "matching inner sizes"),
        ("output y: float32[batch, 3] = x -> Linear(4)", "expected float32[batch, 3], got float32[batch, 4]"),
        ("output y: float32[rows, 4] = x", "expected float32[batch, 4]: dimension 0 is 'batch', not 'rows'"),
        ("output y = x -> LSTM(3)", "LSTM expects [batch, time, features]"),
        ("output y = x -> Embedding(10, 4)", "Embedding expects integer token ids"),
        ("output y = x -> Conv2d(3)", "missing its 'kernel' argument"),
        ("output y = x -> Linear(3.5)", "'out_features' must be an integer"),
        ("output y = x -> Dropout(1.5)", "Dropout probability"),
        ("output y = softmax(x, dim=5)", "out of range"),
        ("output y = x -> MultiheadAttention(3)", "expects [batch, time, features]"),
        ("a, b = split(x, 3)\n output y = a", "do not divide"),
        ("output y = x -> Reshape(batch, 3, 3)", "has 4*batch elements"),
        ("output y = x[:, 7]", "out of range"),
        ("output y = x -> Linear(3) -> repeat 0 ReLU", "positive integer count"),
        ("output y = x -> m", "uses itself"),
        ("output y = x -> Linear(4) + 1", "syntax error"),
    ],
)
def test_error_messages(write_spec, body, fragment):
    spec = "model m {\n input x: float32[batch, 4]\n " + body + "\n}\n"
    path = write_spec(spec)
    with pytest.raises(DslcError) as info:
        check_file(path)
    assert fragment in info.value.render()
    assert all(d.loc is not None for d in info.value.diagnostics)


def test_unknown_dtype_suggests(write_spec):
    messages = errors_of(write_spec("model m {\n input x: flaot32[batch, 4]\n output y = x\n}\n"))
    assert messages == ["2:11 unknown dtype 'flaot32' [did you mean 'float32'?]"]


def test_reserved_and_unsafe_names(write_spec):
    for name in ("class", "self", "torch", "__init__"):
        with pytest.raises(DslcError):
            check_file(write_spec(f"model m {{\n input {name}: float32[b, 4]\n output y = {name}\n}}\n"))


def test_block_shadowing_a_layer_is_refused(write_spec):
    with pytest.raises(DslcError, match="built-in layer"):
        check_file(
            write_spec(
                "block Linear() {\n input x: float32[b, 4]\n output y = x\n}\nmodel m {\n input x: float32[b, 4]\n output y = x\n}\n"
            )
        )


def test_spec_without_model(write_spec):
    with pytest.raises(DslcError, match="defines no model"):
        check_file(write_spec("const a = 1\n"))


def test_check_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys; from dslc.checker import check_file; import glob\n"
        "[check_file(p) for p in glob.glob('specs/*.model')]\n"
        "assert 'torch' not in sys.modules and 'onnx' not in sys.modules, 'torch imported'\n"
    )
    from tests.conftest import ROOT

    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_an_unknown_name_inside_a_block_is_reported_once_at_its_line(write_spec):
    path = write_spec("""
        block Res(k: int = 3) {
            input x: float32[batch, c, time]
            h = x -> Conv1d(c, kernel=k, padding="same") -> BatchNrom1d
            output y = x + h
        }
        model m {
            input s: float32[batch, 4, time]
            h = s -> Res(3) -> Res(5)
            output y = mean(h, dim=time) -> Linear(2)
        }
    """)
    with pytest.raises(DslcError) as info:
        check_file(path)
    diagnostics = info.value.diagnostics
    assert len(diagnostics) == 1
    assert "unknown layer 'BatchNrom1d'" in diagnostics[0].message
    assert diagnostics[0].loc.line == 3
    assert diagnostics[0].notes == []  # found before any use is checked: no use to point at


def test_a_shape_error_inside_a_block_points_at_the_use(write_spec):
    path = write_spec("""
        block Res(k: int = 3) {
            input x: float32[batch, c, time]
            h = x -> Conv1d(c, kernel=k)
            output y = x + h
        }
        model m {
            input s: float32[batch, 4, time]
            output y = s -> Res(3) -> mean(dim=time) -> Linear(2)
        }
    """)
    with pytest.raises(DslcError) as info:
        check_file(path)
    (diagnostic,) = info.value.diagnostics
    assert diagnostic.loc.line == 4 and "do not broadcast" in diagnostic.message
    assert diagnostic.notes == [f"in Res(k=3) used at {path}:8:21"]


def test_an_unused_block_is_checked(write_spec):
    messages = errors_of(
        write_spec("""
        block Unused(n: int = "four") {
            input x: float32[batch, c]
            output y = x -> NoSuchLayer(n) -> relu(undefined_thing)
        }
        model m {
            input x: float32[batch, 4]
            output y = x -> Linear(2)
        }
    """)
    )
    assert messages == [
        "1:23 Unused: the default of 'n' must be int, got \"four\"",
        "3:21 unknown layer 'NoSuchLayer'",
        "3:44 unknown name 'undefined_thing'",
    ]


def test_linear_over_a_symbolic_size_suggests_pooling(write_spec):
    messages = errors_of(write_spec("model m {\n input s: float32[batch, 4, time]\n output y = s -> Linear(2)\n}\n"))
    assert messages == [
        "3:18 Linear needs a fixed input size (last dimension), but it is the symbolic size 'time' "
        "[pool over it first, e.g. mean(h, dim=time) or AdaptiveAvgPool1d(1) -> Flatten]"
    ]
