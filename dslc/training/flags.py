"""The flags of `dslc train` and of the generated `<stem>_train.py`, defined once in FLAGS: the command's click
options, the script's argparse parser and the usage lines of the script's docstring are built from it, and both
answer a near miss (`--lr`, `--batch`, `--epoch`) with the flag or `--set` key meant."""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Flag:
    name: str  # "--batch-size"
    help: str  # a sentence without its full stop: the default is said after it
    metavar: str | None = None  # None: an on/off switch
    type: type = str
    choices: tuple[str, ...] = ()
    default: Any = None
    setting: str | None = None  # the train setting it overrides: its default is the spec's value
    minimum: int | None = None
    repeat: bool = False
    short: str | None = None
    command_default: str | None = None  # said in the help where the default is not `default`
    script_default: str | None = None
    script: bool = True  # the generated script takes it (`dslc train` takes every flag)

    @property
    def dest(self) -> str:
        return self.name.removeprefix("--").replace("-", "_")

    def names(self) -> list[str]:
        return [self.short, self.name] if self.short else [self.name]


# `dslc build` takes these too: the graphs written beside the float32 one (dslc.build.VARIANTS)
PRECISIONS = ("fp16", "bf16")
PRECISION_HELP = (
    "Also write <model>.fp16.onnx and/or <model>.bf16.onnx: float16 or bfloat16 weights and compute (float32 inputs "
    "and outputs); fp16 verified in onnxruntime and in onnx's reference implementation (every op rounded to 16 bits, "
    "as on a GPU) within 0.01 x max(1, largest |output|), bf16 (which onnxruntime runs on CUDA only) in the "
    "reference implementation within 0.05 x max(1, largest |output|)"
)
QUANTIZE_HELP = (
    "Also write <model>.int8.onnx: 8-bit weights for the matrix products and embeddings (dynamic quantization; "
    "convolutions stay float32), verified within 0.05 x max(1, largest |output|)"
)

FLAGS = (
    Flag("--out", "The run folder", "DIR", Path, short="-o", command_default="runs/<stem>",
         script_default="this script's folder"),
    Flag("--epochs", "Override the train section's epochs (0: only export, e.g. the --weights)", "N", int,
         setting="epochs", minimum=0),
    Flag("--batch-size", "Override the (global) batch size", "N", int, setting="batch_size", minimum=1),
    Flag("--seed", "Override the seed", "N", int, setting="seed"),
    Flag("--device", "Where to train", "auto|cpu|cuda", choices=("auto", "cpu", "cuda"), default="auto"),
    Flag("--data-dir", "The folder the spec's data files are read from", "DIR", Path,
         command_default="the spec's folder", script_default="this script's folder"),
    Flag("--set", "Override a constant or a train setting (hidden=64, epochs=3, optimizer.lr=0.01)", "KEY=VALUE",
         repeat=True, script=False),
    Flag("--resume", "Continue from the last checkpoint in the run folder"),
    Flag("--nproc", "Processes (DDP: gloo on CPU, NCCL on GPU); the script runs under torchrun instead", "N", int,
         default=1, minimum=1, script=False),
    Flag("--amp", "Mixed precision: bf16 autocast (fp16 with loss scaling on GPUs without bf16)"),
    Flag("--compile", "torch.compile the trained models"),
    Flag("--quiet", "No progress bar"),
    Flag("--no-tensorboard", "Write no TensorBoard event files (written to DIR/tensorboard/ when tensorboard is "
         "installed)"),
    Flag("--weights", "Load a .safetensors/.pth state dict (strict) before training; --epochs 0 only exports it",
         "[MODEL=]FILE", repeat=True),
    Flag("--precision", PRECISION_HELP + " (of the weights exported; repeatable)", "fp16|bf16", choices=PRECISIONS,
         repeat=True),
    Flag("--quantize", QUANTIZE_HELP, "int8", choices=("int8",)),
    Flag("--ignore-mismatched-sizes", "With --weights: tensors whose shape differs from the model's (a new head, "
         "--set classes=10) keep their fresh initialisation, as in HuggingFace's from_pretrained"),
)  # fmt: skip


def check_combinations(values: dict[str, Any]) -> None:
    """Flags that need another: refused before any work (by `dslc train`, and by the script for itself)."""
    from dslc.errors import error

    if values.get("ignore_mismatched_sizes") and not values.get("weights"):
        raise error(
            None,
            "--ignore-mismatched-sizes applies to the --weights loaded, and none is given",
            "add --weights FILE, or drop --ignore-mismatched-sizes",
        )


# flags people type for a train setting, and the `--set` key it is
SETTING_FLAGS = {
    "--lr": "optimizer.lr",
    "--learning-rate": "optimizer.lr",
    "--weight-decay": "optimizer.weight_decay",
    "--momentum": "optimizer.momentum",
    "--validation": "data.validation",
}
# abbreviations too short for difflib to find the flag
ALIASES = {"--bs": "--batch-size"}


