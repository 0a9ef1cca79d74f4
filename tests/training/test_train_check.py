"""The train section's checker: located errors with hints, and no torch import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dslc.checker import check_file
from dslc.errors import Diagnostic, DslcError
from tests.conftest import SPECS

MODEL = """
model net {
    input image: float32[batch, 1, 8, 8]
    output logits = image -> Flatten -> Linear(10)
}
"""


def errors(write_spec, train: str) -> str:
    path = write_spec(MODEL + train)
    with pytest.raises(DslcError) as info:
        check_file(path)
    return info.value.render()


def test_all_training_specs_check():
    for name in (
        "cnn",
        "mlp",
        "gan",
        "vae",
        "rnn",
        "autoencoder",
        "bilstm_classifier",
        "transformer_encoder",
        "seq2seq_reverse",
    ):
        program = check_file(SPECS / f"{name}.model")
        assert program.train is not None, name


def test_check_stays_torch_free():
    code = "import sys; from dslc.checker import check_file; check_file('specs/gan.model'); check_file('specs/cnn.model'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=SPECS.parent, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("train", "expected"),
    [
        ("train { data = digit()  loss = cross_entropy(logits, label) }", "unknown data set 'digit'"),
        ("train { data = digits()  loss = cross_entropy(logit, label) }", "unknown name 'logit'"),
        ("train { data = digits()  loss = crossentropy(logits, label) }", "did you mean 'cross_entropy'"),
        (
            "train { data = digits()  loss = cross_entropy(logits, label)  optimizer = adan() }",
            "unknown optimizer 'adan'",
        ),
        ("train { data = digits()  loss = cross_entropy(logits, label)  epoch = 3 }", "did you mean 'epochs'"),
        (
            "train { data = digits()  loss = cross_entropy(logits, label)  metrics = [acuracy] }",
            "unknown metric 'acuracy'",
        ),
        (
            'train { data = digits()  loss = cross_entropy(logits, label)  schedule = cosine(warmup="x") }',
            "'warmup' must be a number",
        ),
        ("train { data = digits()  loss = cross_entropy(logits, label, label_smoothing=true) }", "must be a number"),
        ("train { data = digits() }", "needs a 'loss'"),
        ("train { loss = cross_entropy(logits, label) }", "needs 'data'"),
        (
            "train { data = digits(image_size=28)  loss = cross_entropy(logits, label) }",
            "expects float32[batch, 1, 8, 8]",
        ),
        ("train { data = digits()  loss = cross_entropy(label, logits) }", "expects a floating-point tensor"),
        ("train { data = digits()  loss = mse(logits, label) }", "must be a floating-point tensor"),
        ('train { data = csv("nope.csv", features=["a"], label="y")  loss = mse(logits, label) }', "not found"),
        ('train { data = digits()  loss = cross_entropy(logits, label)  monitor = "acc" }', "monitor 'acc'"),
        ("train { data = digits()  loss = cross_entropy(logits, label)  group fc { lr = 0.1 } }", "no submodule"),
        ("train { data = digits()  loss = cross_entropy(logits, label)  batch_size = 0 }", "at least 1"),
        ("train { data = digits()  loss = logits }", "single number"),
    ],
)
def test_located_errors(write_spec, train, expected):
    text = errors(write_spec, train)
    assert expected in text
    assert "t.model:" in text  # FILE:LINE:COL


def test_gan_errors(write_spec):
    path = write_spec("""
        model g { input z: float32[batch, 4]  output image = z -> Linear(64) -> Reshape(batch, 1, 8, 8) }
        model d { input image: float32[batch, 1, 8, 8]  output score = image -> Flatten -> Linear(1) }
        train {
            data = digits(validation=0.0)
            z = normal(batch, 4)
            step d_step { loss = bce_with_logits(d(image), 1.0)  optimizer = adam(lr=1e-3) }
            step g_step { loss = bce_with_logits(d(g(z, z)), 1.0)  optimizer = adam(g) }
        }
    """)
    with pytest.raises(DslcError) as info:
        check_file(path)
    text = info.value.render()
    assert "must name the model(s) it trains" in text
    assert "takes 1 input(s)" in text


def test_train_overrides(write_spec):
    path = write_spec(MODEL + "train { data = digits()  loss = cross_entropy(logits, label)  epochs = 5 }")
    program = check_file(path, None, {"epochs": 2, "optimizer.lr": 0.5})
    assert program.train.epochs == 2
    assert program.train.steps[0].optimizer.options["lr"] == 0.5


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("optimizer = adam(betas=(0.9,))", "'betas' takes 2 values"),
        ("optimizer = adam(betas=(1.5, 0.999))", "'betas' must be at least 0.0 and below 1.0"),
        ("optimizer = sgd(lr=-0.05)", "'lr' must be at least 0.0"),
        ("schedule = step(every=0)", "'every' must be at least 1"),
        ("schedule = one_cycle(pct_start=2)", "'pct_start' must be"),
        ("seed = 9223372036854775807", "'seed' must be"),
        ("early_stopping = -1", "'early_stopping' must be at least 1"),
        ("metrics = [top_k(0)]", "'k' must be at least 1"),
    ],
)
def test_settings_torch_would_refuse_are_located_errors(tmp_path, setting, message):
    """Values PyTorch refuses at run time (an internal error in `dslc train` before) are refused by check."""
    diag = regression_error(tmp_path, "diabetes(validation=0.2)", setting, "epochs = 1")
    assert message in diag.message and diag.loc is not None


def regression_error(tmp_path: Path, data: str, *settings: str) -> Diagnostic:
    """The one error `check` gives for a linear regression on `data` with these train settings."""
    spec = tmp_path / "t.model"
    spec.write_text(
        "model m {\n input features: float32[batch, 10]\n output prediction = features -> Linear(1)\n}\n"
        f"train {{\n data = {data}\n loss = mse(prediction, target)\n" + "".join(f" {s}\n" for s in settings) + "}\n"
    )
    with pytest.raises(DslcError) as info:
        check_file(spec)
    (diag,) = info.value.diagnostics
    return diag


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("optimizer = sgd(lr=0.1, nesterov=true)", "sgd: nesterov needs a momentum above 0"),
        ("metrics = [top_k(k=20)]", "top_k(k=20) needs at least 20 classes; there are 10"),
    ],
)
def test_settings_pytorch_would_refuse_when_training_are_refused_at_check(write_spec, setting, message):
    text = errors(
        write_spec,
        f"train {{\n    data = digits(image_size=8)\n    scores = net(image)\n"
        f"    loss = cross_entropy(scores, label)\n    {setting}\n}}\n",
    )
    assert message in text


def test_nesterov_with_momentum_and_top_k_within_the_classes_check(write_spec):
    path = write_spec(
        MODEL + "train {\n    data = digits(image_size=8)\n    scores = net(image)\n"
        "    loss = cross_entropy(scores, label)\n    optimizer = sgd(lr=0.1, momentum=0.9, nesterov=true)\n"
        "    metrics = [top_k(k=3)]\n}\n"
    )
    check_file(path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("diabetes(validation=0.001)", "validation=0.001 of its 442 examples leaves the validation split empty"),
        ("diabetes(validation=0.999)", "validation=0.999 of its 442 examples leaves the training split empty"),
        ("digits(validation=0.0002)", "of its 1,797 examples leaves the validation split empty"),
        ('sequences(task="sort", vocab=2)', "'vocab' must be at least 3"),  # 0 and 1 are padding and start
        ("sequences(samples=4, validation=0.1)", "of its 4 examples leaves the validation split empty"),
    ],
)
def test_data_that_would_leave_nothing_to_train_or_score_is_refused_at_check(tmp_path, data, message):
    diag = regression_error(tmp_path, data)
    assert message in diag.message and diag.loc is not None and diag.loc.line == 6


def test_bce_on_values_outside_0_and_1_is_a_clear_error_and_leaves_no_run_folder(tmp_path):
    """diabetes' standardised target is no probability: torch's binary_cross_entropy refuses it mid-step."""
    from click.testing import CliRunner

    from dslc.cli import main

    spec = tmp_path / "t.model"
    spec.write_text(
        "model m {\n input features: float32[batch, 10]\n output probability = features -> Linear(1) -> Sigmoid\n}\n"
        "train {\n data = diabetes(validation=0.2)\n loss = bce(probability, target)\n epochs = 1\n}\n"
    )
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", str(spec), "--out", str(out), "--quiet"])
    assert result.exit_code == 1, result.output
    assert "bce takes probabilities and targets in [0, 1]" in result.output and "bce_with_logits" in result.output
    assert "internal error" not in result.output and not out.exists()


SEQUENCE_MODEL = (
    "model net {\n    input sequence: float32[batch, 16, 8]\n    output logits = sequence -> Flatten -> Linear(6)\n}\n"
)


@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        (MODEL.replace("Linear(10)", "Linear(6)"), "digits(image_size=8)", "digits: field 'label' holds class id 9"),
        (SEQUENCE_MODEL, "sequence_classes(classes=7)", "sequence_classes: field 'label' holds class id 6"),
    ],
)
def test_a_data_set_with_more_classes_than_the_model_scores_is_refused_at_check(write_spec, model, data, message):
    """`dslc train` found this before its first step; the data set's class ids are known at check."""
    path = write_spec(model + f"train {{\n    data = {data}\n    loss = cross_entropy(logits, label)\n}}\n")
    with pytest.raises(DslcError) as info:
        check_file(path)
    (diag,) = info.value.diagnostics
    assert diag.message == f"{message}, outside [0, 6) for a model with 6 outputs"
    assert path.read_text().splitlines()[diag.loc.line - 1].strip().startswith("data = ")
