"""Checkpoints: one safetensors file per save holding model weights, optimizer, scheduler, scaler
and RNG state, and the run history. Written atomically, so a SIGKILL at any moment leaves either
the previous checkpoint or the new one, never a torn file."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from dslc.errors import error
from dslc.fileio import write_atomic

NAME = re.compile(r"epoch-(\d{4,})\.safetensors$")


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
    metadata = {"dslc": json.dumps({**meta, "state": packed})}
    write_atomic(path, st_save(tensors, metadata=metadata))


def load(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any], dict[str, Any]]:
    """(model state dicts, restored state, metadata); a clear error for a corrupt file."""
    try:
        raw = path.read_bytes()
        tensors = st_load(raw)
        from safetensors import safe_open  # noqa: F401  (metadata is read from the header below)

        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + header_len])
        meta = json.loads(header["__metadata__"]["dslc"])
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
        raise error(
            None,
            f"checkpoint {path} is corrupt or incomplete ({str(exc).splitlines()[0][:120]})",
            "delete it to resume from the checkpoint before it, or start a new run with another --out",
        ) from None
    models: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("model/"):
            _, name, param = key.split("/", 2)
            models.setdefault(name, {})[param] = value
    state = unpack(meta.pop("state"), tensors)
    return models, state, meta


def checkpoints(folder: Path) -> list[Path]:
    """Saved checkpoints, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := NAME.search(p.name))]
    return [p for _, p in sorted(found)]


def path_for(folder: Path, epoch: int) -> Path:
    return folder / f"epoch-{epoch:04d}.safetensors"
