"""The end of a run: which weights each exported model gets (trained, shared by name from a trained model, loaded
with --weights, or initial), the `<model>.safetensors` files, and verified ONNX graphs through `dslc.build`.

The build compiles the run folder's copy of the spec (so a moved run folder still exports) in a staging folder (the
run's own training script and spec copy are never overwritten); its ONNX files, model code and manifest are then moved
in, with the vocabulary added when the data set has one (ONNX metadata `dslc.vocab`, manifest `vocab`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dslc.errors import error, read_source
from dslc.fileio import disk_full_errors, fsync_file, fsync_folder, spec_sha256, write_atomic


class WeightSources:
    """Where each model's exported weights come from, for the manifest's "weights" and the log."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log
        self.loaded: set[str] = set()  # models given weights with --weights
        self.shared: dict[str, str] = {}  # model -> what share_trained_weights decided

    def share_trained_weights(
        self, models: dict[str, nn.Module], trained: list[str], into: list[str], after_training: bool
    ) -> None:
        """Each exported model that was not trained takes the trained weights by parameter name (`encoder.*` of a
        trained `vae` into a model `encoder` built from the same block), when every one of its parameters and
        buffers has a trained counterpart of the same shape; otherwise it keeps its initial weights, with a warning."""
        sources = {name: models[name].state_dict() for name in trained}
        for name in into:
            target = models[name].state_dict()
            if not target:
                continue
            if name in self.loaded:
                self.shared[name] = "loaded (--weights)"
                self.log(f"model '{name}' keeps the weights given with --weights")
                continue
            found, origins, problem = match_state(target, sources)
            if found is None:
                self.shared[name] = "initial"
                self.log(f"warning: model '{name}' keeps its initial, untrained weights: {problem}")
                continue
            models[name].load_state_dict(found)
            where = ", ".join(origins)
            self.shared[name] = f"trained (from {where})" if after_training else f"from {where}"
            shown = f"the trained {where}" if after_training else f"the {where}"
            self.log(f"model '{name}' takes its {len(target)} parameters and buffers from {shown} (by name)")

    def origins(
        self, models: dict[str, nn.Module], export: list[str], trained: list[str], after_training: bool
    ) -> dict[str, str]:
        """Each exported model's source of weights; a warning for a model exported untrained though no step trains
        it."""
        origins = {}
        for name in export:
            if name in self.shared:
                origins[name] = self.shared[name]
            elif name in trained and after_training:
                origins[name] = "trained"
            elif name in self.loaded:
                origins[name] = "loaded (--weights)"
            else:
                origins[name] = "initial"
                if not any(True for _ in models[name].parameters()):
                    continue
                if name not in trained:
                    self.log(
                        f"warning: model '{name}' is exported with its initial, untrained weights (no step trains it)"
                    )
                elif self.loaded and not after_training:  # --epochs 0 with --weights for the other models only
                    self.log(
                        f"warning: model '{name}' is exported with its initial, untrained weights: no --weights "
                        f"file was given for it (--weights {name}=FILE)"
                    )
        return origins


def match_state(
    target: dict[str, torch.Tensor], sources: dict[str, dict[str, torch.Tensor]]
) -> tuple[dict[str, torch.Tensor] | None, list[str], str]:
    """The trained tensor for every key of `target` (same name, shape and dtype, in exactly one trained model or equal
    in all that have it): (state dict, the trained models it comes from, ""), or (None, [], why not)."""
    found: dict[str, torch.Tensor] = {}
    origins: list[str] = []
    missing, mismatched, ambiguous = [], [], []
    for key, value in target.items():
        hits = [(src, state[key]) for src, state in sources.items() if key in state]
        same = [(src, t) for src, t in hits if t.shape == value.shape and t.dtype == value.dtype]
        if not hits:
            missing.append(key)
        elif not same:
            src, t = hits[0]
            mismatched.append(
                f"{key} is {list(value.shape)} {str(value.dtype).removeprefix('torch.')} here but "
                f"{list(t.shape)} {str(t.dtype).removeprefix('torch.')} in {src}"
            )
        elif any(not torch.equal(same[0][1], t) for _, t in same[1:]):
            ambiguous.append(f"{key} (in {', '.join(src for src, _ in same)})")
        else:
            found[key] = same[0][1]
            if same[0][0] not in origins:
                origins.append(same[0][0])
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} of its {len(target)} parameters/buffers have no trained counterpart in "
            f"{', '.join(sources) or 'no trained model'} ({_some(missing)})"
        )
    if mismatched:
        problems.append(f"{len(mismatched)} differ in shape or dtype ({_some(mismatched)})")
    if ambiguous:
        problems.append(f"{len(ambiguous)} have different trained values in several models ({_some(ambiguous)})")
    if problems:
        return None, [], "; ".join(problems)
    return found, origins, ""


