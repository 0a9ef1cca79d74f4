"""Finding the ONNX file for a path, and reading build manifests (``manifest.json``) defensively.

A manifest is untrusted input like the model itself: it is read with a size bound, parsed
with a nesting guard, and every field the runtime uses is type-checked, so a garbage manifest
is refused with the field's location instead of being half-used.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ._files import check_name, read_bounded, require_regular, resolve_inside, sha256_of
from .errors import ModelError
from .signature import Signature, TensorSpec, display, quoted

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 8 << 20
"""Real manifests are a few KiB (a large vocabulary: a few MiB); bigger ones are refused unread."""

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")

Port = dict[str, Any]
"""A declared input or output: ``{"name": str, "dtype": str, "shape": [int|str|None], "doc": str}``."""


@dataclass(frozen=True)
class ManifestEntry:
    """One validated ``models[i]`` entry. ``None`` means the manifest does not say."""

    name: str
    onnx: str
    inputs: list[Port] | None = None
    outputs: list[Port] | None = None
    labels: list[str] | None = None
    vocab: list[str] | None = None
    onnx_sha256: str | None = None
    onnx_data: str | None = (
        None  # the external data file beside a large model's graph, and its sha256
    )
    onnx_data_sha256: str | None = None
    variants: dict[str, ManifestEntry] = field(default_factory=dict)
    """``dslc build --precision fp16|bf16`` and ``--quantize int8``: the same model's other graphs, by kind."""


VARIANTS = ("fp16", "bf16", "int8")
"""The graphs ``dslc build`` writes beside the float32 one (the manifest entry's keys of the same names)."""


@dataclass(frozen=True)
class Resolved:
    """Where a path led: the ONNX file and, when found through a manifest, the manifest."""

    onnx_path: Path
    entry: ManifestEntry | None = None
    manifest: dict[str, Any] | None = None
    manifest_path: Path | None = None


def resolve(path: Path, model: str | None, variant: str | None = None) -> Resolved:
    """Find the ONNX file for ``path``: an ``.onnx`` file, a build directory, or a manifest; with ``variant``
    (one of VARIANTS), the manifest entry's graph of that kind."""
    check_name(str(path), "model path", ModelError)
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    # os.path's tests answer False on any OSError (Path's raise e.g. PermissionError): the
    # checks below then report what is wrong with the path.
    if os.path.isdir(path):
        manifest_path = path / MANIFEST
        if not os.path.lexists(manifest_path):
            _no_manifest_for(variant, path)
            return Resolved(_single_onnx(path, model))
    elif path.name == MANIFEST or path.suffix == ".json":
        manifest_path = path
    elif os.path.lexists(path):
        _no_manifest_for(variant, path)
        require_regular(path, "model file", ModelError)
        return Resolved(path)
    else:
        raise ModelError(f"model not found: {path}")
    manifest = read_manifest(manifest_path)
    entry = _pick(_entries(manifest, manifest_path), model, manifest_path, _cache_graphs(manifest))
    if variant is not None:
        entry = _variant(entry, variant, manifest_path)
    onnx_path = resolve_inside(
        manifest_path.parent,
        entry.onnx,
        f"{manifest_path}: model {quoted(entry.name)}: 'onnx' file",
        "the build directory",
        ModelError,
    )
    if not os.path.exists(onnx_path):
        raise ModelError(f"{manifest_path} lists {entry.onnx!r} but {onnx_path} does not exist")
    require_regular(onnx_path, "model file", ModelError)
    # checked before onnxruntime parses the file: a damaged or swapped graph is refused
    if entry.onnx_sha256 is None:
        raise ModelError(
            f"invalid manifest {manifest_path}: model {quoted(entry.name)} gives no onnx_sha256 for {entry.onnx!r} "
            "(every dslc build records it); rebuild the folder, or load the .onnx file itself"
        )
    _check_sha256(onnx_path, entry.onnx_sha256, manifest_path)
    if entry.onnx_data is not None and entry.onnx_data_sha256 is not None:
        _check_data(manifest_path, entry)
    return Resolved(onnx_path, entry, manifest, manifest_path)


def _no_manifest_for(variant: str | None, path: Path) -> None:
    if variant is not None:
        raise ModelError(
            f"{path}: the {variant} variant is found through a build's {MANIFEST}, which this path is not; "
            "load the build directory with it, or the variant's .onnx file itself without it"
        )


def _variant(entry: ManifestEntry, variant: str, manifest_path: Path) -> ManifestEntry:
    """``entry`` with the files of its ``variant`` graph (same inputs, outputs, labels and vocabulary)."""
    chosen = entry.variants.get(variant)
    if chosen is None:
        built = ", ".join(entry.variants) or "none"
        option = "--quantize int8" if variant == "int8" else f"--precision {variant}"
        raise ModelError(
            f"{manifest_path}: model {quoted(entry.name)} has no {variant} graph (variants built: {built}); "
            f"rebuild with `dslc build ... {option}`"
        )
    return replace(
        entry,
        onnx=chosen.onnx,
        onnx_sha256=chosen.onnx_sha256,
        onnx_data=chosen.onnx_data,
        onnx_data_sha256=chosen.onnx_data_sha256,
        variants={},
    )


