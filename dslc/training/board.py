"""TensorBoard event files in `DIR/tensorboard/` (torch.utils.tensorboard, the `plots` extra): per epoch the losses
(`loss/train`, `loss/validation`, each step's with several steps), the metrics (`metric/accuracy`, ...), each
step's learning rate (`learning_rate/<step>`) and the throughput. On by default when tensorboard is installed
(`--no-tensorboard` turns it off); `tensorboard --logdir runs` shows every run.

The event files are TensorBoard's own append-only logs (not written atomically): a resumed run purges the events
after the epoch it resumes from, so a curve never holds an epoch twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dslc.training.curves import is_loss, series_label

FOLDER = "tensorboard"


def tag(key: str, validated: bool) -> str:
    """metrics.jsonl's key -> the scalar's tag: `train_loss` -> `loss/train`, `accuracy` -> `metric/accuracy`."""
    if key == "samples_per_s":
        return "speed/samples_per_s"
    if is_loss(key):
        return "loss/" + series_label(key, validated).replace(" (", "_").rstrip(")")
    return f"metric/{key}"


class Board:
    """A SummaryWriter for the run folder `out`, or nothing when tensorboard is missing (the caller said so)."""

    def __init__(self, out: Path, first_epoch: int):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: events of epochs after the checkpoint resumed from (written before an interrupt) are dropped
        self.writer = SummaryWriter(log_dir=str(out / FOLDER), purge_step=first_epoch + 1 if first_epoch else None)

    def epoch(self, record: dict[str, Any], learning_rates: dict[str, float]) -> None:
        epoch = record["epoch"]
        validated = "val_loss" in record
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(tag(key, validated), value, epoch)
        for name, lr in learning_rates.items():
            self.writer.add_scalar(f"learning_rate/{name}", lr, epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
