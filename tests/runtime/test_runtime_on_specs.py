"""Every shipped spec's ONNX runs with the runtime alone: no torch, lark, onnx or dslc imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from dslc.build import build
from tests.conftest import SMALL_SETTINGS

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "specs").glob("*.model"))

# Runs in a child process: refuses any import of the heavy packages, then runs every model of
# every build directory with inputs drawn from the model's own signature.
RUNNER = r"""
import importlib.abc, json, sys
BLOCKED = {"torch", "lark", "onnx", "dslc", "click"}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} must not be imported by the runtime")
        return None

sys.meta_path.insert(0, Block())
from dslc_runtime import Model
from dslc_runtime.model import describe
from dslc_runtime.cli import random_inputs

results = {}
for directory in sys.argv[1:]:
    manifest = json.load(open(f"{directory}/manifest.json"))
    for entry in manifest["models"]:
        model = Model.load(directory, model=entry["name"], providers="cpu")
        described = describe(directory, model=entry["name"])  # read from the file, as `info` does without a session
        assert described.signature == model.signature, (directory, described.signature, model.signature)
        outputs = model.run(random_inputs(model, batch=2, dims={"time": 12}))
        results[f"{manifest['spec']}:{entry['name']}"] = {k: list(v.shape) for k, v in outputs.items()}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def build_dirs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("specs")
    dirs = []
    for spec in SPECS:
        build(spec, root / spec.stem, SMALL_SETTINGS.get(spec.stem))
        dirs.append(root / spec.stem)
    return dirs


def run_runner(python: str, dirs: list[Path]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([python, "-c", RUNNER, *map(str, dirs)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_every_spec_runs_without_torch(build_dirs):
    results = run_runner(sys.executable, build_dirs)
    expected = {
        f"{d.name}.model:{m['name']}"
        for d in build_dirs
        for m in json.loads((d / "manifest.json").read_text())["models"]
    }
    assert set(results) == expected
    assert all(shapes and all(s[0] == 2 for s in shapes.values() if s) for shapes in results.values())


@pytest.mark.slow
def test_fresh_venv_with_only_the_runtime(build_dirs, tmp_path):
    """Install runtime/ alone into a new virtual environment and run every spec's ONNX there."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", str(ROOT / "runtime")], capture_output=True, text=True
    )
    if install.returncode != 0:
        pytest.skip(f"cannot install the runtime's dependencies here: {install.stderr[-500:]}")
    listed = subprocess.run([python, "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "torch" not in names and "lark" not in names and "dslc" not in names
    results = run_runner(python, build_dirs)
    assert len(results) >= len(build_dirs)