def _single_onnx(folder: Path, model: str | None) -> Path:
    every = sorted(folder.glob("*.onnx"))
    candidates = [c for c in every if model is None or c.stem == model]
    if len(candidates) != 1:
        names = ", ".join(display(c.name) for c in every) or "none"
        raise ModelError(
            f"{folder} has no {MANIFEST} and no single matching .onnx file "
            f"(found: {names}); pass the .onnx path or model=NAME"
        )
    require_regular(candidates[0], "model file", ModelError)
    return candidates[0]


def _check_data(manifest_path: Path, entry: ManifestEntry) -> None:
    what = f"{manifest_path}: model {quoted(entry.name)}: 'onnx_data' file"
    data_path = resolve_inside(
        manifest_path.parent, entry.onnx_data, what, "the build directory", ModelError
    )
    if not os.path.exists(data_path):
        raise ModelError(
            f"{manifest_path} lists the weights file {entry.onnx_data!r} but {data_path} does not exist"
        )
    _check_sha256(data_path, entry.onnx_data_sha256, manifest_path, "weights file")


def _check_sha256(path: Path, expected: str, manifest_path: Path, what: str = "model file") -> None:
    actual = sha256_of(path, what, ModelError)
    if actual != expected.lower():
        raise ModelError(
            f"{path}: sha256 is {actual} but {manifest_path} records {expected.lower()}; "
            "the file was modified or corrupted after the build (rebuild or re-download it)"
        )


# --------------------------------------------------------------------------- parsing
def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest's top-level object, read with a size bound and a nesting guard."""
    data = read_bounded(path, MAX_MANIFEST_BYTES, "manifest", ModelError)
    try:
        manifest = json.loads(data.decode("utf-8"))
    except RecursionError:  # raised by the json decoder itself, before any of it is used
        raise ModelError(f"invalid manifest {path}: JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, over-long integers
        raise ModelError(f"invalid manifest {path}: {exc}") from None
    if not isinstance(manifest, dict):
        raise ModelError(f"invalid manifest {path}: expected a JSON object, got {_kind(manifest)}")
    return manifest


def _kind(value: Any) -> str:
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
    }
    return names.get(type(value), "a number")


def _invalid(path: Path, where: str, expected: str, value: Any) -> ModelError:
    return ModelError(f"invalid manifest {path}: {where} must be {expected}, got {_kind(value)}")


def _entries(manifest: dict[str, Any], path: Path) -> list[ManifestEntry]:
    models = manifest.get("models")
    if not isinstance(models, list):
        raise _invalid(path, "'models'", "a list of model entries", models)
    if not models:
        raise ModelError(f"invalid manifest {path}: 'models' lists no model")
    entries = [_entry(raw, f"models[{i}]", path) for i, raw in enumerate(models)]
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            raise ModelError(f"invalid manifest {path}: two models are named {quoted(entry.name)}")
        seen.add(entry.name)
    return entries


def _entry(raw: Any, where: str, path: Path) -> ManifestEntry:
    if not isinstance(raw, dict):
        raise _invalid(path, where, "an object", raw)
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise _invalid(path, f"{where}.name", "a non-empty string", name)
    variants = {}
    for kind in VARIANTS:
        if kind in raw:
            files = raw[kind]
            if not isinstance(files, dict):
                raise _invalid(path, f"{where}.{kind}", "an object naming its 'onnx' file", files)
            if not isinstance(files.get("onnx"), str):
                raise _invalid(
                    path, f"{where}.{kind}.onnx", "a file name (string)", files.get("onnx")
                )
            variants[kind] = ManifestEntry(
                name, **_files(files, f"{where}.{kind}", path, files["onnx"])
            )
    return ManifestEntry(
        name=name,
        inputs=_ports(raw.get("inputs"), f"{where}.inputs", path),
        outputs=_ports(raw.get("outputs"), f"{where}.outputs", path),
        labels=_strings(raw.get("labels"), f"{where}.labels", path),
        vocab=_strings(raw.get("vocab"), f"{where}.vocab", path),
        variants=variants,
        **_files(raw, where, path, f"{name}.onnx"),
    )


def _files(raw: dict[str, Any], where: str, path: Path, default_onnx: str) -> dict[str, str | None]:
    """The graph file, its weights file and their checksums, as ManifestEntry's fields."""
    onnx = raw.get("onnx", default_onnx)
    if not isinstance(onnx, str):
        raise _invalid(path, f"{where}.onnx", "a file name (string)", onnx)
    sha = _sha256_field(raw, "onnx_sha256", where, path)
    data, data_sha = raw.get("onnx_data"), _sha256_field(raw, "onnx_data_sha256", where, path)
    if data is not None and not isinstance(data, str):
        raise _invalid(path, f"{where}.onnx_data", "a file name (string)", data)
    if (data is None) != (data_sha is None):
        raise ModelError(
            f"invalid manifest {path}: {where} gives one of onnx_data and onnx_data_sha256 without the other"
        )
    return {"onnx": onnx, "onnx_sha256": sha, "onnx_data": data, "onnx_data_sha256": data_sha}


