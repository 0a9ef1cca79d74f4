"""`dslc train --weights [MODEL=]FILE`: load a checkpoint into a model before training (or, with
`--epochs 0`, only to export it).

FILE is a `.safetensors` file or a PyTorch `.pth`/`.pt`/`.bin` file read with
`torch.load(weights_only=True)` (no code runs). A state dict wrapped as `{"state_dict": ...}` or
`{"model": ...}` and DDP's `module.` prefix are unwrapped. Without `MODEL=`, the file goes to the
model whose parameter names it holds (e.g. a torchvision resnet18 checkpoint to `resnet18`). An epoch
checkpoint of a run (`RUN/checkpoints/epoch-0003.safetensors`, its checksum checked) gives each model it holds, or
MODEL's alone. The load is strict: every parameter and buffer must be present with its shape, and nothing extra; with
`--ignore-mismatched-sizes`, a tensor of another shape (a classifier for other classes) is left at its
initialisation and named in the log.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dslc.errors import error

WRAPPERS = ("state_dict", "model_state_dict", "model")


def _require_file(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise error(None, f"--weights: no file {p}")
    return p


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    p = _require_file(path)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = dict(sorted(load_file(str(p)).items()))  # in name order: safetensors' is random
        else:
            with warnings.catch_warnings():  # torch's advice on pickle protocols is not the user's to act on
                warnings.simplefilter("ignore")
                state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (any unreadable file: a message, not a traceback)
        # weights-only loading never runs code from the file; it refuses any pickle of other objects (or of no
        # checkpoint at all) with a long message suggesting weights_only=False, which this must not follow
        detail = "not a state dict" if isinstance(exc, pickle.UnpicklingError) else (str(exc).splitlines() or [""])[0]
        raise error(
            None,
            f"--weights: cannot read {p} ({type(exc).__name__}: {detail[:200]})",
            "pass a .safetensors file or a state_dict saved with torch.save(model.state_dict(), path)",
        ) from None
    for key in WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ):
        raise error(None, f"--weights: {p} does not hold a state dict (parameter name -> tensor)")
    if all(k.startswith("module.") for k in state):  # saved from a DistributedDataParallel wrapper
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _fitting(state: dict[str, torch.Tensor], model: nn.Module, shapes: bool = True) -> int:
    """How many of the file's tensors `model` has by name (and, with `shapes`, of the same shape)."""
    expected = model.state_dict()
    return sum(k in expected and (not shapes or expected[k].shape == v.shape) for k, v in state.items())


def _pick(state: dict[str, torch.Tensor], models: dict[str, nn.Module], path: str) -> str:
    """The model a file given without MODEL= is for: the one holding most of its tensors, names and shapes (gan's
    generator and discriminator both name theirs fc1..fc3), else names alone."""
    keys = set(state)
    for shapes in (True, False):
        scores = {name: _fitting(state, m, shapes) for name, m in models.items()}
        best = max(scores.values())
        if not best:
            continue
        tied = [name for name, score in scores.items() if score == best]
        exact = [name for name in tied if set(models[name].state_dict()) == keys]
        if len(tied) == 1 or len(exact) == 1:
            return (exact or tied)[0]
        raise error(
            None,
            f"--weights: {path} fits the models {', '.join(tied)} alike",
            f"say which it is for: --weights {tied[0]}={path}",
        )
    first = next(iter(models))
    raise error(
        None,
        f"--weights: {path} shares no parameter name with any model ({', '.join(models)})",
        f"e.g. the file has '{next(iter(keys))}'; model '{first}' has '{next(iter(models[first].state_dict()), '')}'",
    )


def tied_groups(expected: dict[str, torch.Tensor]) -> list[list[str]]:
    """The state_dict keys that name one tensor (tied weights), in groups of two or more."""
    by_storage: dict[tuple[int, tuple[int, ...]], list[str]] = {}
    for key, tensor in expected.items():
        by_storage.setdefault((tensor.data_ptr(), tuple(tensor.shape)), []).append(key)
    return [keys for keys in by_storage.values() if len(keys) > 1]


def with_tied_keys(state: dict[str, Any], expected: dict[str, torch.Tensor]) -> dict[str, Any]:
    """`state` with each tied key it lacks taken from its twin: a checkpoint saved as HuggingFace saves a tied
    model (`transformer.wte.weight`, no `lm_head.weight`) loads strictly. A checkpoint whose values under two
    tied names differ is of an untied model: refused, not silently half-loaded."""
    filled = dict(state)
    for keys in tied_groups(expected):
        present = [k for k in keys if k in state]
        if not present:
            continue
        first = state[present[0]]
        differ = next((k for k in present[1:] if state[k].shape != first.shape or not state[k].equal(first)), None)
        if differ is not None:
            raise error(
                None,
                f"--weights: the checkpoint's {present[0]} and {differ} differ, but the spec ties them (one tensor)",
                "the checkpoint is of an untied model: remove the spec's tie (llama: --set tied=false)",
            )
        filled.update({k: first for k in keys if k not in state})
    return filled


