"""The run folder as rank 0 writes it: its lock, config.json, metrics.jsonl and curves.png, the epoch checkpoints
and checkpoints/best.safetensors; and what --resume and early stopping read back from it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dslc import __version__
from dslc.errors import DslcError, error
from dslc.extras import MissingExtraError
from dslc.fileio import (
    FolderBusyError,
    folder_locked,
    lock_folder,
    make_folder,
    remove_debris,
    unlock_folder,
    write_atomic,
)
from dslc.training import checkpoint as ckpt
from dslc.training.curves import plot

# curves.png is redrawn after an epoch when the drawing time so far stays under this share of the run's time (drawing
# takes ~0.1-0.5 s: epochs shorter than ~20 drawings skip some redraws); the last epoch's curves are always drawn
PLOT_SHARE = 0.05
BEST = "best.safetensors"  # checkpoints/best.safetensors: the best epoch's weights by `monitor` (early stopping)
# set by `dslc train --nproc N` for its processes: the pid of that command, which holds the run folder's lock for them
LOCK_HOLDER_ENV = "DSLC_RUN_LOCK_HOLDER"

# per step: its optimizer, its learning-rate scheduler (None: constant) and its loss scaler
StepState = dict[str, tuple[torch.optim.Optimizer, Any, torch.amp.GradScaler]]


class RunFolder:
    """Rank 0's writes into the run folder `out`, each atomic and made while holding the folder's lock."""

    def __init__(self, out: Path, log: Callable[[str], None]):
        self.out, self.checkpoints = out, out / "checkpoints"
        self.log = log
        self.owns_lock = False  # this process took the lock (and releases it when done)
        self.plots = True  # False once matplotlib was found missing (said once)
        self.started = time.monotonic()
        self.plot_seconds = 0.0  # time spent drawing curves.png
        self.unplotted: list[dict[str, Any]] | None = None  # the records of a redraw skipped to save time

    def take(self, resume: bool, config: dict[str, Any]) -> None:
        """Lock the folder, remove what an interrupted write left there, refuse a folder that holds a run unless
        resuming it, and write config.json for a new run."""
        make_folder(self.out)
        self.hold()
        removed = remove_debris(self.out) + remove_debris(self.checkpoints)
        if removed:
            names = ", ".join(str(p.relative_to(self.out)) for p in removed)
            self.log(f"removed {len(removed)} leftover(s) of an interrupted write: {names}")
        existing = ckpt.checkpoints(self.checkpoints)
        if existing and not resume:
            raise error(
                None,
                f"{self.out} already holds a run ({existing[-1].name})",
                "pass --resume to continue it, or choose another --out",
            )
        if not existing:
            write_atomic(self.out / "config.json", json.dumps(config, indent=2) + "\n")

    def hold(self) -> None:
        """Hold the folder's lock (the kernel drops it when the process ends, kill -9 included); called before each
        write. Under `dslc train` the command holds it already: in this process, or as the launcher of these processes
        (LOCK_HOLDER_ENV). When that launcher is killed and these processes live on, rank 0 takes the lock over, or
        stops if another run has taken the folder meanwhile."""
        if self.owns_lock:
            return
        try:
            self.owns_lock = lock_folder(self.out)
        except FolderBusyError as busy:
            launcher = busy.pid is not None and str(busy.pid) == os.environ.get(LOCK_HOLDER_ENV)
            if not (launcher and _alive(busy.pid)):
                raise folder_in_use(self.out, busy.pid) from None

    def release(self) -> None:
        if self.owns_lock:
            unlock_folder(self.out)
            self.owns_lock = False

    def write_metrics(self, records: list[dict[str, Any]], final: bool = False) -> None:
        """metrics.jsonl, rewritten whole (never appended), and the curves: redrawn when that keeps the drawing time
        under PLOT_SHARE of the run's, or when `final`."""
        self.hold()
        write_atomic(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records))
        if not (records and self.plots):
            return
        if final or self.plot_seconds <= PLOT_SHARE * (time.monotonic() - self.started):
            start = time.monotonic()
            self.plot(records)
            self.plot_seconds += time.monotonic() - start
            self.unplotted = None
        else:
            self.unplotted = list(records)

    def plot_skipped(self) -> None:
        """Draw the curves a redraw skipped (the end of training, an interrupt)."""
        if self.unplotted is not None and self.plots:
            self.plot(self.unplotted)
            self.unplotted = None

    def plot(self, records: list[dict[str, Any]]) -> None:
        """curves.png; without matplotlib (the `plots` extra) a note says so once and training goes on."""
        try:
            plot(records, self.out / "curves.png")
        except MissingExtraError as exc:
            self.plots = False
            self.log(f"note: curves.png is not drawn: {exc.message}; {exc.hint}")

    def save_checkpoint(
        self,
        epoch: int,
        models: dict[str, nn.Module],
        steps: StepState,
        meta: dict[str, Any],
        keep: int,
        step: int = 0,
        loss_sums: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """The checkpoint after `epoch` epochs (weights, optimizer, scheduler, scaler and RNG state; `meta`: the run's
        identity and history), or `step` steps into the next (an interrupt; with the loss sums of those steps); the
        oldest beyond `keep` are removed. Returns its path."""
        self.hold()
        meta = {"dslc_version": __version__, "epoch": epoch, **meta}
        state = {"steps": step_states(steps), "rng": _rng()}
        if step:
            state["epoch"] = {"loss_sums": dict(loss_sums or {})}
        path = ckpt.path_for(self.checkpoints, epoch, step)
        ckpt.save(path, models, state, meta)
        for old in ckpt.checkpoints(self.checkpoints)[:-keep]:
            old.unlink(missing_ok=True)
        return path

    def save_best(self, models: dict[str, nn.Module], meta: dict[str, Any]) -> None:
        self.hold()
        ckpt.save(self.checkpoints / BEST, models, {}, {"dslc_version": __version__, **meta})

    def last_checkpoint(self) -> Path | None:
        found = ckpt.checkpoints(self.checkpoints)
        return found[-1] if found else None

    def best_weights(self, epoch: int) -> tuple[dict[str, dict[str, torch.Tensor]] | None, str]:
        """The weights checkpoints/best.safetensors holds for `epoch`: (weights, ""), or (None, why not)."""
        path = self.checkpoints / BEST
        if not path.is_file():
            return None, f"{path} is missing"
        try:
            weights, _, meta = ckpt.load(path)
        except ckpt.CheckpointError as bad:
            return None, f"checkpoint {path} {bad.reason}"
        if meta.get("epoch") != epoch:
            return None, f"{path} holds epoch {meta.get('epoch')}, not the best epoch {epoch}"
        return weights, ""


def step_states(steps: StepState) -> dict[str, Any]:
    return {
        name: {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict(),
        }
        for name, (optimizer, scheduler, scaler) in steps.items()
    }


def _rng() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def load_checkpoint(
    path: Path,
    weights: dict[str, dict[str, torch.Tensor]],
    state: dict[str, Any],
    models: dict[str, nn.Module],
    steps: StepState,
) -> None:
    """Models, optimizers, schedulers, loss scalers and RNG from a checkpoint of this run (checked before); what
    does not fit is an error naming the checkpoint and the part."""
    part = ""
    try:
        for name, model in models.items():
            part = f"the weights of model '{name}'"
            model.load_state_dict(weights[name])
        for name, (optimizer, scheduler, scaler) in steps.items():
            part = f"the optimizer state of step '{name}'"
            saved = state["steps"][name]
            optimizer.load_state_dict(saved["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(saved["scheduler"])
            scaler.load_state_dict(saved["scaler"])
        part = "the random number generator state"
        torch.set_rng_state(state["rng"]["torch"])
        if torch.cuda.is_available() and state["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0][:200]
        raise error(
            None,
            f"cannot resume from {path}: {part} does not fit ({detail})",
            "was it written by another version of dslc? start a new run with another --out",
        ) from None


@contextlib.contextmanager
def run_folder_locked(folder: Path) -> Iterator[None]:
    """Hold the run folder's lock for the block (`dslc train`: writing the scripts, then training); a second run into
    the same folder stops with an error naming the holder."""
    try:
        with folder_locked(folder):
            yield
    except FolderBusyError as busy:
        raise folder_in_use(folder, busy.pid) from None


def folder_in_use(folder: Path, pid: int | None) -> DslcError:
    return error(
        None,
        f"run folder {folder} is in use by another run (pid {pid if pid is not None else 'unknown'})",
        "wait for that run to end, or choose another --out",
    )


def _alive(pid: int) -> bool:
    """Whether process `pid` exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by someone else
    return True


def discard_unstarted_run(out: Path) -> bool:
    """Remove a run folder this command created when the run failed before saving anything worth keeping (no
    checkpoint, no exported graph): its config, scripts and spec copy describe a run that never happened. True when
    it was removed."""
    if not out.is_dir() or ckpt.checkpoints(out / "checkpoints") or any(out.glob("*.onnx")):
        return False
    shutil.rmtree(out, ignore_errors=True)
    return not out.exists()
