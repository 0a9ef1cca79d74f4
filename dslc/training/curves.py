"""curves.png: a run's loss and metric curves by epoch, drawn with matplotlib (the `plots` extra; Agg, no display).

One titled panel per quantity: the losses together (train and validation, and each step's with several steps), then
one per metric, each with labelled axes and a legend. `dslc plot RUN...` draws several runs on one figure the same way:
a colour per run, train losses solid, validation dashed.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dslc.errors import error
from dslc.extras import require
from dslc.fileio import write_atomic

NOT_PLOTTED = ("epoch", "samples_per_s")
COLUMNS = 3  # panels per row
PANEL_INCHES = (4.6, 3.4)
DPI = 100
TITLES = {
    "accuracy": "accuracy",
    "cer": "character error rate",
    "perplexity": "perplexity",
    "mae": "mean absolute error",
    "mse": "mean squared error",
    "rmse": "root mean squared error",
}


@dataclass
class Panel:
    title: str
    ylabel: str
    keys: list[str] = field(default_factory=list)


def is_loss(key: str) -> bool:
    return key in ("train_loss", "val_loss") or key.startswith(("train_loss_", "val_loss_"))


def plotted_keys(records: list[dict[str, Any]]) -> list[str]:
    """The numeric keys of the records, in first-seen order (metrics.jsonl's order)."""
    keys: list[str] = []
    for record in records:
        for key, value in record.items():
            if key not in NOT_PLOTTED and key not in keys and isinstance(value, (int, float)):
                keys.append(key)
    return keys


def panels(keys: list[str]) -> list[Panel]:
    """The losses in one panel, then one panel per metric."""
    losses = [k for k in keys if is_loss(k)]
    found = [Panel("loss", "loss", losses)] if losses else []
    return found + [Panel(metric_title(k), k, [k]) for k in keys if not is_loss(k)]


def metric_title(key: str) -> str:
    """`top3_accuracy` -> `top-3 accuracy`, `mae` -> `mean absolute error`."""
    if key.startswith("top") and key.endswith("_accuracy") and key[3:-9].isdigit():
        return f"top-{key[3:-9]} accuracy"
    return TITLES.get(key, key.replace("_", " "))


def series_label(key: str, validated: bool) -> str:
    """The legend's name of a curve: `train`, `validation`, `train (generator)`; a metric is measured on the
    validation set when there is one, else on the training set."""
    if is_loss(key):
        step = key.split("_loss", 1)[1].removeprefix("_")
        name = "train" if key.startswith("train") else "validation"
        return f"{name} ({step})" if step else name
    return "validation" if validated else "train"


def plot(records: list[dict[str, Any]], path: Path) -> None:
    """Write `path`: the curves of one run's metrics.jsonl records."""
    plot_runs([("", records)], path)


def plot_runs(runs: list[tuple[str, list[dict[str, Any]]]], path: Path, title: str | None = None) -> None:
    """Write `path`: the curves of several runs (name, records), a colour per run (per curve for a single run)."""
    keys: list[str] = []
    for _, records in runs:
        keys += [k for k in plotted_keys(records) if k not in keys]
    found = panels(keys)
    if not found:
        return
    figure = _figure(len(found))
    axes = figure.axes
    colors = [c["color"] for c in _matplotlib().rcParams["axes.prop_cycle"]]
    for ax, panel in zip(axes, found):
        for r, (name, records) in enumerate(runs):
            validated = any("val_loss" in rec for rec in records)
            for k, key in enumerate(panel.keys):
                points = [(rec["epoch"], rec[key]) for rec in records if _finite(rec.get(key)) and "epoch" in rec]
                if not points:
                    continue
                label = series_label(key, validated)
                color = colors[(r if len(runs) > 1 else k) % len(colors)]
                style = "--" if key.startswith("val") or (not is_loss(key) and validated and len(runs) > 1) else "-"
                xs, ys = zip(*points)
                ax.plot(
                    xs, ys, style, color=color, marker="o", markersize=3, label=f"{name}: {label}" if name else label
                )
        _decorate(ax, panel)
    for ax in axes[len(found) :]:
        ax.set_visible(False)
    if title:
        figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    write_atomic(path, buffer.getvalue())


def _matplotlib():
    return require("matplotlib", "curves.png and dslc plot")


def _figure(count: int):
    """A figure of `count` panels on a grid of COLUMNS, drawn by Agg (no display, no pyplot state)."""
    _matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(COLUMNS, count)
    rows = math.ceil(count / cols)
    figure = Figure(figsize=(PANEL_INCHES[0] * cols, PANEL_INCHES[1] * rows))
    FigureCanvasAgg(figure)
    figure.subplots(rows, cols, squeeze=False)
    # fixed margins: a layout engine would double the drawing time, and curves.png is drawn every epoch
    figure.subplots_adjust(left=0.08 if cols > 1 else 0.15, right=0.97, bottom=0.12 / rows + 0.02, top=0.93 - 0.03 * (rows - 1),
                           wspace=0.3, hspace=0.45)  # fmt: skip
    return figure


def _decorate(ax, panel: Panel) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_title(panel.title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(panel.ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# ---------------------------------------------------------------- dslc plot


def read_run(folder: Path) -> list[dict[str, Any]]:
    """A run folder's metrics.jsonl records (or those of a metrics.jsonl file given directly)."""
    path = folder / "metrics.jsonl" if folder.is_dir() else folder
    if not path.is_file():
        raise error(None, f"{folder}: no metrics.jsonl here", "give run folders written by dslc train (runs/<stem>)")
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise error(
                None, f"{path}:{n}: not a JSON record", "metrics.jsonl holds one JSON object per line"
            ) from None
        if isinstance(record, dict):
            records.append(record)
    if not records:
        raise error(None, f"{path}: no epoch recorded yet", "plot it after its first epoch")
    return records


def run_names(folders: list[Path]) -> list[str]:
    """Legend names for run folders: the shortest distinct path tails (`cnn`, or `a/cnn` and `b/cnn`)."""
    parts = [Path(str(f).rstrip("/")).resolve().parts for f in folders]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(f) for f in folders]