def _untied_hint(missing: list[str], state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str | None:
    """A missing key shaped like a key the file has: the checkpoint's model ties them, the spec does not."""
    for key in missing:
        twin = next(
            (k for k, v in state.items() if k in expected and tuple(v.shape) == tuple(expected[key].shape)), None
        )
        if twin is not None:
            return f"if the checkpoint's model ties {key} to {twin}, the spec needs `tie {key} = {twin}` (llama: --set tied=true)"
    return None


def weight_source(item: str, models: list[str]) -> tuple[str, str]:
    """(model or "", file) of a `[MODEL=]FILE` of `--weights`, for a spec with these `models`."""
    name, sep, path = item.partition("=")
    if sep and name not in models and name.isidentifier() and not Path(item).exists():
        raise error(
            None,
            f"--weights {name}=...: this spec has no model '{name}'",
            f"its models: {', '.join(models)}; or pass the file alone, for the model whose parameter names it holds",
        )
    if not sep or name not in models:  # FILE alone, or a file name holding '='
        return "", item
    return name, path


def check_weight_sources(items: list[str], models: list[str]) -> None:
    """What `--weights` can be told before any model is built: each names a model of the spec and an existing file
    (so a refused run writes nothing)."""
    for item in items:
        _require_file(weight_source(item, models)[1])


def load_weights(items: list[str], models: dict[str, nn.Module], ignore_mismatched_sizes: bool = False) -> list[str]:
    """Load each `[MODEL=]FILE` into its model (strict, but for the tensors of another shape with
    `ignore_mismatched_sizes`); returns log lines."""
    lines = []
    loaded: dict[str, str] = {}  # model -> the file that gave its weights
    for item in items:
        name, path = weight_source(item, list(models))
        for target, state in _states(path, name, models):
            if target in loaded:
                raise error(
                    None,
                    f"--weights: model '{target}' is given weights twice ({loaded[target]} and {path})",
                    "give each model one file",
                )
            loaded[target] = path
            lines += _load_one(path, target, state, models, ignore_mismatched_sizes)
    return lines


def _states(path: str, name: str, models: dict[str, nn.Module]) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """(model, state dict) pairs a file gives: a state dict for `name` (or the model whose names it holds), or from
    an epoch checkpoint of a run (`checkpoints/epoch-0003.safetensors`) each model it holds, or `name`'s."""
    from dslc.training.checkpoint import CheckpointError, model_states

    p = Path(path)
    try:
        held = model_states(p) if p.is_file() else None
    except CheckpointError as exc:  # its hint is about --resume
        raise error(
            None,
            f"--weights: {exc.diagnostics[0].message}",
            "pass another checkpoint of the run, or the weights file its export wrote (<model>.safetensors)",
        ) from None
    if held is None:
        state = read_state_dict(path)
        return [(name or _pick(state, models, path), state)]
    wanted = [name] if name else [n for n in models if n in held]
    absent = [n for n in wanted if n not in held]
    if absent or not wanted:
        raise error(
            None,
            f"--weights: the checkpoint {path} holds the models {', '.join(held)}, "
            + (f"not '{absent[0]}'" if absent else f"none of this spec's ({', '.join(models)})"),
            "pass a checkpoint of a run of this spec",
        )
    return [(n, held[n]) for n in wanted]


def _load_one(
    path: str, name: str, state: dict[str, torch.Tensor], models: dict[str, nn.Module], ignore_mismatched_sizes: bool
) -> list[str]:
    """Load `state` into the model `name` of `models`; returns log lines."""
    lines = []
    model = models[name]
    expected = model.state_dict()
    elsewhere = [n for n, m in models.items() if n != name and _fitting(state, m) == len(state)]
    given = len(state)
    state = with_tied_keys(state, expected)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k, v in expected.items() if k in state and state[k].shape != v.shape]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in mismatched]
    kept = []
    if ignore_mismatched_sizes and shapes and len(mismatched) < len(state):
        kept, shapes = shapes, []
        state = {k: v for k, v in state.items() if k not in mismatched}
    if missing or unexpected or shapes:
        parts = []
        for label, found in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape (file vs model)", shapes),
        ):
            if found:
                parts.append(f"{label}: {', '.join(found[:4])}{' ...' if len(found) > 4 else ''} ({len(found)})")
        raise error(
            None,
            f"--weights: {path} does not fit model '{name}' (strict load): " + "; ".join(parts),
            (elsewhere and f"the file fits model '{elsewhere[0]}': --weights {elsewhere[0]}={path}")
            or (not unexpected and not shapes and _untied_hint(missing, state, expected))
            or (
                shapes
                and not missing
                and not unexpected
                and len(mismatched) < len(state)  # a new head, not another model's file
                and "a new head? --ignore-mismatched-sizes leaves the tensors of another shape freshly initialised"
            )
            or "check the spec's constants (e.g. --set classes=...) against the checkpoint",
        )
    with torch.no_grad():
        model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=not kept)
    lines.append(f"loaded {given - len(kept)} tensors from {path} into '{name}'")
    if kept:
        lines.append(f"kept freshly initialised, their shape differs (file vs model): {', '.join(kept)}")
    return lines
