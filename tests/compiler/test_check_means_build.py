"""If `dslc check` says ok, `dslc build` builds: sizes, indices, kernels and inputs that passed the
checker but failed in export or verification are now either built and verified or refused at check."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from dslc.build import build
from dslc.checker import check_file
from dslc.errors import DslcError


def assert_builds(spec, tmp_path) -> None:
    result = build(spec, tmp_path / "out")
    assert result.models and all(r.verified for r in result.models)


def refused(spec) -> str:
    with pytest.raises(DslcError) as info:
        check_file(spec)
    (diag,) = info.value.diagnostics
    assert diag.loc is not None
    return diag.message


@pytest.mark.parametrize(
    "body",
    [
        "output y = x[:, -10]",  # needs time >= 10; verification used time 8
        "output y = x[:, 20:]",
        "output y = x[:, :24]",
        "output y = x[:, -12:-2]",
        "output y = transpose(x, 1, 2) -> Conv1d(4, kernel=25)",
        "output y = transpose(x, 1, 2) -> MaxPool1d(30)",
    ],
)
def test_symbolic_sizes_large_enough_for_every_index_and_kernel(write_spec, tmp_path, body):
    spec = write_spec(f"model m {{\n    input x: float32[batch, time, 4]\n    {body}\n}}\n")
    assert_builds(spec, tmp_path)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("output y = transpose(x, 1, 2) -> Conv1d(4, kernel=5000)", "no input size up to 4096"),
        ("output y = x[:, -5000]", "no input size up to 4096"),
        ("output y = x[:, -3:4]", "cannot mix a negative start"),
        ("output y = x[:, 5:3]", "negative size"),
        ("output y = x -> Linear(10000000000)", "parameters"),
        ("output y = x -> Linear(9223372036854775807)", "parameters"),
    ],
)
def test_what_cannot_build_is_refused_at_check(write_spec, body, message):
    spec = write_spec(f"model m {{\n    input x: float32[batch, time, 4]\n    {body}\n}}\n")
    assert message in refused(spec)


def test_huge_intermediate_tensors_are_refused(write_spec):
    spec = write_spec(
        "model m {\n input a: float32[b, 20000, 1]\n input c: float32[b, 1, 20000]\n output y = a + c\n}\n"
    )
    assert "400,000,000 elements per example (1.6 GB in float32)" in refused(spec)


def test_model_size_is_spelled_out(write_spec):
    layers = " -> ".join(["Linear(10000)"] * 9)  # 100 M parameters each: every layer fits, the model does not
    spec = write_spec(f"model m {{\n    input x: float32[batch, 10000]\n    output y = x -> {layers}\n}}\n")
    assert "900,090,000 parameters (3.6 GB in float32)" in refused(spec)


def test_unused_inputs_stay_in_the_onnx_signature(write_spec, tmp_path):
    spec = write_spec(
        "model m {\n    input x: float32[batch, 4]\n    input step: int64[batch]\n    output y = x -> Linear(2)\n}\n"
    )
    assert_builds(spec, tmp_path)
    session = ort.InferenceSession(str(tmp_path / "out" / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x", "step"]


def test_long_nested_pipelines_are_split_into_lines(write_spec, tmp_path):
    stages = " -> ".join(["ReLU"] * 300)
    spec = write_spec(f"model m {{\n    input x: float32[batch, 2]\n    output y = (x -> {stages}) + 1.0\n}}\n")
    assert_builds(spec, tmp_path)  # one nested call 300 deep would be "too many nested parentheses"


@pytest.mark.parametrize(
    "layer",
    [
        "MaxPool2d(0)",
        "MaxPool2d(2, stride=0)",
        "MaxPool2d(2, padding=-1)",
        "Conv2d(4, 3, padding=-1)",
        'Conv2d(4, 3, padding=(1, "a"))',
        "ConvTranspose2d(4, 3, stride=2, output_padding=2)",
        "Conv2d(4, 9)",
        "AdaptiveAvgPool2d(0)",
    ],
)
def test_bad_window_arguments_are_located_errors(write_spec, layer):
    spec = write_spec(f"model m {{\n    input x: float32[batch, 3, 8, 8]\n    output y = x -> {layer}\n}}\n")
    refused(spec)


def test_layer_arguments_fit_in_32_bits(write_spec):
    spec = write_spec(
        "model m {\n input x: float32[b, 3, 8, 8]\n output y = x -> Conv2d(4, 3, stride=1099511627776)\n}\n"
    )
    assert "layer arguments are at most 2,147,483,647" in refused(spec)


def test_comparisons_on_symbolic_sizes_are_refused(write_spec):
    spec = write_spec(
        "model m {\n input x: float32[batch, 2]\n if batch == 1 { output y = x } else { output y = x * 2.0 }\n}\n"
    )
    assert "symbolic size" in refused(spec)


@pytest.mark.parametrize(
    ("input_type", "message"),
    [
        ("float32[batch, 1099511627776]", "elements per example"),
        ("float32[batch, a, b, c, d, e, f]", "verifying 'm' needs"),
    ],
)
def test_inputs_too_large_to_verify_are_refused(write_spec, input_type, message):
    spec = write_spec(f"model m {{\n    input x: {input_type}\n    output y = x\n}}\n")
    assert message in refused(spec)


def test_nan_and_infinity_agreeing_in_both_runtimes_verify(write_spec, tmp_path):
    spec = write_spec("model m {\n    input x: float32[batch, 4]\n    output y = log(x) + sqrt(x)\n}\n")
    assert_builds(spec, tmp_path)  # random inputs are negative half the time: NaN in PyTorch and ONNX alike


def test_a_folder_in_the_way_stops_the_build_before_anything_is_published(write_spec, tmp_path):
    spec = write_spec("model m {\n    input x: float32[batch, 4]\n    output y = x -> Linear(2)\n}\n")
    (tmp_path / "out" / "m.onnx").mkdir(parents=True)
    with pytest.raises(DslcError, match="in the way"):
        build(spec, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.onnx"]


def test_an_output_named_like_an_input_is_refused(write_spec):
    spec = write_spec("model m {\n    input x: float32[batch, 4]\n    output x\n}\n")
    assert "has the name of an input" in refused(spec)


@pytest.mark.parametrize(
    ("input_type", "body", "message"),
    [
        ("float16[batch, 4]", "output y = x -> Linear(2)", "Linear has float32 weights but its input is float16"),
        # numpy (verification's and the runtime's arrays) has no bfloat16, onnxruntime's CPU no bfloat16 arithmetic
        ("bfloat16[batch, 4]", "output y = x * x", "model input 'x' is bfloat16, which numpy arrays"),
        ("bfloat16[batch, 4]", "output y = float(x)", "model input 'x' is bfloat16, which numpy arrays"),
        ("float64[batch, 4]", "output y = x -> Linear(2)", "Linear has float32 weights but its input is float64"),
    ],
)
def test_what_the_exporter_or_pytorch_refuses_is_refused_at_check(write_spec, input_type, body, message):
    spec = write_spec(f"model m {{\n    input x: {input_type}\n    {body}\n}}\n")
    assert message in refused(spec)


@pytest.mark.parametrize(
    ("input_type", "body"),
    [
        ("float32[batch, 3, 12, 12]", "output y = x -> AdaptiveAvgPool2d(3) -> Flatten"),
        ("float32[batch, 3, 10, 10]", "output y = x -> AdaptiveAvgPool2d(3) -> Flatten"),  # uneven bins
        ("float32[batch, 3, h, w]", "output y = x -> AdaptiveAvgPool2d(1) -> Flatten"),
        ("float32[batch, 3, h, w]", "output y = x -> AdaptiveAvgPool2d((7, 7)) -> Flatten"),  # VGG's, at any size
        ("float32[batch, 3, h, w]", "output y = x -> AdaptiveMaxPool2d(3) -> Flatten"),
        ("float64[batch, 4]", "output y = float(x) -> Linear(2)"),
    ],
)
def test_what_the_exporter_can_write_builds(write_spec, tmp_path, input_type, body):
    assert_builds(write_spec(f"model m {{\n    input x: {input_type}\n    {body}\n}}\n"), tmp_path)


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ("BatchNorm1d(eps=-1.0)", "'eps' must be at least 0.0 and at most 1.0"),
        ("BatchNorm1d(momentum=2.0)", "'momentum' must be at least 0.0 and at most 1.0"),
        ("LayerNorm(eps=-0.1)", "'eps' must be at least 0.0"),
        ("LeakyReLU(1e308)", "'negative_slope' must be at least -1000.0 and at most 1000.0"),
        ("ELU(alpha=1e30)", "'alpha' must be at least -1000.0"),
    ],
)
def test_layer_settings_that_break_the_numbers_are_refused(write_spec, layer, message):
    spec = write_spec(f"model m {{\n    input x: float32[batch, 4]\n    output y = x -> {layer}\n}}\n")
    assert message in refused(spec)


def test_a_second_train_section_is_refused(write_spec):
    spec = write_spec(
        "model m {\n input x: float32[batch, 4]\n output y = x -> Linear(2)\n}\n"
        "train {\n data = digits()\n}\ntrain {\n data = digits()\n}\n"
    )
    assert "a spec has one train section; this is a second one (the first is at line 5)" in refused(spec)


@pytest.mark.parametrize(
    ("input_type", "body", "message"),
    [
        ("int64[batch, 4]", "output y = mean(x, dim=-1)", "mean expects a floating-point tensor, got int64"),
        ("bool[batch, 4]", "output y = x + x", "'+' on a bool tensor"),
        ("bool[batch, 4]", "output y = x * 2", "'*' on a bool tensor"),
    ],
)
def test_dtype_mixes_pytorch_or_onnx_refuse_are_refused_at_check(write_spec, input_type, body, message):
    spec = write_spec(f"model m {{\n    input x: {input_type}\n    {body}\n}}\n")
    assert message in refused(spec)


@pytest.mark.parametrize(
    ("input_type", "body", "dtype"),
    [
        ("bool[batch, 4]", "output y = sum(x, dim=-1)", "int64"),  # PyTorch counts bools as int64
        ("int64[batch, 4]", "output y = mean(float(x), dim=-1)", "float32"),
        ("bool[batch, 4]", "output y = float(x) * 2.0", "float32"),
    ],
)
def test_what_the_dtypes_allow_builds_with_the_dtype_pytorch_gives(write_spec, tmp_path, input_type, body, dtype):
    spec = write_spec(f"model m {{\n    input x: {input_type}\n    {body}\n}}\n")
    assert check_file(spec).model("m").outputs[0].type.dtype == dtype
    assert_builds(spec, tmp_path)


def test_running_out_of_memory_in_verification_is_a_clear_error(write_spec, tmp_path):
    """Activations a machine cannot hold (here: address space capped at 6 GB) are the build's located error."""
    import resource
    import subprocess
    import sys

    chain = "\n".join(f"    h{i} = h{i - 1} -> ReLU" for i in range(1, 60))
    outputs = " + ".join(f"h{i}" for i in range(0, 60, 6))  # ten of the 16 MB activations live at once, per example
    spec = write_spec(
        f"model big {{\n    input x: float32[batch, 64, 256, 256]\n    h0 = x\n{chain}\n    output y = {outputs}\n}}\n"
    )

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))

    result = subprocess.run(
        [sys.executable, "-m", "dslc.cli", "build", str(spec), "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        preexec_fn=cap,
    )
    assert result.returncode == 1, result.stderr
    assert "PyTorch ran out of memory running the model at sizes" in result.stderr, result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "big.onnx").exists()