def near_miss(option: str, script: bool) -> str | None:
    """A hint for an unknown flag of the command (`script` False) or of the generated script."""
    name = option.partition("=")[0]
    known = [f.name for f in FLAGS if f.script or not script]
    if name in SETTING_FLAGS:
        key = SETTING_FLAGS[name]
        if script:  # the script has no --set: its settings are CONFIG's
            return f"this script's settings are fixed: write it again with `dslc build SPEC --set {key}=...`"
        return f"use --set {key}=..."
    meant = ALIASES.get(name) or next(iter(difflib.get_close_matches(name, known, n=1, cutoff=0.6)), None)
    return f"did you mean {meant}?" if meant in known else None


# ---------------------------------------------------------------- the script: argparse


def parse_script_args(argv: list[str] | None, config: dict[str, Any], script_dir: Path) -> argparse.Namespace:
    """The generated script's flags: the train settings default to CONFIG's, --out and --data-dir to the script's
    folder. A value under a flag's minimum, or an unknown flag (with a hint), is a usage error."""
    parser = argparse.ArgumentParser(
        description="Train the models of a dslc spec (generated script).", allow_abbrev=False
    )
    for flag in FLAGS:
        if flag.script:
            default = config[flag.setting] if flag.setting else script_dir if flag.script_default else flag.default
            parser.add_argument(*flag.names(), **_argparse_options(flag, default))
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        hint = near_miss(unknown[0], script=True) if unknown[0].startswith("--") else None
        parser.error(f"unrecognized arguments: {' '.join(unknown)}" + (f" ({hint})" if hint else ""))
    for flag in FLAGS:
        if flag.script and flag.minimum is not None and getattr(args, flag.dest) < flag.minimum:
            parser.error(f"{flag.name} must be at least {flag.minimum}")
    return args


def _argparse_options(flag: Flag, default: Any) -> dict[str, Any]:
    shown = f"{flag.help} (default: {flag.script_default})." if flag.script_default else f"{flag.help}."
    if flag.metavar is None:
        return {"action": "store_true", "help": shown}
    options: dict[str, Any] = {"type": flag.type, "help": shown}
    if flag.repeat:
        choices = {"choices": flag.choices} if flag.choices else {}
        return {**options, **choices, "action": "append", "default": [], "metavar": flag.metavar}
    if flag.choices:
        return {**options, "choices": flag.choices, "default": default}
    return {**options, "default": default, "metavar": flag.metavar}


def usage_lines(prog: str, width: int = 100) -> list[str]:
    """`python x_train.py [--out DIR] [--epochs N] ...`, wrapped under its first flag (never inside a flag)."""
    items = [f"[{' '.join(filter(None, (f.name, f.metavar)))}]{'...' if f.repeat else ''}" for f in FLAGS if f.script]
    lines = [f"python {prog}"]
    for item in items:
        if len(lines[-1]) + 1 + len(item) > width:
            lines.append(" " * len(f"python {prog}"))
        lines[-1] += " " + item
    return lines


# ---------------------------------------------------------------- the command: click


def click_options(command: Callable) -> Callable:
    """Decorate the `dslc train` command with its flags (its parameters are the flags' `dest` names)."""
    import click

    for flag in reversed(FLAGS):
        command = click.option(*flag.names(), flag.dest, **_click_options(flag))(command)
    return command


def _click_options(flag: Flag) -> dict[str, Any]:
    import click

    shown = f"{flag.help} (default: {flag.command_default})." if flag.command_default else f"{flag.help}."
    if flag.metavar is None:
        return {"is_flag": True, "help": shown}
    options: dict[str, Any] = {"help": shown, "metavar": flag.metavar, "multiple": flag.repeat}
    if flag.choices:
        default = () if flag.repeat else flag.default
        return {**options, "type": click.Choice(flag.choices), "default": default, "show_default": not flag.repeat}
    kind = click.IntRange(min=flag.minimum) if flag.minimum is not None else click.Path() if flag.type is Path else None
    return {**options, "type": kind or flag.type, "default": flag.default, "show_default": flag.default is not None}


def variants(precision: list[str] | tuple[str, ...], quantize: str | None) -> tuple[str, ...]:
    """The graphs to write beside the float32 one (dslc.build.VARIANTS), each once, in the flags' order."""
    return tuple(dict.fromkeys([*precision, *([quantize] if quantize else [])]))


def with_flags(config: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The train settings as the flags given (by `dest`) change them (--epochs, --batch-size, --seed)."""
    return {**config, **{f.setting: values[f.dest] for f in FLAGS if f.setting and values.get(f.dest) is not None}}


def script_argv(values: dict[str, Any], command: bool = False) -> list[str]:
    """The script's flags for the values `dslc train` was given (by `dest`): switches that are on, each repeated
    value, and the other values that are set (unset train settings keep the spec's). `command`: the flags of
    `dslc train` itself that differ from their defaults (the command line that resumes a run)."""
    argv: list[str] = []
    for flag in FLAGS:
        value = values.get(flag.dest)
        if not (flag.script or command) or value is None or value is False:  # `--epochs 0` is passed on
            continue
        if command and (value == flag.default or (flag.repeat and not value)):
            continue
        if flag.metavar is None:
            argv.append(flag.name)
        else:
            for item in value if flag.repeat else [value]:
                argv += [flag.name, str(item)]
    return argv
