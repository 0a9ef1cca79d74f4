"""`dslc train`: check the spec, write the model code and the training script into the run
folder, then run that script (in this process, or under torch.distributed.run for --nproc)."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dslc.errors import error, read_source
from dslc.fileio import write_atomic
from dslc.training.flags import with_flags


def prepare_run(
    spec: str | Path, out: Path, overrides: list[str], resume: bool, flags: dict[str, Any] | None = None
) -> Path:
    """Write `<stem>.py`, `<stem>_train.py` and a copy of the spec into `out`; return the script path. With --resume,
    first check that the spec, its --set values, the train settings and the `flags` given to the script (--epochs,
    --batch-size, --seed, --amp; by name, as `dslc train` takes them) are those of the checkpoint, so that a refused
    resume writes nothing."""
    from dslc.checker import check_file
    from dslc.emit_torch import emit_program
    from dslc.emit_train import emit_train_script
    from dslc.training import checkpoint as ckpt
    from dslc.training.overrides import split_overrides

    consts, settings = split_overrides(spec, overrides)
    program = check_file(spec, consts, settings)
    if program.train is None:
        raise error(
            None,
            f"{spec}: the spec has no train section",
            "add `train { data = ...  loss = ... }`; see docs/training.md",
        )
    stem = program.module_name
    if flags and flags.get("weights"):
        from dslc.training.weights import check_weight_sources

        check_weight_sources(list(flags["weights"]), [m.spec_name for m in program.exported])
    found = ckpt.checkpoints(out / "checkpoints")
    if found and not resume:
        raise error(
            None,
            f"{out} already holds a run ({found[-1].name})",
            "pass --resume to continue it, or choose another --out",
        )
    # the spec's copy is always `<module>.model`: a spec named `x.py` or `decimal.py` must not land
    # next to the training script as importable Python
    copy = out / f"{stem}.model"
    if found and resume:
        flags = flags or {}
        config = with_flags(program.train.settings, flags)
        identity = ckpt.run_identity(program.sha256, consts, config, bool(flags.get("amp")))
        _check_resumable(out / "checkpoints", identity, copy, program.source)
    script = out / f"{stem}_train.py"
    write_atomic(out / f"{stem}.py", emit_program(program))
    write_atomic(script, emit_train_script(program, consts, settings))
    write_atomic(copy, program.source)
    return script


def _check_resumable(folder: Path, identity: dict[str, Any], copy: Path, source: str) -> None:
    """The training script's --resume check, before anything is written: the spec's changed lines come from the run
    folder's copy of the spec it started with."""
    from dslc.training import checkpoint as ckpt

    latest = ckpt.load_latest(folder)
    if latest is not None:
        path, (_, _, meta), _ = latest
        saved = read_source(copy) if copy.is_file() else None
        ckpt.refuse_changed_run(path, meta, identity, saved_spec=saved, spec=source)


def run_script(script: Path, argv: list[str], nproc: int) -> None:
    if nproc <= 1:
        from dslc.build import load_generated

        # The script imports its model code by module name: forget a same-named module an earlier
        # run in this process imported from another folder.
        sys.modules.pop(script.name.removesuffix("_train.py"), None)
        # the run's Ctrl-C handlers are put back however it ends (an error too), as the caller had them
        previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            load_generated(script).main(argv)
        finally:
            for signum, handler in previous.items():
                if handler is not None:  # None: a handler not set from Python, left alone
                    signal.signal(signum, handler)
        return
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        str(script),
        *argv,
    ]
    from dslc.training.run_folder import LOCK_HOLDER_ENV

    # this process holds the run folder's lock (dslc.cli train): rank 0 of the processes it starts may write there
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), LOCK_HOLDER_ENV: str(os.getpid())}
    process = subprocess.Popen(command, env=env)
    with _signals_to(process):
        code = process.wait()
    if code:
        sys.exit(code)


@contextlib.contextmanager
def _signals_to(process: subprocess.Popen) -> Iterator[None]:
    """While torchrun runs the processes: Ctrl-C reaches them from the terminal (this process waits for them to save
    their checkpoint instead of killing them), and a SIGTERM sent to this process is passed on to torchrun."""
    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
        signal.SIGTERM: signal.signal(signal.SIGTERM, lambda signum, frame: process.send_signal(signum)),
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def resume_command_set(words: list[str]) -> Iterator[None]:
    """The training script, run by `dslc train`, prints this command (with --resume) when interrupted."""
    from dslc.training.interrupts import RESUME_COMMAND_ENV

    before = os.environ.get(RESUME_COMMAND_ENV)
    os.environ[RESUME_COMMAND_ENV] = shlex.join(words)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(RESUME_COMMAND_ENV, None)
        else:
            os.environ[RESUME_COMMAND_ENV] = before
