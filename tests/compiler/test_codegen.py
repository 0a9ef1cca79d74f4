"""PyTorch emission: readable, deterministic, traceable, equivalent to the checked shapes."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from dslc.build import load_generated
from dslc.checker import check_file
from dslc.emit_torch import emit_program
from dslc.export_onnx import example_inputs, example_sizes
from tests.conftest import SPECS

SPEC_FILES = sorted(SPECS.glob("*.model"))


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """spec stem -> (program, path of generated Python)."""
    out = tmp_path_factory.mktemp("gen")
    result = {}
    for spec in SPEC_FILES:
        program = check_file(spec)
        path = out / f"{spec.stem}.py"
        path.write_text(emit_program(program))
        result[spec.stem] = (program, path)
    return result


def test_output_is_deterministic():
    for spec in SPEC_FILES:
        assert emit_program(check_file(spec)) == emit_program(check_file(spec))


def test_generated_code_imports_only_torch(generated):
    for _, path in generated.values():
        imports = [line for line in path.read_text().splitlines() if line.startswith(("import ", "from "))]
        assert all(line.split()[1].split(".")[0] in ("torch", "__future__", "math") for line in imports), imports


def test_generated_code_is_ruff_clean(generated):
    paths = [str(p) for _, p in generated.values()]
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--select", "E,F,W,I", "--ignore", "E501", *paths],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout


def test_generated_code_is_formatted(generated):
    """The model code and the training script of every spec are as `ruff format` would write them."""
    from dslc.emit_train import emit_train_script

    paths = [str(p) for _, p in generated.values()]
    for program, path in generated.values():
        if program.train is not None:
            script = path.with_name(f"{path.stem}_train.py")
            script.write_text(emit_train_script(program))
            paths.append(str(script))
    assert len(paths) > len(generated)
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "--line-length", "120", *paths],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_statement_traces_to_its_spec_line(generated):
    program, path = generated["cnn"]
    text = path.read_text()
    for line_no, line in enumerate(program.source.splitlines(), 1):
        if line.strip().startswith(("output ", "features =")):
            assert f"# line {line_no}: " in text


def test_comments_and_docstrings_are_carried(generated):
    _, path = generated["mlp"]
    text = path.read_text()
    assert "# one hidden layer, ReLU" in text
    assert "standardised measurements" in text
    assert "Regression MLP" in text


@pytest.mark.parametrize("stem", [s.stem for s in SPEC_FILES])
def test_module_shapes_match_the_checker(generated, stem):
    program, path = generated[stem]
    module = load_generated(path)
    for model_ir in program.exported:
        torch.manual_seed(0)
        model = module.MODELS[model_ir.spec_name]().eval()
        n_params = sum(p.numel() for p in model.parameters())
        assert n_params == model_ir.param_count
        sizes = example_sizes(model_ir)
        with torch.no_grad():
            outputs = model(*example_inputs(model_ir, sizes))
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        from dslc.export_onnx import concrete_shape

        for port, value in zip(model_ir.outputs, outputs):
            assert tuple(value.shape) == concrete_shape(port.type.shape, sizes), port.name
            assert str(value.dtype).removeprefix("torch.") == port.type.dtype


def test_reused_layer_shares_weights(write_spec, tmp_path):
    program = check_file(
        write_spec("""
        model siamese {
            input a: float32[batch, 4]
            input b: float32[batch, 4]
            output distance = sum((a -> encode: Linear(3)) - (b -> encode), dim=-1)
        }
    """)
    )
    source = emit_program(program)
    assert source.count("nn.Linear(") == 1
    path = tmp_path / "siamese.py"
    path.write_text(source)
    model = load_generated(path).MODELS["siamese"]()
    x = torch.randn(2, 4)
    assert torch.allclose(model(x, x), torch.zeros(2))


def test_readable_forward(generated):
    _, path = generated["cnn"]
    text = path.read_text()
    assert "self.conv1 = nn.Conv2d(1, 32, 3, padding=1)" in text
    assert "features = F.max_pool2d(features, 2)" in text
    assert "logits = self.fc2(logits)" in text
    assert "return logits, probabilities" in text


def test_named_layers_without_parameters_build(write_spec, tmp_path):
    """torchvision names its pooling and activation layers (`avgpool`, `relu`): each stateless layer
    with a module form can be named, and the build verifies."""
    from dslc.build import build

    spec = write_spec("""
        model m {
            input x: float32[batch, 3, 8, 8]
            output y = x -> conv: Conv2d(4, kernel=3) -> pool: MaxPool2d(2) -> act: ReLU
                -> avgpool: AdaptiveAvgPool2d(1) -> flat: Flatten -> id: Identity -> g: GELU -> s: Softmax
        }
    """)
    result = build(spec, tmp_path / "out")
    source = result.python_path.read_text()
    for attr in ("pool", "act", "avgpool", "flat", "id", "g", "s"):
        assert f"self.{attr} = nn." in source and f"self.{attr}(" in source
    (report,) = result.models
    assert report.verified


@pytest.mark.parametrize("length", [60, 99, 100, 128])
def test_a_line_a_long_name_keeps_over_the_width_is_still_valid_python(write_spec, length):
    """`h = x + self.<long name>(...)` whose head cannot be split with its bracket left open (a name of 99 or 100
    characters): the wrapper closed the sum's parentheses before the call's, a SyntaxError (found by the fuzzer)."""
    name = "a" * length
    spec = write_spec(
        "model m {\n    input x: float32[batch, 4]\n"
        f"    output h = x + (x -> norm: LayerNorm -> {name}: Linear(4))\n}}\n"
    )
    compile(emit_program(check_file(spec)), "generated.py", "exec")
