"""Progress and logging: rank 0's lines, a progress bar per epoch on a terminal, and the epoch's record (mean
losses, samples per second) with its NaN/inf check."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from dslc.errors import error

LOG_EVERY = 10  # steps between progress bar updates (each reads the loss, a device sync)
DIVERGED_HINT = "lower the learning rate, add clip_grad_norm, or check the data for NaN/inf values"


class Progress:
    """Prints for the main process only; `bar` (a terminal, no --quiet) shows a rich progress bar during epochs."""

    def __init__(self, main: bool, bar: bool, epochs: int, world: int = 1):
        self.main, self.show_bar, self.epochs, self.world = main, main and bar, epochs, world
        self.console = None
        self.bar = None
        self.samples, self.seconds = 0, 0.0

    def log(self, text: str) -> None:
        if not self.main:
            return
        if self.console is not None:
            self.console.print(text, markup=False, highlight=False)
        else:
            print(text, flush=True)

    def start_epoch(self, epoch: int, steps: int) -> None:
        self.steps, self.t0, self.samples = steps, time.perf_counter(), 0
        self._pending = None  # GPU: (loss sums being copied to the host, its event, steps)
        if self.show_bar and self.bar is None:
            self._start_bar()
        if self.bar is not None:
            self.task = self.bar.add_task(f"epoch {epoch + 1}/{self.epochs}", total=steps, info="")

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = Console()
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.bar.start()

    def update(self, i: int, batch_samples: int, loss_sums: dict[str, torch.Tensor]) -> None:
        """Count samples; every LOG_EVERY steps update the progress bar, when one is shown. Reading the loss waits for
        the device, so without a bar nothing is read until the end of the epoch; on a GPU the bar shows the values of
        the previous update, copied without blocking."""
        self.samples += batch_samples * self.world
        if self.bar is None or ((i + 1) % LOG_EVERY and i + 1 != self.steps):
            return
        sums = torch.stack([v.detach().float() for v in loss_sums.values()])
        if sums.device.type == "cuda":
            done = self._pending is not None and self._pending[1].query()
            shown = (self._pending[0].tolist(), self._pending[2]) if done else None
            if self._pending is None or done:
                event = torch.cuda.Event()
                self._pending = (sums.to("cpu", non_blocking=True), event, i + 1)
                event.record()
            if shown is None:
                return
            values, steps = shown
        else:
            values, steps = sums.tolist(), i + 1
        losses = {k: v / steps for k, v in zip(loss_sums, values)}
        rate = self.samples / max(time.perf_counter() - self.t0, 1e-9)
        info = "  ".join(f"loss{'' if len(losses) == 1 else '_' + k} {v:.4f}" for k, v in losses.items())
        self.bar.update(self.task, completed=i + 1, info=f"{info}  {rate:,.0f} samples/s")

    def record(self, epoch: int, losses: dict[str, float]) -> dict[str, Any]:
        """The epoch's record from its mean training loss per step (the sum as `train_loss`)."""
        self.seconds = time.perf_counter() - self.t0
        record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": sum(losses.values())}
        if len(losses) > 1:
            record.update({f"train_loss_{k}": v for k, v in losses.items()})
        record["samples_per_s"] = round(self.samples / max(self.seconds, 1e-9), 1)
        return record

    def end_epoch(self, record: dict[str, Any]) -> None:
        """The epoch's line (the bar of the epoch goes)."""
        if self.bar is not None:
            self.bar.remove_task(self.task)
        shown = {k: v for k, v in record.items() if k not in ("epoch", "samples_per_s")}
        rate = f"{record['samples_per_s']:,.0f} samples/s, {self.seconds:.1f}s"
        self.log(f"epoch {record['epoch']}/{self.epochs}  {format_values(shown)}  ({rate})")

    def stop(self) -> None:
        """Stop the bar: an error or the export's lines are shown after it, not under it."""
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def format_values(values: dict[str, Any]) -> str:
    return "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())


def refuse_diverged(epoch: int, losses: dict[str, float], last_checkpoint: Path | None) -> None:
    """Stop when a step's mean training loss is NaN or infinite, naming the checkpoint to go back to."""
    for name, value in losses.items():
        if not math.isfinite(value):
            where = f"; the last good checkpoint is {last_checkpoint}" if last_checkpoint else ""
            raise error(None, f"the loss of step '{name}' became {value} in epoch {epoch + 1}{where}", DIVERGED_HINT)


def refuse_non_finite(record: dict[str, Any]) -> None:
    """Stop when a loss of the record (e.g. the validation loss) is NaN or infinite."""
    for key, value in record.items():
        if isinstance(value, float) and not math.isfinite(value) and "loss" in key:
            raise error(None, f"{key} is {value} after epoch {record['epoch']}", DIVERGED_HINT)
