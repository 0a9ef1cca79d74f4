"""A run's epoch records (metrics.jsonl, checkpointed for --resume) and early stopping's reading of them."""

from __future__ import annotations

from typing import Any


class History:
    """The records of the epochs run so far; the best by `monitor` (`mode` "min" or "max") and, with `patience`
    (early_stopping) or `stop_at` (a value of `monitor` that is good enough), whether to stop."""

    def __init__(self, monitor: str, mode: str = "min", patience: int | None = None, stop_at: float | None = None):
        self.monitor, self.mode, self.patience, self.stop_at = monitor, mode, patience, stop_at
        self.records: list[dict[str, Any]] = []

    def best_index(self) -> int | None:
        """The index of the best epoch by `monitor` (the earliest of equals); None when an epoch lacks it."""
        values = [r.get(self.monitor) for r in self.records]
        if not values or any(v is None for v in values):
            return None
        sign = 1 if self.mode == "max" else -1
        return max(range(len(values)), key=lambda i: (sign * values[i], -i))

    def last_is_best(self) -> bool:
        """With early stopping: the last epoch is the best so far (its weights are saved as the best)."""
        return bool(self.patience) and self.best_index() == len(self.records) - 1

    def reached(self) -> bool:
        """stop_at: the last epoch's `monitor` is at least `stop_at` ("max") or at most it ("min")."""
        value = self.records[-1].get(self.monitor) if self.records and self.stop_at is not None else None
        if value is None:
            return False
        return value >= self.stop_at if self.mode == "max" else value <= self.stop_at

    def should_stop(self) -> bool:
        """Early stopping: `monitor` has not improved for `patience` epochs, or it reached `stop_at`."""
        if self.reached():
            return True
        best = self.best_index()
        if not self.patience or best is None:
            return False
        return len(self.records) - 1 - best >= self.patience
