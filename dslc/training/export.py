"""The trained models -> verified ONNX graphs in the run folder, through `dslc.build`.

The build runs in a staging folder (the run's own training script is never overwritten); its
ONNX files, model code and manifest are then moved in, with the vocabulary added when the data
set has one (ONNX metadata `dslc.vocab`, manifest `vocab`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from dslc.errors import error, read_source
from dslc.fileio import disk_full_errors, fsync_file, fsync_folder, spec_sha256, write_atomic


def export_trained(
    spec: dict[str, Any],
    out: Path,
    state_dicts: dict[str, Any],
    vocab: list[str] | None,
    labels: list[str] | None,
    weights: dict[str, str] | None = None,
) -> list[Any]:
    """Build the spec with the trained state dicts; `weights` (model -> "trained", "trained (from vae)", "initial")
    goes into the manifest entries."""
    from dslc.build import build

    path = Path(spec["path"])
    if not path.is_file():
        raise error(
            None, f"cannot export: the spec {path} is gone", "the trained weights are in the run folder (*.safetensors)"
        )
    if spec_sha256(read_source(path)) != spec["sha256"]:  # hashed as the checker does (CRLF reads as LF)
        raise error(
            None,
            f"cannot export: {path} changed since this training script was generated",
            "the trained weights are in the run folder (*.safetensors); rebuild the script and export from them",
        )
    with disk_full_errors(out):
        staging = Path(tempfile.mkdtemp(prefix=".dslc-export-", dir=out))  # a name remove_debris knows
    try:
        with disk_full_errors(out):
            # labels and vocabulary go into the ONNX metadata before verification, and into the manifest
            result = build(path, staging, spec["overrides"], state_dicts=state_dicts, labels=labels, vocab=vocab)
            manifest = json.loads((staging / "manifest.json").read_text(encoding="utf-8"))
            for entry in manifest["models"]:
                if weights and entry.get("name") in weights:
                    entry["weights"] = weights[entry["name"]]
            manifest["trained"] = True
            write_atomic(staging / "manifest.json", json.dumps(manifest, indent=2) + "\n")
            _publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result.models


def _publish(staging: Path, out: Path) -> None:
    """Move the built files (not the build's training script) into the run folder, the manifest last; each is flushed
    to the disk first, so that a crash leaves no empty file under a final name."""
    items = sorted(
        (p for p in staging.iterdir() if not p.name.endswith("_train.py")), key=lambda p: p.name == "manifest.json"
    )
    for item in items:
        if item.is_file():
            fsync_file(item)
        os.replace(item, out / item.name)
    fsync_folder(out)
