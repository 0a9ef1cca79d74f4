"""Hints for PyTorch and Keras names (dslc/hints.py): `dslc check` names the dslc form, ahead of a near-miss spelling."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from dslc.hints import ACTIVATIONS, LAYERS, RENAMES
from dslc.layers import REGISTRY
from tests.conftest import ROOT

ARGUMENTS = {
    "image -> Conv2d(8, kernel_size=3)": "hint: dslc calls it 'kernel'\n",
    "image -> Conv2d(filters=8, kernel=3)": "hint: dslc calls it 'out_channels', Conv2d's first positional argument",
    "image -> MaxPool2d(pool_size=2)": "hint: dslc calls it 'kernel', MaxPool2d's first positional argument",
    'v -> Linear(4, activation="relu")': "hint: an activation is a layer of its own in dslc: write "
    "`-> Linear(...) -> ReLU`",
    'v -> Linear(4, activation="gelu")': "write `-> Linear(...) -> GELU`",
    "v -> Dense(units=64)": "hint: dslc calls it 'out_features', Linear's first positional argument: `Linear(64)`",
    "v -> Dropout(rate=0.3)": "hint: dslc calls it 'p', Dropout's first positional argument: `Dropout(0.3)`",
    "seq -> LSTM(units=32)": "hint: dslc calls it 'hidden_size', LSTM's first positional argument: `LSTM(32)`",
    "seq -> LSTM(32, return_sequences=true)": 'hint: dslc writes it as returns="sequence" (the default) or '
    'returns="last"',
    "ids -> Embedding(input_dim=100, embedding_dim=8)": "hint: dslc calls it 'num_embeddings', Embedding's first "
    "positional argument\n",
    "ids -> Embedding(100, output_dim=8)": "hint: dslc calls it 'embedding_dim'\n",
    "image -> Conv2d(8, 3, in_channels=3)": "hint: dslc infers in_channels from the input's shape; leave it out",
    "v -> Linear(in_features=8, out_features=4)": "hint: dslc infers in_features from the input's shape",
    "v -> Linear(out_channels=4)": "hint: dslc calls it 'out_features', Linear's first positional argument: "
    "`Linear(4)`",
    "image -> BatchNorm2d(num_features=3)": "hint: dslc infers num_features from the input's shape",
    "image -> BatchNorm2d(epsilon=0.001)": "hint: dslc calls it 'eps'\n",
    "v -> ReLU(inplace=true)": "hint: dslc's generated code computes out of place; leave it out",
}

LAYER_CASES = {
    "image -> Conv2D(8, 3)": "is `Conv2d(out_channels, kernel)` in dslc; in_channels come from the input",
    "seq -> Conv1D(8, 3)": "Keras's Conv1D(filters, kernel_size) is `Conv1d(out_channels, kernel)` in dslc",
    "image -> BatchNormalization": "`BatchNorm2d` (images) or `BatchNorm1d`",
    "image -> MaxPooling2D(2)": "`MaxPool2d(kernel)`",
    "image -> GlobalAveragePooling2D": "write `-> AdaptiveAvgPool2d(1) -> Flatten`",
    'v -> Activation("relu")': "an activation is a layer of its own in dslc: `-> ReLU`",
}


def _check_output(tmp_path, stages: list[str]) -> str:
    """`dslc check` of a model with one output per pipeline: every refused argument in one run."""
    lines = [
        "model m {",
        "    input image: float32[batch, 3, 16, 16]",
        "    input v: float32[batch, 8]",
        "    input seq: float32[batch, time, 8]",
        "    input ids: int64[batch, time]",
        *(f"    output y{i} = {stage}" for i, stage in enumerate(stages)),
        "}",
    ]
    spec = tmp_path / "hints.model"
    spec.write_text("\n".join(lines) + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "dslc.cli", "check", str(spec)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    return result.stderr


@pytest.fixture(scope="module")
def argument_errors(tmp_path_factory) -> dict[str, str]:
    """Each stage's error text, from one `dslc check` run."""
    stages = list(ARGUMENTS)
    text = _check_output(tmp_path_factory.mktemp("hints"), stages)
    blocks = re.split(r"(?m)^(?=\S.*\.model:\d+:\d+: error:)", text)
    by_line = {int(m.group(1)): block for block in blocks if (m := re.search(r"\.model:(\d+):", block))}
    return {stage: by_line.get(6 + i, "") for i, stage in enumerate(stages)}


@pytest.mark.parametrize("stage", list(ARGUMENTS))
def test_argument_names_of_other_frameworks(argument_errors, stage):
    key = re.search(r"(\w+)=", stage).group(1)
    assert f"has no argument '{key}'" in argument_errors[stage]
    assert ARGUMENTS[stage] in argument_errors[stage]
    assert "did you mean" not in argument_errors[stage]


def test_the_framework_hint_wins_over_a_near_miss(tmp_path):
    """To difflib, Conv2d's `activation` looks like its `dilation`."""
    text = _check_output(tmp_path, ['image -> Conv2d(8, 3, activation="relu")'])
    assert "write `-> Conv2d(...) -> ReLU`" in text and "dilation" not in text


def test_a_plain_misspelling_keeps_its_near_miss(tmp_path):
    assert "hint: did you mean 'kernel'?" in _check_output(tmp_path, ["image -> Conv2d(8, kernal=3)"])


# The unknown-layer error a user sees comes from pass 1 (dslc/resolve.py), which reports it before the checker: until
# its `did_you_mean(stage.name, candidates)` also asks `layer_hint` first, as the checker's does, these fail.
@pytest.mark.parametrize("stage", list(LAYER_CASES))
def test_layer_names_of_other_frameworks(tmp_path, stage):
    text = _check_output(tmp_path, [stage])
    assert LAYER_CASES[stage] in text
    assert "did you mean" not in text


def test_every_dslc_form_a_hint_names_exists():
    """The layers written in backticks, the activations and the renamed arguments are all in the registry."""
    for hint in LAYERS.values():
        for form in re.findall(r"`([^`]*)`", hint):
            for layer in re.findall(r"\b[A-Z]\w*", form):
                assert layer in REGISTRY, (hint, layer)
    assert all(layer in REGISTRY for layer in ACTIVATIONS.values() if layer is not None)
    params = {p.name for op in REGISTRY.values() for p in op.params}
    for key, targets in RENAMES.items():
        assert set(targets) <= params, key