def _some(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f", ... {len(items) - n} more" if len(items) > n else "")


def write_weights(out: Path, models: dict[str, nn.Module], export: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """`<model>.safetensors` for each exported model; returns their state dicts (CPU copies)."""
    from safetensors.torch import save as safetensors_bytes

    states = {name: {k: v.detach().cpu().clone() for k, v in models[name].state_dict().items()} for name in export}
    for name, state in states.items():
        write_atomic(out / f"{name}.safetensors", safetensors_bytes(state))
    return states


def export_trained(
    spec_copy: Path,
    spec: dict[str, Any],
    data_dir: Path,
    out: Path,
    state_dicts: dict[str, Any],
    vocab: list[str] | None,
    labels: list[str] | None,
    weights: dict[str, str],
    preprocess: dict[str, Any] | None = None,
    variants: tuple[str, ...] = (),
) -> list[Any]:
    """Build the spec's copy `spec_copy` (its hash must be `spec["sha256"]`, the spec the script was written from)
    with the trained state dicts, its data files read from `data_dir` (the checker reads their headers for the
    fields' types), the data set's input transforms `preprocess` prepended to the graphs; `weights` (model ->
    "trained", "trained (from vae)", "initial") goes into the manifest entries. Each of `variants` ("fp16", "int8")
    writes one more verified graph per model."""
    from dslc.build import build

    kept = "the trained weights are in the run folder (*.safetensors)"
    if not spec_copy.is_file():
        raise error(None, f"cannot export: the spec's copy {spec_copy} is gone", f"{kept}; put the copy back to export")
    if spec_sha256(read_source(spec_copy)) != spec["sha256"]:  # hashed as the checker does (CRLF reads as LF)
        raise error(
            None,
            f"cannot export: {spec_copy} changed since this training script was written from it",
            f"{kept}; undo the change, or write the script again with `dslc build` and export from them",
        )
    with disk_full_errors(out):
        staging = Path(tempfile.mkdtemp(prefix=".dslc-export-", dir=out))  # a name remove_debris knows
    try:
        with disk_full_errors(out):
            built = staging / "built"
            # labels and vocabulary go into the ONNX metadata before verification, and into the manifest
            result = build(
                spec_copy,
                built,
                spec["overrides"],
                state_dicts=state_dicts,
                labels=labels,
                vocab=vocab,
                train_overrides=dict(spec["train_overrides"]),
                data_dir=data_dir,
                preprocess=preprocess,
                variants=variants,
            )
            manifest = json.loads((built / "manifest.json").read_text(encoding="utf-8"))
            for entry in manifest["models"]:
                if entry.get("name") in weights:
                    entry["weights"] = weights[entry["name"]]
            manifest["trained"] = True
            write_atomic(built / "manifest.json", json.dumps(manifest, indent=2) + "\n")
            _publish(built, out, keep=spec_copy.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result.models


def _publish(staging: Path, out: Path, keep: str) -> None:
    """Move the built files (not the build's training script, nor its spec copy `keep`) into the run folder, the
    manifest last; each is flushed to the disk first, so that a crash leaves no empty file under a final name."""
    built = [p for p in staging.iterdir() if p.is_file() and not p.name.endswith("_train.py") and p.name != keep]
    items = sorted(built, key=lambda p: p.name == "manifest.json")
    for item in items:
        if item.is_file():
            fsync_file(item)
        os.replace(item, out / item.name)
    fsync_folder(out)
