"""Checkpoints: one safetensors file per save holding model weights, optimizer, scheduler, scaler
and RNG state, and the run history. Written atomically, so a SIGKILL at any moment leaves either
the previous checkpoint or the new one, never a torn file.

The metadata holds a sha256 of everything else in the file (tensor names, dtypes, shapes and bytes,
and the JSON metadata), so a checkpoint damaged on disk is refused instead of resuming with other
weights; `load_latest` then falls back to the checkpoint before it. The metadata also records what
a resumed run must match (`run_identity`).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from dslc.errors import Diagnostic, DslcError, error
from dslc.fileio import spec_sha256, write_atomic

# epoch-0003.safetensors: after 3 epochs; epoch-0003-step-000045.safetensors: 45 steps into the 4th (an interrupt)
NAME = re.compile(r"epoch-(\d{4,})(?:-step-(\d{6,}))?\.safetensors$")
META_KEY = "dslc"  # the JSON metadata: epoch, history, run identity, packed state
CHECKSUM_KEY = "dslc.sha256"  # sha256 over the tensors and META_KEY's text (see `checksum`)
RESUME_KEYS = ("epoch", "history", "spec_sha256", "overrides", "config", "amp")  # what --resume reads
CORRUPT_HINT = "delete it to resume from the checkpoint before it, or start a new run with another --out"


class CheckpointError(DslcError):
    """A checkpoint that cannot be used: unreadable, damaged (checksum mismatch) or lacking metadata."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = path, reason
        super().__init__([Diagnostic(None, f"checkpoint {path} {reason}", CORRUPT_HINT)])


