"""The dslc command: exit codes, located errors, no tracebacks, atomic output."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from dslc.build import build
from dslc.errors import DslcError
from tests.conftest import ROOT, SPECS


def dslc(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dslc.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_check_all_shipped_specs():
    result = dslc("check", *sorted(str(p) for p in SPECS.glob("*.model")))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok (") == len(list(SPECS.glob("*.model")))


def test_check_counts_shared_parameters_once():
    """vae, encoder and decoder share `encoder.*` and `decoder.*` by name: 652,824 parameters, not twice that."""
    from dslc.checker import check_file

    program = check_file(SPECS / "vae.model")
    assert program.model("vae").param_count == 652_824
    assert program.parameter_counts() == (652_824, 652_824)
    result = dslc("check", str(SPECS / "vae.model"), str(SPECS / "gan.model"))
    assert "vae, encoder, decoder; 652,824 parameters, 652,824 of them shared by name" in result.stdout
    gan = check_file(SPECS / "gan.model")
    assert gan.parameter_counts() == (sum(m.param_count for m in gan.exported), 0)
    assert "generator, discriminator; 481,425 parameters)" in result.stdout


def test_check_shapes_table():
    result = dslc("check", str(SPECS / "cnn.model"), "--shapes")
    assert result.returncode == 0
    assert "float32[batch, 32, 28, 28]" in result.stdout and "421,642" in result.stdout


def test_check_shapes_lists_the_layers_of_named_groups_by_their_state_dict_paths(write_spec):
    """A named group's row comes first, then a row per layer (`features.0`, a nested group's `features.2.0`; a
    repeat splices its copies into the group's numbering, as PyTorch numbers an nn.Sequential)."""
    from dslc.checker import check_file

    path = write_spec("""
        model m {
            input x: float32[batch, 4]
            output y = x -> features: (Linear(8) -> ReLU -> (Linear(8) -> Tanh) -> repeat 3 Linear(8)) -> Linear(2)
        }
    """)
    rows = [(r.module, r.what, r.params) for r in check_file(path).model("m").records]
    assert rows == [
        ("features", "group", 40 + 72 + 3 * 72),
        ("features.0", "Linear", 40),
        ("features.1", "ReLU", 0),
        ("features.2", "group", 72),
        ("features.2.0", "Linear", 72),
        ("features.2.1", "Tanh", 0),
        *((f"features.{i}", "Linear", 72) for i in (3, 4, 5)),
        ("fc1", "Linear", 18),
    ]
    assert "features.2.0" in dslc("check", str(path), "--shapes").stdout


def test_check_reports_errors_with_carets(write_spec):
    path = write_spec("model m {\n    input x: float32[batch, 4]\n    output y = x -> Lineer(3)\n}\n")
    result = dslc("check", str(path))
    assert result.returncode == 1
    assert f"{path}:3:21: error: unknown layer 'Lineer'" in result.stderr
    assert "^^^^^^^^^" in result.stderr and "did you mean 'Linear'?" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_continues_past_a_bad_file(write_spec, tmp_path):
    bad = write_spec("model m {", "bad.model")
    result = dslc("check", str(bad), str(SPECS / "mlp.model"))
    assert result.returncode == 1
    assert "mlp.model: ok" in result.stdout and "bad.model:1:9" in result.stderr


def test_missing_file_and_set_override(tmp_path):
    result = dslc("check", str(tmp_path / "nope.model"))
    assert result.returncode == 1 and "no such file" in result.stderr and "Traceback" not in result.stderr
    result = dslc("check", str(SPECS / "mlp.model"), "--set", "hidden=7", "--shapes")
    assert result.returncode == 0 and "float32[batch, 7]" in result.stdout


def test_build_then_run(tmp_path):
    out = tmp_path / "cnn"
    result = dslc("build", str(SPECS / "cnn.model"), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "onnxruntime matches PyTorch" in result.stdout
    assert {"cnn.py", "cnn.onnx", "manifest.json"} <= {p.name for p in out.iterdir()}
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 28, 28), np.float32))
    result = dslc("run", str(out), "--input", f"image={tmp_path / 'x.npy'}", "-o", str(tmp_path / "pred"))
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "pred" / "logits.npy").shape == (2, 10)
    result = dslc("run", str(out), "--input", f"imag={tmp_path / 'x.npy'}")
    assert result.returncode == 1 and "unknown input(s): imag" in result.stderr and "Traceback" not in result.stderr


def test_failed_build_keeps_previous_output(write_spec, tmp_path):
    out = tmp_path / "out"
    assert dslc("build", str(SPECS / "mlp.model"), "-o", str(out), "--no-onnx").returncode == 0
    before = (out / "mlp.py").read_bytes()
    bad = write_spec("model mlp {\n input x: float32[b, 4]\n output y = x -> Linear(zz)\n}\n", "mlp.model")
    result = dslc("build", str(bad), "-o", str(out))
    assert result.returncode == 1
    assert (out / "mlp.py").read_bytes() == before
    assert not any(p.name.startswith(".dslc-build") for p in out.iterdir())


def test_a_rebuild_removes_the_graphs_it_no_longer_writes(tmp_path):
    """A build folder holds one build: a variant not asked for again goes, files the manifest never listed stay."""
    out = tmp_path / "out"
    build(SPECS / "mlp.model", out, variants=("fp16", "int8"))
    (out / "notes.onnx").write_text("the user's own file")
    build(SPECS / "mlp.model", out, variants=("int8",))
    assert {p.name for p in out.glob("*.onnx")} == {"mlp.onnx", "mlp.int8.onnx", "notes.onnx"}
    build(SPECS / "mlp.model", out, export_onnx=False)  # --no-onnx: the code only, the graphs as they were
    assert (out / "mlp.int8.onnx").exists()


def test_a_failed_first_build_leaves_no_folder(write_spec, tmp_path):
    spec = write_spec("model m {\n    input x: float32[batch, 4]\n    output y = (x + 1000.0) - 1000.0\n}\n")
    with pytest.raises(DslcError, match="is not within 5% of PyTorch"):
        build(spec, tmp_path / "new" / "out", variants=("bf16",))
    assert not (tmp_path / "new" / "out").exists()


@pytest.mark.parametrize("command", ["check", "build", "run", "bench"])
def test_help_has_an_example(command):
    result = dslc(command, "--help")
    assert result.returncode == 0 and "Example:" in result.stdout


def test_internal_errors_say_so(tmp_path):
    # A directory where a spec file is expected makes reading fail in an unexpected way.
    result = dslc("--debug", "check", str(tmp_path))
    assert result.returncode in (1, 2)
    assert "error" in result.stderr


def test_a_closed_pipe_ends_quietly():
    """`dslc check ... | head -1`: the reader stops; dslc exits as a shell's SIGPIPE does, with no error."""
    specs = sorted(str(p) for p in SPECS.glob("*.model"))
    command = [sys.executable, "-m", "dslc.cli", "check", *specs * 80]  # more output than a pipe buffers
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    assert process.stdout.readline().endswith(b"ok (autoencoder; 209,968 parameters)\n")
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141 and stderr == "", stderr
