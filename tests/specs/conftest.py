"""Builds every spec in specs/ once per test session (check -> PyTorch -> ONNX -> verification).

Specs whose models share parameter names with a training model named like the file (`vae` in
vae.model: `encoder.*`, `decoder.*`) are built with the training model's weights copied into the
inference models, so the exported graphs can be compared with each other. bert_classifier, vit, gpt2 and llama
are built with the deterministic reference weights of tests/fixtures (resnet18 and mobilenet_v2 are
not: with realistic weights its logits reach ~10 and fp32 differences of ~1e-4 between PyTorch and
onnxruntime exceed the build's absolute 1e-5 tolerance, so its reference check exports separately).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from dslc.build import BuildResult, build, load_generated, write_python

ROOT = Path(__file__).resolve().parents[2]
SPECS_DIR = ROOT / "specs"
FIXTURES = ROOT / "tests" / "fixtures"
SPEC_FILES = sorted(SPECS_DIR.glob("*.model"))
REFERENCE_WEIGHTS = {"bert_classifier", "vit", "gpt2", "llama"}
# Specs whose default build or short training takes a minute and gigabytes (vgg: 138M parameters): CI's slow step.
LARGE = {"vgg"}

sys.path.insert(0, str(FIXTURES))
from reference_weights import reference_array, reference_image, reference_tokens  # noqa: E402

__all__ = ["reference_array", "reference_image", "reference_tokens"]


def by_stem(stems: list[str]) -> list:
    """Parametrize over spec stems, the LARGE ones marked slow."""
    return [pytest.param(s, marks=pytest.mark.slow) if s in LARGE else s for s in stems]


@dataclass
class Built:
    stem: str
    out: Path
    result: BuildResult
    module: Any  # the generated Python module
    state_dicts: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def model(self, name: str) -> torch.nn.Module:
        """A fresh PyTorch instance of `name` holding the weights its ONNX graph was exported with."""
        torch.manual_seed(0)  # as dslc.build does before instantiating each model
        model = self.module.MODELS[name]()
        if name in self.state_dicts:
            model.load_state_dict(self.state_dicts[name], strict=True)
        return model.eval()

    def onnx(self, name: str) -> Path:
        return self.out / f"{name}.onnx"


def reference_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: torch.from_numpy(reference_array(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")))
        for k, v in model.state_dict().items()
    }


def _state_dicts(spec: Path, scratch: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Weights to export: reference weights, or the training model's weights shared by name."""
    program = write_python(spec, scratch / f"{spec.stem}.py")
    names = [m.spec_name for m in program.exported]
    generated = load_generated(scratch / f"{spec.stem}.py")
    if spec.stem in REFERENCE_WEIGHTS:
        return {spec.stem: reference_state_dict(generated.MODELS[spec.stem]())}
    if spec.stem not in names or len(names) == 1:
        return {}
    torch.manual_seed(0)
    shared = generated.MODELS[spec.stem]().state_dict()
    result = {spec.stem: shared}
    for name in names:
        if name != spec.stem:
            keys = generated.MODELS[name]().state_dict().keys()
            if all(k in shared for k in keys):
                result[name] = {k: shared[k] for k in keys}
    return result


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory):
    """built(stem) -> Built, building the spec on first use."""
    cache: dict[str, Built] = {}

    def get(stem: str) -> Built:
        if stem not in cache:
            spec = SPECS_DIR / f"{stem}.model"
            out = tmp_path_factory.mktemp(stem)
            state_dicts = _state_dicts(spec, tmp_path_factory.mktemp(f"{stem}-py"))
            result = build(spec, out, state_dicts=state_dicts)
            cache[stem] = Built(stem, out, result, load_generated(result.python_path), state_dicts)
        return cache[stem]

    return get
