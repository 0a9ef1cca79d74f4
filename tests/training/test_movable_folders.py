"""Build and run folders are self-contained: copied elsewhere with their data file, the original spec deleted, the
training script trains, resumes and exports there, run from another folder; --data-dir finds data elsewhere."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from dslc.cli import main
from dslc.training import checkpoint as ckpt

SPEC = """
model reg {
    input features: float32[batch, 2]
    output y = features -> Linear(8) -> ReLU -> Linear(1)
}

train {
    data = csv("points.csv", features=["a", "b"], target="t", validation=0.25)
    loss = mse(y, target)
    optimizer = adam(lr=0.01)
    epochs = 2
    batch_size = 8
}
"""


def script(path: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(path), *args, "--quiet"], capture_output=True, text=True, cwd=cwd, env=env
    )


def exported(folder: Path) -> None:
    """The folder's ONNX graph holds the trained model and runs."""
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["trained"] and manifest["models"][0]["verified"]
    session = ort.InferenceSession(str(folder / "reg.onnx"), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"features": np.ones((3, 2), np.float32)})
    assert y.shape == (3, 1)


@pytest.mark.slow  # several processes of training: in CI's slow step, to keep the fast suite in 8 minutes
def test_build_and_run_folders_train_resume_and_export_after_a_move(tmp_path):
    origin = tmp_path / "origin"
    origin.mkdir()
    (origin / "reg.model").write_text(SPEC)
    rows = [f"{i % 7},{i % 5},{(i % 7) - 2 * (i % 5)}" for i in range(48)]
    (origin / "points.csv").write_text("a,b,t\n" + "\n".join(rows) + "\n")
    runner = CliRunner()
    built = runner.invoke(main, ["build", str(origin / "reg.model"), "-o", str(origin / "build"), "--no-onnx"])
    assert built.exit_code == 0, built.output
    assert (origin / "build" / "reg.model").read_text() == SPEC  # the copy the script trains and exports from
    trained = runner.invoke(main, ["train", str(origin / "reg.model"), "--out", str(origin / "run"), "--quiet"])
    assert trained.exit_code == 0, trained.output
    assert json.loads((origin / "run" / "config.json").read_text())["spec"]["file"] == "reg.model"

    moved = tmp_path / "elsewhere"
    for name in ("build", "run"):
        shutil.copytree(origin / name, moved / name)
        shutil.copy(origin / "points.csv", moved / name)
    shutil.rmtree(origin)  # the spec, its data and the folders are gone from where they were made
    cwd = tmp_path / "cwd"
    cwd.mkdir()

    # the build folder: train, then resume from epoch 1 and export again
    build = moved / "build"
    first = script(build / "reg_train.py", cwd=cwd)
    assert first.returncode == 0, first.stderr
    exported(build)
    (build / "checkpoints" / "epoch-0002.safetensors").unlink()
    (build / "reg.onnx").unlink()
    resumed = script(build / "reg_train.py", "--resume", cwd=cwd)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {build / 'checkpoints' / 'epoch-0001.safetensors'} (epoch 1)" in resumed.stdout
    exported(build)

    # the run folder: resume from its epoch 1 and export
    run = moved / "run"
    (run / "checkpoints" / "epoch-0002.safetensors").unlink()
    for name in ("reg.onnx", "manifest.json"):
        (run / name).unlink()
    resumed = script(run / "reg_train.py", "--resume", cwd=cwd)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and ckpt.load(run / "checkpoints" / "epoch-0002.safetensors")
    exported(run)


def test_data_dir_points_the_script_at_its_data(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "reg.model").write_text(SPEC.replace("epochs = 2", "epochs = 1"))
    rows = [f"{i % 3},{i % 4},{i % 5}" for i in range(24)]
    (data / "points.csv").write_text("a,b,t\n" + "\n".join(rows) + "\n")
    # dslc check and build read the data file beside the spec: one there for them, none beside the script
    shutil.copy(data / "points.csv", tmp_path)
    result = CliRunner().invoke(main, ["build", str(tmp_path / "reg.model"), "-o", str(tmp_path / "b"), "--no-onnx"])
    assert result.exit_code == 0, result.output
    (tmp_path / "points.csv").unlink()
    missing = script(tmp_path / "b" / "reg_train.py", "--out", str(tmp_path / "r1"), cwd=tmp_path)
    assert missing.returncode == 1 and f"looked for {tmp_path / 'b' / 'points.csv'}" in missing.stderr
    found = script(tmp_path / "b" / "reg_train.py", "--out", str(tmp_path / "r2"), "--data-dir", str(data), cwd=data)
    assert found.returncode == 0, found.stderr
    exported(tmp_path / "r2")
