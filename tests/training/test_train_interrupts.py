"""Ctrl-C and SIGTERM during `dslc train` (a mid-epoch checkpoint, the --resume command, exit 130/143, a bit-identical
resume), the TensorBoard event files, and optional packages that are not installed (real subprocesses: a
sitecustomize on PYTHONPATH makes the package unimportable)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from dslc.cli import main
from dslc.training import checkpoint as ckpt
from tests.conftest import ROOT, SPECS

# dropout (random draws), gradient accumulation and a schedule: each has state that a mid-epoch resume must restore
NET = """
model net {
    input image: float32[batch, 64]
    output logits = image -> Linear(32) -> ReLU -> Dropout(0.2) -> Linear(10)
}

train {
    data = digits(flatten=true, validation=0.2)
    loss = cross_entropy(logits, label)
    optimizer = adam(lr=0.01)
    schedule = cosine(warmup=0.5)
    accumulate = 2
    epochs = 2
    batch_size = 32
    metrics = [accuracy]
}
"""


def train(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["train", *args])
    return result.exit_code, result.output


def dslc(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dslc.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        **kw,
    )


def records(out: Path) -> list[dict]:
    """metrics.jsonl without the throughput (a measurement, not a result)."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "samples_per_s"} for line in lines]


def scalars(out: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_sigint_mid_epoch_then_resume_is_bit_identical(tmp_path):
    spec = tmp_path / "net.model"
    spec.write_text(NET)
    full, cut = tmp_path / "full", tmp_path / "cut"
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    code, output = train(str(spec), "--out", str(full), "--quiet")
    assert code == 0, output
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # put back after the run
    # 45 steps an epoch: the run sends itself SIGINT after step 50 (5 into epoch 2) and stops after step 6, where the
    # gradient accumulation of 2 is complete
    stopped = dslc("train", str(spec), "--out", str(cut), "--quiet", env={"DSLC_INTERRUPT_AT_STEP": "50"})
    assert stopped.returncode == 130, stopped.stderr
    assert "interrupted (SIGINT) after step 6/45 of epoch 2" in stopped.stderr
    assert f"resume with: dslc train {spec} --out {cut} --quiet --resume" in stopped.stderr
    assert "Traceback" not in stopped.stderr + stopped.stdout and "Aborted" not in stopped.stderr
    assert [p.name for p in ckpt.checkpoints(cut / "checkpoints")] == [
        "epoch-0001.safetensors",
        "epoch-0001-step-000006.safetensors",
    ]
    assert not (cut / "net.onnx").exists() and len(records(cut)) == 1

    code, output = train(str(spec), "--out", str(cut), "--quiet", "--resume")
    assert code == 0, output
    assert "(epoch 1, step 6 of epoch 2)" in output
    a, b = load_file(full / "net.safetensors"), load_file(cut / "net.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert records(full) == records(cut) and len(records(full)) == 2

    # TensorBoard: each epoch once, though the resumed run's events start in another file
    logged = scalars(full)
    assert {"loss/train", "loss/validation", "metric/accuracy", "learning_rate/train"} <= logged.keys()
    assert [step for step, _ in logged["loss/train"]] == [1, 2]
    assert [v for _, v in logged["metric/accuracy"]] == pytest.approx([r["accuracy"] for r in records(full)])
    assert scalars(cut)["loss/validation"] == logged["loss/validation"]


def test_sigterm_from_outside_saves_a_checkpoint_and_exits_143(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "dslc.cli", "train", str(SPECS / "mlp.model"), "--out", str(out)]
    proc = subprocess.Popen(
        [*command, "--epochs", "1000", "--quiet", "--no-tensorboard"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # the handlers are installed before the first epoch: it has ended
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "interrupted (SIGTERM) after " in stderr and "Traceback" not in stderr + stdout
    assert "--resume" in stderr.splitlines()[-1]
    saved = stderr.split(": saved ")[1].splitlines()[0]
    assert Path(saved).is_file() and Path(saved) == ckpt.checkpoints(out / "checkpoints")[-1]


# ---------------------------------------------------------------- optional packages that are not installed


def without(tmp_path: Path, *modules: str) -> dict[str, str]:
    """The environment of a Python where `modules` cannot be imported (None in sys.modules, set by sitecustomize)."""
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules))
    return {"PYTHONPATH": os.pathsep.join([str(shim), str(ROOT)])}


def test_a_missing_data_package_names_the_extra(tmp_path):
    result = dslc("train", str(SPECS / "mlp.model"), "--out", str(tmp_path / "run"), env=without(tmp_path, "sklearn"))
    assert result.returncode == 1, result.stderr
    assert "scikit-learn is not installed" in result.stderr and "pip install 'dslc[data]'" in result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr


def test_training_goes_on_without_the_plots_extra_and_says_so_once(tmp_path):
    out = tmp_path / "run"
    env = without(tmp_path, "matplotlib", "tensorboard")
    result = dslc("train", str(SPECS / "mlp.model"), "--out", str(out), "--epochs", "2", "--quiet", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("note: curves.png is not drawn: the package matplotlib is not installed") == 1
    assert result.stdout.count("note: no TensorBoard logs: the package tensorboard is not installed") == 1
    assert result.stdout.count("pip install 'dslc[plots]'") == 2
    assert (out / "mlp.onnx").exists() and not (out / "curves.png").exists() and not (out / "tensorboard").exists()
    plotted = dslc("plot", str(out), "-o", str(tmp_path / "c.png"), env=env)
    assert plotted.returncode == 1 and "matplotlib is not installed" in plotted.stderr
    assert "pip install 'dslc[plots]'" in plotted.stderr and "Traceback" not in plotted.stderr
