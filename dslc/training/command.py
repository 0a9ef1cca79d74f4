"""`dslc train`: check the spec, write the model code and the training script into the run
folder, then run that script (in this process, or under torch.distributed.run for --nproc)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dslc.errors import error
from dslc.fileio import write_atomic


def prepare_run(spec: str | Path, out: Path, overrides: list[str], resume: bool) -> Path:
    """Write `<stem>.py`, `<stem>_train.py` and a copy of the spec into `out`; return the script path."""
    from dslc.checker import check_file
    from dslc.emit_torch import emit_program
    from dslc.emit_train import emit_train_script
    from dslc.training import checkpoint as ckpt
    from dslc.training.check import split_overrides

    consts, settings = split_overrides(spec, overrides)
    program = check_file(spec, consts, settings)
    if program.train is None:
        raise error(None, f"{spec}: the spec has no train section", "add `train { data = ...  loss = ... }`; see docs/training.md")
    stem = program.module_name
    found = ckpt.checkpoints(out / "checkpoints")
    if found and not resume:
        raise error(None, f"{out} already holds a run ({found[-1].name})", "pass --resume to continue it, or choose another --out")
    if found and resume:
        _, _, meta = ckpt.load(found[-1])
        if meta["spec_sha256"] != program.sha256:
            raise error(None, f"cannot resume from {found[-1]}: the spec changed since it was written",
                        "resume with the spec the run started with, or start a new run with another --out")
    script = out / f"{stem}_train.py"
    write_atomic(out / f"{stem}.py", emit_program(program))
    write_atomic(script, emit_train_script(program, consts, settings))
    write_atomic(out / Path(spec).name, program.source)
    return script


def run_script(script: Path, argv: list[str], nproc: int) -> None:
    if nproc <= 1:
        from dslc.build import load_generated

        load_generated(script).main(argv)
        return
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", str(script), *argv]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    code = subprocess.call(command, env=env)
    if code:
        sys.exit(code)
