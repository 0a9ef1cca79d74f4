"""Train flags defined once (dslc/training/flags.py): the command, the generated script's parser and its usage
lines agree, and near misses (`--lr`, `--batch`, `--epoch`) get the flag or `--set` key meant in both."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from dslc.build import load_generated
from dslc.cli import main
from dslc.training.flags import FLAGS, near_miss, parse_script_args, script_argv, usage_lines, with_flags
from tests.conftest import SPECS

CONFIG = {"epochs": 5, "batch_size": 32, "seed": 7}


def test_the_script_defaults_to_the_specs_settings_and_its_own_folder(tmp_path):
    args = parse_script_args([], CONFIG, tmp_path)
    assert (args.epochs, args.batch_size, args.seed, args.device) == (5, 32, 7, "auto")
    assert args.out == args.data_dir == tmp_path and args.weights == [] and not args.resume
    args = parse_script_args(
        ["-o", "r", "--epochs", "0", "--data-dir", "d", "--weights", "a", "--weights", "b"], CONFIG, tmp_path
    )
    assert (args.out, args.data_dir, args.epochs, args.weights) == (Path("r"), Path("d"), 0, ["a", "b"])
    assert with_flags({**CONFIG, "monitor": "val_loss"}, vars(args))["epochs"] == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epochs", "-1"], "--epochs must be at least 0"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--lr", "0.1"], "unrecognized arguments: --lr 0.1 (this script's settings are fixed: write it again with "
                          "`dslc build SPEC --set optimizer.lr=...`)"),
        (["--batch", "8"], "(did you mean --batch-size?)"),  # not taken as an abbreviation of --batch-size
        (["--epoch=3"], "(did you mean --epochs?)"),
        (["--nproc", "2"], "unrecognized arguments: --nproc 2"),  # the command's flag: the script runs under torchrun
    ],
)  # fmt: skip
def test_the_scripts_usage_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as caught:
        parse_script_args(argv, CONFIG, tmp_path)
    assert caught.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--lr", "No such option: --lr (use --set optimizer.lr=...)"),
        ("--learning-rate", "(use --set optimizer.lr=...)"),
        ("--batch", "No such option: --batch (did you mean --batch-size?)"),
        ("--epoch", "No such option: --epoch (did you mean --epochs?)"),
    ],
)
def test_the_commands_near_misses(flag, message):
    result = CliRunner().invoke(main, ["train", str(SPECS / "mlp.model"), flag, "3"])
    assert result.exit_code == 2 and message in result.output and "--help" not in result.output.splitlines()[-1]


def test_a_generated_script_gives_the_same_hints(tmp_path, capsys):
    result = CliRunner().invoke(main, ["build", str(SPECS / "mlp.model"), "-o", str(tmp_path), "--no-onnx"])
    assert result.exit_code == 0, result.output
    script = load_generated(tmp_path / "mlp_train.py")
    with pytest.raises(SystemExit):
        script.main(["--lr", "0.1"])
    assert "`dslc build SPEC --set optimizer.lr=...`" in capsys.readouterr().err
    # the docstring's usage lines come from the same table
    text = (tmp_path / "mlp_train.py").read_text()
    assert all(line in text for line in usage_lines("mlp_train.py"))


def test_usage_lines_name_every_script_flag_and_never_split_one():
    lines = usage_lines("a_long_spec_name_train.py", width=60)
    assert all(len(line) <= 60 for line in lines) and len(lines) > 2
    text = " ".join(lines)
    assert all(f"[{f.name}" in text for f in FLAGS if f.script) and "[--nproc" not in text
    assert all(line.endswith(("]", "]...")) for line in lines)  # each line ends a flag
    assert "[--weights [MODEL=]FILE]..." in text
    assert all(line.startswith(" " * len("python a_long_spec_name_train.py ")) for line in lines[1:])


def test_the_command_passes_on_what_the_script_takes():
    values = {"out": Path("r"), "epochs": 0, "seed": None, "batch_size": 4, "device": "cpu", "set": ("hidden=3",), "nproc": 2,
              "resume": True, "amp": False, "weights": ("a.pth", "m=b.pth"), "data_dir": Path("d")}  # fmt: skip
    assert script_argv(values) == [
        "--out", "r", "--epochs", "0", "--batch-size", "4", "--device", "cpu", "--data-dir", "d", "--resume",
        "--weights", "a.pth", "--weights", "m=b.pth",
    ]  # fmt: skip


def test_near_miss_knows_nothing_it_should_not():
    assert near_miss("--frobnicate", script=False) is None
    assert near_miss("--nprocs", script=False) == "did you mean --nproc?"
    assert "--nproc" not in (near_miss("--nprocs", script=True) or "")  # no such flag in the script


def test_ignore_mismatched_sizes_without_weights_is_refused(tmp_path):
    args = ["train", str(SPECS / "mlp.model"), "-o", str(tmp_path / "run"), "--quiet", "--ignore-mismatched-sizes"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "--ignore-mismatched-sizes applies to the --weights loaded" in result.output