def _sha256_field(raw: dict[str, Any], key: str, where: str, path: Path) -> str | None:
    sha = raw.get(key)
    if sha is not None and not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
        raise ModelError(f"invalid manifest {path}: {where}.{key} must be 64 hex digits")
    return sha


def _ports(value: Any, where: str, path: Path) -> list[Port] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise _invalid(path, where, "a list of {name, dtype, shape} objects", value)
    return [_port(item, f"{where}[{i}]", path) for i, item in enumerate(value)]


def _port(item: Any, where: str, path: Path) -> Port:
    if not isinstance(item, dict):
        raise _invalid(path, where, "an object", item)
    for key in ("name", "dtype"):
        if not isinstance(item.get(key), str):
            raise _invalid(path, f"{where}.{key}", "a string", item.get(key))
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(_is_dim(d) for d in shape):
        raise ModelError(
            f"invalid manifest {path}: {where}.shape must be a list of sizes (ints >= 0) and "
            "dimension names (strings)"
        )
    doc = item.get("doc", "")
    if not isinstance(doc, str):
        raise _invalid(path, f"{where}.doc", "a string", doc)
    return {"name": item["name"], "dtype": item["dtype"], "shape": shape, "doc": doc}


def _is_dim(d: Any) -> bool:
    return d is None or isinstance(d, str) or (type(d) is int and d >= 0)


def _strings(value: Any, where: str, path: Path) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ModelError(f"invalid manifest {path}: {where} must be a list of strings")
    return value


def _cache_graphs(manifest: dict[str, Any]) -> set[str]:
    """The names of decoders' KV-cache graphs (a `decoder` section's prefill and decode_step): models of their
    own, but not what a build directory means when no model is named."""
    names: set[str] = set()
    models = manifest.get("models")
    for item in models if isinstance(models, list) else []:
        decoder = item.get("decoder") if isinstance(item, dict) else None
        if isinstance(decoder, dict):
            names |= {
                v
                for k, v in decoder.items()
                if k in ("prefill", "decode_step") and isinstance(v, str)
            }
    return names


def _pick(
    entries: list[ManifestEntry],
    model: str | None,
    path: Path,
    cache_graphs: set[str] = frozenset(),
) -> ManifestEntry:
    names = ", ".join(display(e.name) for e in entries)
    if model is None:
        main = [e for e in entries if e.name not in cache_graphs]
        if len(main) != 1:
            raise ModelError(
                f"{path} describes {len(main)} models ({', '.join(display(e.name) for e in main)}); "
                "choose one with model=NAME (--model NAME on the command line)"
            )
        return main[0]
    for entry in entries:
        if entry.name == model:
            return entry
    raise ModelError(f"no model {quoted(model)} in {path}; available: {names}")


# ------------------------------------------------------------------ graph agreement
def check_ports(resolved: Resolved, signature: Signature) -> None:
    """Refuse a manifest entry whose declared inputs/outputs disagree with the ONNX graph."""
    entry = resolved.entry
    if entry is None:
        return
    problems = _mismatches("input", entry.inputs, signature.inputs)
    problems += _mismatches("output", entry.outputs, signature.outputs)
    if problems:
        raise ModelError(
            f"{resolved.manifest_path}: model {quoted(entry.name)} does not match "
            f"{resolved.onnx_path}: " + "; ".join(problems)
        )


def _mismatches(kind: str, declared: list[Port] | None, graph: Sequence[TensorSpec]) -> list[str]:
    if declared is None:
        return []
    wanted = {port["name"]: port for port in declared}
    actual = {spec.name: spec for spec in graph}
    problems = [f"the ONNX graph has no {kind} {quoted(n)}" for n in wanted if n not in actual]
    problems += [
        f"the manifest does not list {kind} {quoted(n)}" for n in actual if n not in wanted
    ]
    for name in (n for n in wanted if n in actual):
        problems += _port_mismatches(f"{kind} {quoted(name)}", wanted[name], actual[name])
    return problems


def _port_mismatches(what: str, port: Port, spec: TensorSpec) -> list[str]:
    if port["dtype"] != spec.dtype:
        return [
            f"{what} is {display(port['dtype'])} in the manifest but {spec.dtype} in the ONNX graph"
        ]
    shape = port["shape"]
    if len(shape) != spec.rank:
        return [f"{what} has rank {len(shape)} in the manifest but {spec.rank} in the ONNX graph"]
    return [
        f"{what} dim {axis} is {want} in the manifest but {got} in the ONNX graph"
        for axis, (want, got) in enumerate(zip(shape, spec.shape, strict=True))
        if isinstance(want, int) and isinstance(got, int) and want != got
    ]
