"""curves.png and `dslc plot` with real matplotlib, and the mode the atomic writer gives new files."""

from __future__ import annotations

import json
import os
import stat

import pytest
from click.testing import CliRunner
from matplotlib.image import imread

from dslc.cli import main
from dslc.fileio import write_atomic
from dslc.training.curves import DPI, PANEL_INCHES, metric_title, panels, plot, run_names, series_label

RECORDS = [
    {"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "accuracy": 1 - 1 / (e + 1), "top3_accuracy": 0.9,
     "samples_per_s": 1000.0}
    for e in (1, 2, 3)
]  # fmt: skip


def test_one_titled_panel_per_quantity_with_named_curves():
    found = panels(["train_loss", "val_loss", "accuracy", "top3_accuracy"])
    assert [(p.title, p.keys) for p in found] == [
        ("loss", ["train_loss", "val_loss"]),
        ("accuracy", ["accuracy"]),
        ("top-3 accuracy", ["top3_accuracy"]),
    ]
    assert [series_label(k, validated=True) for k in ("train_loss", "val_loss", "accuracy")] == [
        "train",
        "validation",
        "validation",
    ]
    assert series_label("accuracy", validated=False) == "train"  # validation=0: metrics are on the training set
    assert series_label("train_loss_generator", validated=False) == "train (generator)"
    assert (metric_title("cer"), metric_title("mae")) == ("character error rate", "mean absolute error")


def test_curves_png_has_a_panel_per_quantity(tmp_path):
    path = tmp_path / "curves.png"
    plot(RECORDS, path)
    height, width, _ = imread(path).shape  # 3 panels on one row
    assert (width, height) == (round(3 * PANEL_INCHES[0] * DPI), round(PANEL_INCHES[1] * DPI))
    plot([{"epoch": 1, "train_loss": 0.5}], path)  # a single point, one panel
    assert imread(path).shape[1] == round(PANEL_INCHES[0] * DPI)


def test_dslc_plot_compares_runs(tmp_path):
    for name, scale in (("a", 1.0), ("b", 2.0)):
        folder = tmp_path / name / "cnn"
        folder.mkdir(parents=True)
        lines = [json.dumps({**r, "train_loss": r["train_loss"] * scale}) for r in RECORDS]
        (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "compare.png"
    result = CliRunner().invoke(main, ["plot", str(tmp_path / "a/cnn"), str(tmp_path / "b/cnn"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert imread(out).shape[:2] == (round(PANEL_INCHES[1] * DPI), round(3 * PANEL_INCHES[0] * DPI))
    assert run_names([tmp_path / "a/cnn", tmp_path / "b/cnn"]) == ["a/cnn", "b/cnn"]
    missing = CliRunner().invoke(main, ["plot", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "no metrics.jsonl here" in missing.output


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_atomic_writes_get_the_umask_mode(tmp_path, umask, mode):
    before = os.umask(umask)
    try:
        write_atomic(tmp_path / "new.json", "{}")
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == mode
