"""On a machine without a GPU, `auto` runs on the CPU without a note on every run (`info` says why); an output
file gets the mode of any new file (0o666 minus the umask)."""

from __future__ import annotations

import io
import os
import stat

import numpy as np
import pytest
from dslc_runtime import providers as prov
from dslc_runtime.cli import info_cli, run_cli
from rt_models import build_classifier

IMAGE = np.zeros((1, 1, 4, 4), np.float32)


@pytest.fixture
def classifier(tmp_path):
    return build_classifier(tmp_path / "cnn.onnx")


def test_no_cuda_note_on_a_machine_without_a_gpu(tmp_path, classifier):
    if prov._gpu_problem(0) is None:
        pytest.skip("this machine has a GPU")
    x = tmp_path / "x.npy"
    np.save(x, IMAGE)
    shown = io.StringIO()
    run_cli(classifier, {"image": x}, providers="auto", stream=shown)
    assert "on CPUExecutionProvider" in shown.getvalue() and "note" not in shown.getvalue()
    described = io.StringIO()
    info_cli(classifier, providers="auto", stream=described)
    assert "note: using CPU: " in described.getvalue()  # info says why


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_saved_outputs_keep_the_umask_mode(tmp_path, classifier, umask, mode):
    x = tmp_path / "x.npy"
    np.save(x, IMAGE)
    before = os.umask(umask)
    try:
        run_cli(classifier, {"image": x}, tmp_path / "out", providers="cpu", stream=io.StringIO())
    finally:
        os.umask(before)
    assert [stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out").glob("*.npy")] == [mode]
