"""`--set` through the real command line: a bad key names the `--set` argument, the nearest constant or train
setting and its kind; `check` and `train` take train settings; `build` takes them into its training script."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from dslc.checker import check_file
from dslc.cli import main
from dslc.training.overrides import split_overrides
from tests.conftest import SPECS

MLP = str(SPECS / "mlp.model")  # const hidden; optimizer = sgd(...); data = diabetes(...)
NO_ARGUMENTS = "without arguments; only optimizer, schedule and data take them"


def dslc(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    assert "Traceback" not in result.output
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("override", "message", "hint"),
    [
        ("epoch=1", "no constant or train setting 'epoch'", "did you mean 'epochs' (a train setting)?"),
        ("hiden=3", "no constant or train setting 'hiden'", "did you mean 'hidden' (a constant)?"),
        ("optimizer.learning_rate=0.1", "sgd has no argument 'learning_rate'", "did you mean 'lr'?"),
        ("optimizer.wd=0.1", "sgd has no argument 'wd'", "did you mean 'weight_decay'?"),
        ("optimiser.lr=1", "no train setting 'optimiser'", "did you mean 'optimizer' (a train setting)?"),
        ("data.validatio=0.1", "diabetes has no argument 'validatio'", "did you mean 'validation'?"),
        ("schedule.wrmup=1", "constant (the default schedule) has no argument 'wrmup'", "did you mean 'warmup'?"),
        ("optimizer=sgdd", "unknown optimizer 'sgdd'", "did you mean 'sgd'?"),
        (
            "optimizer=sgd(lr=1)",
            "expected the name of one of the optimizers (sgd, adam, adamw, rmsprop)",
            "set its arguments one by one: --set optimizer.NAME=VALUE",
        ),
        ("optimizer.lr=fast", "sgd: 'lr' must be a number, got \"fast\"", None),
        ("optimizer.lr=-1", "sgd: 'lr' must be at least 0.0, got -1.0", None),
        ("epochs.max=1", f"'epochs' is a train setting {NO_ARGUMENTS}", "set the whole value: --set epochs=VALUE"),
        ("hidden.x=2", f"'hidden' is a constant {NO_ARGUMENTS}", "set the whole value: --set hidden=VALUE"),
        ("hidden", "--set expects NAME=VALUE, got 'hidden'", None),
    ],
)
def test_a_bad_key_names_the_argument_and_the_nearest_name(override, message, hint):
    code, output = dslc("check", MLP, "--set", override)
    assert code == 1
    first, *rest = output.splitlines()
    prefix = "error: " if override == "hidden" else f"error: --set {override}: "
    assert first == prefix + message  # no file:line:col: the problem is on the command line, not in the spec
    assert (f"  hint: {hint}" in rest) if hint else not any(line.startswith("  hint:") for line in rest)
    assert rest[-1] == "1 error"


def test_every_bad_key_is_reported_at_once():
    code, output = dslc("check", MLP, "--set", "epoch=1", "--set", "hidden=8", "--set", "optimizer.learning_rate=1")
    assert code == 1 and output.endswith("2 errors\n")
    assert "--set epoch=1:" in output and "--set optimizer.learning_rate=1:" in output


def test_check_takes_train_settings():
    code, output = dslc("check", str(SPECS / "cnn.model"), "--set", "optimizer.lr=1e-3", "--set", "epochs=1")
    assert (code, output) == (0, f"{SPECS / 'cnn.model'}: ok (cnn; 421,642 parameters)\n")
    code, output = dslc("check", MLP, "--set", "hidden=7", "--set", "data.validation=0.1", "--set", "optimizer=adam")
    assert code == 0, output


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("epochs=many", "epochs: 'epochs' must be an integer, got \"many\""),
        ("epochs=0", "epochs must be at least 1"),
        ("monitor=accuracy", "monitor 'accuracy' is not a recorded value"),  # a setting the spec leaves out
    ],
)
def test_a_value_error_from_an_override_names_the_override_not_the_spec_line(override, message):
    """A plain setting's value is checked like written source, but the error is the argument's, not line 19's."""
    code, output = dslc("check", MLP, "--set", override)
    assert code == 1 and output.startswith(f"--set {override}: error: {message}\n"), output


def test_whole_values_apply_before_arguments():
    consts, settings = split_overrides(MLP, ["optimizer.lr=0.5", "optimizer=adam", "hidden=3"])
    assert consts == ["hidden=3"]
    step = check_file(MLP, consts, settings).train.steps[0]
    assert step.optimizer.kind == "adam" and step.optimizer.options["lr"] == 0.5


def test_a_step_setting_of_a_spec_with_steps_is_refused():
    code, output = dslc("check", str(SPECS / "gan.model"), "--set", "optimizer.lr=1e-4")
    assert code == 1
    assert output.startswith(
        "error: --set optimizer.lr=1e-4: 'optimizer' is set in each step (discriminator, generator), "
        "which --set cannot reach\n  hint: change it in the spec's step sections\n"
    )
    assert dslc("check", str(SPECS / "gan.model"), "--set", "epochs=1")[0] == 0


def test_a_train_setting_without_a_train_section(write_spec):
    spec = write_spec("model m {\n    input x: float32[batch, 3]\n    output y = x -> Linear(2)\n}\n")
    code, output = dslc("check", str(spec), "--set", "epochs=1")
    assert code == 1 and output.startswith("error: --set epochs=1: the spec has no train section\n")


def test_train_refuses_a_bad_key_before_writing_the_run_folder(tmp_path):
    out = tmp_path / "run"
    code, output = dslc("train", MLP, "--out", str(out), "--set", "epoch=1")
    assert code == 1 and "error: --set epoch=1: no constant or train setting 'epoch'" in output
    assert not out.exists()


def test_build_takes_train_settings_into_its_training_script(tmp_path):
    out = tmp_path / "build"
    code, output = dslc("build", MLP, "-o", str(out), "--no-onnx", "--set", "optimizer.lr=0.1")
    assert code == 0, output
    script = (out / "mlp_train.py").read_text()
    assert "lr=0.1" in script and '"train_overrides": [("optimizer.lr", 0.1)]' in script
    shutil.rmtree(out)
    code, output = dslc("build", MLP, "-o", str(out), "--no-onnx", "--set", "epoch=1")
    assert code == 1 and "hint: did you mean 'epochs' (a train setting)?" in output
    assert not out.exists()
    code, output = dslc("build", MLP, "-o", str(out), "--no-onnx", "--set", "hidden=3")
    assert code == 0 and (out / "mlp.py").exists(), output