def pack(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Nested state -> JSON-able structure; tensors go to `tensors` under unique keys."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}#{len(tensors)}"
        tensors[key] = obj.detach().cpu().clone()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[pack(k, prefix, tensors), pack(v, prefix, tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [pack(v, prefix, tensors) for v in obj], "tuple": isinstance(obj, tuple)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}")


def unpack(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {unpack(k, tensors): unpack(v, tensors) for k, v in obj["__dict__"]}
        items = [unpack(v, tensors) for v in obj["__list__"]]
        return tuple(items) if obj["tuple"] else items
    return obj


def save(path: Path, models: dict[str, torch.nn.Module], state: dict[str, Any], meta: dict[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    for name, model in models.items():
        for key, value in model.state_dict().items():
            tensors[f"model/{name}/{key}"] = value.detach().cpu().clone()
    packed = pack(state, "state", tensors)
    meta_text = json.dumps({**meta, "state": packed})
    metadata = {META_KEY: meta_text, CHECKSUM_KEY: checksum(tensors, meta_text)}
    write_atomic(path, st_save(tensors, metadata=metadata))


def checksum(tensors: dict[str, torch.Tensor], meta_text: str) -> str:
    """sha256 over the metadata text, then every tensor in name order: its name, dtype and shape, then its bytes."""
    digest = hashlib.sha256(meta_text.encode("utf-8"))
    for key in sorted(tensors):
        tensor = tensors[key].detach().cpu().contiguous()
        digest.update(json.dumps([key, str(tensor.dtype), list(tensor.shape)]).encode("utf-8"))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def load(
    path: Path, required: tuple[str, ...] = ()
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any], dict[str, Any]]:
    """(model state dicts, restored state, metadata), after checking the checksum and that the metadata holds the
    `required` keys; CheckpointError otherwise."""
    tensors, metadata = _read(path)
    if CHECKSUM_KEY not in metadata or META_KEY not in metadata:
        missing = " and ".join(repr(k) for k in (META_KEY, CHECKSUM_KEY) if k not in metadata)
        raise CheckpointError(path, f"lacks the metadata {missing} (not written by this version of dslc?)")
    if checksum(tensors, metadata[META_KEY]) != metadata[CHECKSUM_KEY]:
        raise CheckpointError(path, "is corrupt: its content does not match its checksum (damaged on disk?)")
    try:
        meta = json.loads(metadata[META_KEY])
        missing = [key for key in (*required, "state") if key not in meta]
        if missing:
            raise CheckpointError(
                path, f"lacks the metadata {', '.join(map(repr, missing))} (not written by this version of dslc?)"
            )
        state = unpack(meta.pop("state"), tensors)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(path, f"holds malformed metadata ({type(exc).__name__}: {exc})") from None
    models: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("model/"):
            _, name, param = key.split("/", 2)
            models.setdefault(name, {})[param] = value
    return models, state, meta


def model_states(path: Path) -> dict[str, dict[str, torch.Tensor]] | None:
    """The models' state dicts in an epoch checkpoint (checksum checked), or None for a safetensors file that is not
    one (a plain state dict)."""
    if path.suffix != ".safetensors" or META_KEY not in _read(path)[1]:
        return None
    return load(path)[0]


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the string metadata of a safetensors file."""
    try:
        raw = path.read_bytes()
        tensors = dict(sorted(st_load(raw).items()))  # safetensors' order is random per process (a Rust HashMap)
        header_len = int.from_bytes(raw[:8], "little")
        metadata = json.loads(raw[8 : 8 + header_len]).get("__metadata__") or {}
    except (SafetensorError, OSError, ValueError, AttributeError) as exc:
        raise CheckpointError(path, f"is corrupt or incomplete ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(metadata, dict):
        raise CheckpointError(path, "is corrupt or incomplete (its metadata is not a table)")
    return tensors, metadata


def load_latest(
    folder: Path, required: tuple[str, ...] = RESUME_KEYS
) -> tuple[Path, tuple[dict, dict, dict], list[CheckpointError]] | None:
    """The newest usable epoch checkpoint in `folder`: (its path, what `load` returns, the newer checkpoints that were
    refused); None when `folder` holds none. When none is usable, an error naming each file and why."""
    found = checkpoints(folder)
    refused: list[CheckpointError] = []
    for path in reversed(found):
        try:
            return path, load(path, required), refused
        except CheckpointError as exc:
            refused.append(exc)
    if not refused:
        return None
    reasons = "; ".join(f"{exc.path.name} {exc.reason}" for exc in refused)
    raise error(None, f"no usable checkpoint in {folder}: {reasons}", "start a new run with another --out")


# ---------------------------------------------------------------- what a resumed run must match


def run_identity(spec_sha256: str, overrides: list[str], config: dict[str, Any], amp: bool) -> dict[str, Any]:
    """What changes a run's result, recorded in every epoch checkpoint: the spec's hash, its constant overrides
    (`--set hidden=6`, as a table), the resolved train settings (with --epochs, --batch-size, --seed) and --amp.
    --device, --nproc and --compile are left out: they change only the floating-point summation order."""
    constants = dict(item.partition("=")[::2] for item in overrides)
    return {"spec_sha256": spec_sha256, "overrides": constants, "config": json.loads(json.dumps(config)), "amp": amp}


def refuse_changed_run(
    path: Path, meta: dict[str, Any], now: dict[str, Any], saved_spec: str | None = None, spec: str | None = None
) -> None:
    """Stop a resume from the checkpoint `path` when the spec or a setting (`now`, a run_identity) differs from the
    checkpoint's, with a note per difference giving both values. The spec's changed lines are shown when the text it
    was (`saved_spec`, the run folder's copy) and the text it is now (`spec`) are known, else its two hashes."""
    notes = resume_differences(meta, now)
    if meta["spec_sha256"] != now["spec_sha256"]:
        if saved_spec is not None and spec is not None and spec_sha256(saved_spec) == meta["spec_sha256"]:
            notes = spec_changes(saved_spec, spec) + notes
        else:
            notes.insert(0, f"spec sha256: {meta['spec_sha256'][:16]} in the checkpoint, {now['spec_sha256'][:16]} now")
    if notes:
        what = "the spec" if meta["spec_sha256"] != now["spec_sha256"] else "the training settings"
        raise DslcError(
            [
                Diagnostic(
                    None,
                    f"cannot resume from {path}: {what} changed since it was written",
                    "resume with the spec, settings and flags the run started with, or start a new run (another --out)",
                    notes=notes,
                )
            ]
        )


def resume_differences(meta: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Each setting of `now` (a run_identity) that differs from the checkpoint's, as 'NAME: SAVED in the checkpoint,
    NOW now' (the spec's hash is not compared)."""
    pairs = {
        f"--set {k}": (meta["overrides"].get(k), now["overrides"].get(k))
        for k in {**meta["overrides"], **now["overrides"]}
    }
    flat_saved, flat_now = _flatten(meta["config"]), _flatten(now["config"])
    pairs.update({k: (flat_saved.get(k), flat_now.get(k)) for k in {**flat_saved, **flat_now}})
    pairs["--amp"] = ("on" if meta["amp"] else "off", "on" if now["amp"] else "off")
    return [
        f"{name}: {_shown(saved)} in the checkpoint, {_shown(current)} now"
        for name, (saved, current) in sorted(pairs.items())
        if saved != current
    ]


def spec_changes(saved: str, now: str, shown: int = 5) -> list[str]:
    """The spec's changed lines, as 'line N: `OLD` in the run's copy, `NEW` now' (at most `shown`, then a count)."""
    old, new = saved.split("\n"), now.split("\n")
    changes = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        before = " / ".join(line.strip() for line in old[i1:i2]) or "nothing"
        after = " / ".join(line.strip() for line in new[j1:j2]) or "nothing"
        changes.append(f"spec line {j1 + 1}: `{_clip(before)}` in the run's copy, `{_clip(after)}` now")
    if len(changes) > shown:
        changes[shown:] = [f"... and {len(changes) - shown} more changed places"]
    return changes


def _clip(text: str, width: int = 80) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted names: {"steps[0].optimizer.lr": 0.05, ...} (other lists stay whole)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        out = {}
        for i, item in enumerate(value):
            out.update(_flatten(item, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def _shown(value: Any) -> str:
    if value is None:
        return "not set"
    return value if isinstance(value, str) else json.dumps(value)


def checkpoints(folder: Path) -> list[Path]:
    """Saved checkpoints, oldest first (by epochs, then steps into the next)."""
    if not folder.is_dir():
        return []
    found = [((int(m.group(1)), int(m.group(2) or 0)), p) for p in folder.iterdir() if (m := NAME.search(p.name))]
    return [p for _, p in sorted(found)]


def path_for(folder: Path, epoch: int, step: int = 0) -> Path:
    """The checkpoint after `epoch` epochs and `step` steps of the next (a mid-epoch checkpoint)."""
    return folder / (f"epoch-{epoch:04d}-step-{step:06d}.safetensors" if step else f"epoch-{epoch:04d}.safetensors")
