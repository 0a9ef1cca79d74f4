"""CLI helpers, the no-torch import guarantee, and the example apps (Python and Node.js)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dslc_runtime import InputError, Model
from dslc_runtime.cli import bench_cli, info_cli, main, run_cli

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
IRIS = EXAMPLES / "models" / "iris"
NODE_APP = EXAMPLES / "node_app"


def test_import_does_not_pull_heavy_dependencies():
    code = (
        "import sys, dslc_runtime, dslc_runtime.tasks, dslc_runtime.cli;"
        "heavy = sorted(m for m in ('torch', 'lark', 'onnx', 'click', 'dslc') if m in sys.modules);"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"dslc_runtime imported: {result.stdout.strip()}"


def test_run_cli_function(tmp_path, models):
    x = np.ones((2, 1, 4, 4), np.float32)
    np.save(tmp_path / "x.npy", x)
    out = io.StringIO()
    results = run_cli(models.classifier, {"image": tmp_path / "x.npy"}, tmp_path / "out", stream=out)
    expected = Model.load(models.classifier, providers="cpu")(image=x)["logits"]
    np.testing.assert_allclose(results["logits"], expected)
    np.testing.assert_allclose(np.load(tmp_path / "out" / "logits.npy"), expected)
    assert "logits: float32[2, 3]" in out.getvalue()
    with pytest.raises(InputError, match="input .image. file not found"):
        run_cli(models.classifier, {"image": tmp_path / "missing.npy"}, stream=io.StringIO())


def test_python_m_run_and_errors(tmp_path, models):
    np.save(tmp_path / "a.npy", np.ones((1, 2), np.float32))
    np.save(tmp_path / "s.npy", np.full(1, 2.0, np.float32))
    cmd = [sys.executable, "-m", "dslc_runtime", "run", str(models.pair)]
    args = ["--input", f"a={tmp_path / 'a.npy'}", "-i", f"b={tmp_path / 'a.npy'}"]
    ok = subprocess.run(
        [*cmd, *args, "-i", f"scale={tmp_path / 's.npy'}", "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "out: float32[1, 2] = [[4., 4.]]" in ok.stdout
    np.testing.assert_allclose(np.load(tmp_path / "o" / "out.npy"), [[4.0, 4.0]])
    bad = subprocess.run([*cmd, *args], capture_output=True, text=True, check=False)
    assert bad.returncode == 1
    assert "missing input(s): scale" in bad.stderr and "Traceback" not in bad.stderr


def test_bench_refuses_a_typo_and_a_run_that_measures_nothing(models):
    from dslc_runtime import ProviderError
    from dslc_runtime import providers as prov

    with pytest.raises(ProviderError, match="unknown execution provider 'cpux'"):
        bench_cli(models.classifier, ["cpu", "cpux"], [1], iterations=1, stream=io.StringIO())  # before measuring
    if prov.provider_problem(prov.CUDA) is not None:  # a provider this machine lacks is skipped, but not all of them
        out = io.StringIO()
        with pytest.raises(ProviderError, match=r"nothing measured: no provider asked for \(cuda\) can run"):
            bench_cli(models.classifier, ["cuda"], [1], iterations=1, stream=out)
        assert "cuda                         skipped: CUDAExecutionProvider was requested" in out.getvalue()


def test_bench_and_info(models, capsys):
    out = io.StringIO()
    results = bench_cli(models.classifier, ["cpu"], [1, 4], iterations=5, warmup=1, stream=out)
    assert [(r.provider, r.batch) for r in results] == [
        ("CPUExecutionProvider", 1),
        ("CPUExecutionProvider", 4),
    ]
    assert all(0 < r.p50_ms <= r.p99_ms and r.throughput > 0 for r in results)
    assert "p50 ms" in out.getvalue() and "p99 ms" in out.getvalue()
    info = io.StringIO()
    info_cli(models.classifier, providers="cpu", stream=info)
    assert "labels (3): cat, dog, bird" in info.getvalue()
    assert (
        main(
            [
                "bench",
                str(models.lm),
                "--providers",
                "cpu",
                "--iterations",
                "3",
                "--dim",
                "time=5",
            ]
        )
        == 0
    )
    assert "CPUExecutionProvider" in capsys.readouterr().out


def _inputs_json(path: Path) -> np.ndarray:
    x = np.random.default_rng(42).normal(3.0, 2.0, size=(5, 4)).astype(np.float32)
    payload = {
        "features": {
            "dtype": "float32",
            "shape": list(x.shape),
            "data": x.ravel().tolist(),
        }
    }
    path.write_text(json.dumps(payload))
    return x


def _outputs(stdout: str) -> np.ndarray:
    logits = json.loads(stdout)["logits"]
    assert logits["dtype"] == "float32"
    return np.asarray(logits["data"], dtype=np.float32).reshape(logits["shape"])


def test_python_example_app(tmp_path):
    x = _inputs_json(tmp_path / "in.json")
    app = EXAMPLES / "python_app" / "app.py"
    demo = subprocess.run([sys.executable, str(app)], capture_output=True, text=True, check=True)
    assert "setosa" in demo.stdout
    res = subprocess.run(
        [sys.executable, str(app), "--json", str(tmp_path / "in.json")],
        capture_output=True,
        text=True,
        check=True,
    )
    expected = Model.load(IRIS, providers="cpu")(features=x)["logits"]
    np.testing.assert_allclose(_outputs(res.stdout), expected, rtol=1e-6)


def test_node_example_matches_python(tmp_path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    if not (NODE_APP / "node_modules" / "onnxruntime-node").is_dir():
        pytest.skip("onnxruntime-node missing: run `npm install --ignore-scripts` in examples/node_app")
    x = _inputs_json(tmp_path / "in.json")
    res = subprocess.run(
        [node, "run.mjs", str(IRIS / "iris.onnx"), str(tmp_path / "in.json")],
        cwd=NODE_APP,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "NODE_NO_WARNINGS": "1"},
    )
    if res.returncode != 0 and "Cannot find" in res.stderr:
        pytest.skip(f"onnxruntime-node not loadable here: {res.stderr.strip()[:200]}")
    assert res.returncode == 0, res.stderr
    python_logits = Model.load(IRIS, providers="cpu")(features=x)["logits"]
    np.testing.assert_allclose(_outputs(res.stdout), python_logits, rtol=1e-5, atol=1e-5)


def test_a_closed_pipe_ends_run_quietly(tmp_path):
    """`python -m dslc_runtime run ... | head -1`: exit 141, as a shell's SIGPIPE, with no traceback."""
    from rt_hostile import build_identities

    model = build_identities(tmp_path / "many.onnx", [f"output_{i:04d}" for i in range(3000)])  # > a pipe's buffer
    np.save(tmp_path / "x.npy", np.ones(2, np.float32))
    command = [sys.executable, "-m", "dslc_runtime", "run", str(model), "--input", f"x={tmp_path / 'x.npy'}"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline().startswith(b"many on CPUExecutionProvider")
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141 and stderr == "", stderr
