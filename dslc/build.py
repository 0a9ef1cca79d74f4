"""`dslc build`: check -> emit PyTorch -> export ONNX -> verify, then publish the files.

Everything is produced in a staging folder inside the output directory and moved into place only
after every ONNX graph has been verified, so a failed build leaves no half-written output.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from dslc import __version__, ir
from dslc.checker import check_file
from dslc.emit_torch import emit_program
from dslc.errors import error
from dslc.fileio import write_atomic

EXPORT_HINT = "`dslc build --no-onnx` writes the PyTorch code alone"


@dataclass
class ModelReport:
    name: str
    onnx: str
    params: int
    nodes: int
    max_abs_diff: float | None
    verified: bool
    runs: list[dict[str, int]] = field(default_factory=list)
    checksums: dict[str, str] = field(default_factory=dict)  # onnx_files.checksums: the runtime tells damaged copies
    variants: list[VariantReport] = field(default_factory=list)  # `--precision fp16`, `--quantize int8`: more graphs
    preprocess: dict[str, Any] = field(default_factory=dict)  # input -> the transform prepended to its graph
    decoder: Any = None  # a decoder's KV-cache graphs (dslc.decoding.DecoderReport)
    notes: list[str] = field(default_factory=list)  # what the build left out, and why

    def summary(self, folder: Path) -> str:
        """The line `dslc build` and `dslc train` print for the graph."""
        line = f"wrote {folder / self.onnx}: {self.nodes} nodes, {self.params:,} parameters"
        if not self.verified:
            return line + "; not verified (--no-verify)"
        sizes = "; ".join(", ".join(f"{k}={v}" for k, v in run.items()) or "fixed shapes" for run in self.runs)
        return line + f"; onnxruntime matches PyTorch (max abs diff {self.max_abs_diff:.1e} at {sizes})"


@dataclass
class VariantReport:
    """A graph written beside the float32 one in another precision, verified against PyTorch at its tolerance."""

    kind: str  # fp16 | bf16 | int8
    onnx: str
    checksums: dict[str, str]
    bytes: int
    fp32_bytes: int
    max_abs_diff: float
    tolerance: float  # relative to the output's largest magnitude (at least 1), as verification states it
    verified_by: tuple[str, ...] = ("onnxruntime",)  # the engines that ran it, as messages name them (dslc.verify)
    notes: list[str] = field(default_factory=list)  # what stays as it was (recurrent layers of a 16-bit graph)

    def summary(self, folder: Path) -> str:
        """The line `dslc build` and `dslc train` print for it."""
        return (
            f"wrote {folder / self.onnx}: {self.kind}, {self.bytes:,} bytes ({self.bytes / self.fp32_bytes:.2f}x the "
            f"float32 file's {self.fp32_bytes:,}); {' and '.join(self.verified_by)} "
            f"{'matches' if len(self.verified_by) == 1 else 'match'} PyTorch within {self.tolerance:g} x "
            f"max(1, largest |output|) (max abs diff {self.max_abs_diff:.1e})" + "".join(f"; {n}" for n in self.notes)
        )


@dataclass
class BuildResult:
    program: ir.ProgramIR
    python_path: Path
    models: list[ModelReport]


def load_generated(path: Path) -> types.ModuleType:
    """Import a generated file under a private module name."""
    name = f"dslc_generated_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def build(
    spec: str | Path,
    out_dir: str | Path,
    overrides: list[str] | None = None,
    export_onnx: bool = True,
    verify_onnx: bool = True,
    seed: int = 0,
    state_dicts: dict[str, Any] | None = None,
    labels: list[str] | None = None,
    vocab: list[str] | None = None,
    train_overrides: dict[str, Any] | None = None,
    data_dir: str | Path | None = None,
    variants: tuple[str, ...] = (),
    preprocess: dict[str, Any] | None = None,
) -> BuildResult:
    """Compile, export and verify. `labels` (class names) go into the metadata of every model with
    an output over that many classes; `vocab` (tokens by id) into every model's metadata. The train
    section takes `train_overrides` (`--set epochs=3`) and finds its data files in `data_dir`. Each of `variants`
    (VARIANTS: "fp16", "int8") also writes `<model>.<variant>.onnx`, verified at the variant's tolerance. `preprocess`
    (dataset field -> transform, dslc.training.preprocess) is prepended to the graph of each model it feeds."""
    program = check_file(spec, overrides, train_overrides, data_dir)
    if labels:
        program.labels = {m.spec_name: list(labels) for m in program.exported if _classifies(m, len(labels))}
    program.vocab = list(vocab) if vocab else None
    out = Path(out_dir)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    stem = program.module_name
    staging = Path(tempfile.mkdtemp(prefix=".dslc-build-", dir=out))
    published = False
    try:
        python_path = staging / f"{stem}.py"
        python_path.write_text(emit_program(program), encoding="utf-8")
        if program.train is not None:  # the training script: `python DIR/<stem>_train.py` trains as `dslc train` does
            _stage_train_script(program, staging, list(overrides or []), train_overrides, out)
        reports = []
        if export_onnx:
            reports = _export_all(
                program, python_path, staging, verify_onnx, seed, state_dicts or {}, variants, preprocess or {}
            )
        manifest = _manifest(program, stem, reports)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        earlier = _graph_files(out / "manifest.json")
        _publish(staging, out)
        published = True
        if export_onnx:  # --no-onnx rewrites the code and leaves the graphs alone
            _remove_stale(out, earlier - _graph_files(out / "manifest.json"))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not published:  # a failed first build leaves no empty folder behind
            with contextlib.suppress(OSError):
                out.rmdir()
    return BuildResult(program, out / f"{stem}.py", reports)


def _graph_files(manifest_path: Path) -> set[str]:
    """The ONNX and weights files a build's manifest lists (the graphs of its models and their variants): plain
    file names only, whatever an edited manifest says."""
    try:
        models = json.loads(manifest_path.read_text(encoding="utf-8")).get("models", [])
    except (OSError, ValueError, AttributeError):
        return set()
    entries = [m for m in models if isinstance(m, dict)] if isinstance(models, list) else []
    entries += [m[kind] for m in entries for kind in VARIANTS if isinstance(m.get(kind), dict)]
    names = {e.get(key) for e in entries for key in ("onnx", "onnx_data")}
    return {n for n in names if isinstance(n, str) and n == Path(n).name and n.endswith((".onnx", ".onnx.data"))}


def _remove_stale(out: Path, names: set[str]) -> None:
    """Graphs an earlier build into `out` wrote and this one did not (a variant not asked for again): a build folder
    holds one build."""
    for name in names:
        path = out / name
        if path.is_file() and not path.is_symlink():
            path.unlink()


def _stage_train_script(
    program: ir.ProgramIR, staging: Path, overrides: list[str], train_overrides: dict[str, Any] | None, out: Path
) -> None:
    """`<stem>_train.py` and the spec's copy `<stem>.model` it trains and exports from (not when that copy would be
    the spec itself: a build into the spec's own folder)."""
    from dslc.emit_train import emit_train_script

    stem = program.module_name
    script = emit_train_script(program, overrides, train_overrides)
    (staging / f"{stem}_train.py").write_text(script, encoding="utf-8")
    copy = out / f"{stem}.model"
    if not (copy.exists() and copy.samefile(program.path)):
        (staging / copy.name).write_text(program.source, encoding="utf-8")


def _publish(staging: Path, out: Path) -> None:
    """Move the built files into `out`, the manifest last; refuse first if something is in the way. Only files: the
    `__pycache__` that verification's import may leave is not an output."""
    items = sorted((p for p in staging.iterdir() if p.is_file()), key=lambda item: item.name == "manifest.json")
    for item in items:
        target = out / item.name
        if target.is_dir() and not target.is_symlink():
            raise error(
                None, f"cannot write {target}: a folder of that name is in the way", "remove it or choose another -o"
            )
    for item in items:
        os.replace(item, out / item.name)


def _export_all(
    program, python_path, staging, verify_onnx, seed, state_dicts, variants=(), preprocess=None
) -> list[ModelReport]:
    from dslc.verify import out_of_memory

    generated = load_generated(python_path)
    reports = []
    for module in program.exported:
        try:
            reports.append(
                _export_one(program, module, generated, staging, verify_onnx, seed, state_dicts, variants, preprocess)
            )
        except (MemoryError, RuntimeError) as exc:  # onnx's and onnxruntime's std::bad_alloc; PyTorch's RuntimeError
            if isinstance(exc, RuntimeError) and not out_of_memory(exc):
                raise
            raise error(
                module.loc,
                f"building '{module.spec_name}' ran out of memory: {module.param_count:,} parameters are "
                f"{module.param_count * 4 / 1e9:.1f} GB of float32, and a build holds about 5.5 copies of them",
                "build on a machine with more memory, or make the model smaller",
            ) from None
    return reports


def _export_one(
    program, module, generated, staging, verify_onnx, seed, state_dicts, variants, preprocess
) -> ModelReport:
    """One model's verified ONNX graph, its variants and its KV-cache graphs, in `staging`."""
    import torch

    from dslc.export_onnx import ExportError, export
    from dslc.onnx_files import checksums
    from dslc.training import preprocess as pre
    from dslc.verify import verify

    torch.manual_seed(seed)
    model = generated.MODELS[module.spec_name]()
    if module.spec_name in state_dicts:
        model.load_state_dict(state_dicts[module.spec_name])
    model.eval()
    onnx_path = staging / f"{module.spec_name}.onnx"
    try:
        exported = export(model, program, module, onnx_path)
    except ExportError as exc:  # anything else is a bug in a lowering: the internal-error report
        raise error(module.loc, f"ONNX export of '{module.spec_name}' failed: {exc}", EXPORT_HINT) from exc
    in_graph = module.param_count - sum(exported.unused.values())
    report = ModelReport(module.spec_name, onnx_path.name, in_graph, exported.nodes, None, False)
    if exported.unused:
        report.notes.append(_uncalled_note(exported.unused))
    report.preprocess = pre.model_inputs(module, preprocess or {})
    if report.preprocess:  # raw inputs: the graph and the model it is verified against both transform them
        report.nodes = pre.prepend(onnx_path, report.preprocess)
        model = pre.Raw(model, module, report.preprocess)
    report.checksums = checksums(onnx_path)
    if verify_onnx:
        checked = verify(model, module, onnx_path, program=program)
        if not checked.passed:
            raise error(module.loc, f"ONNX verification of '{module.spec_name}' failed: " + "; ".join(checked.problems))
        report.max_abs_diff, report.verified, report.runs = checked.max_abs_diff, True, checked.runs
    report.variants = [_write_variant(VARIANTS[kind], model, program, module, onnx_path) for kind in variants]
    if verify_onnx and not report.preprocess:
        _export_decoder(model, program, module, staging, report)
    return report


def _uncalled_note(unused: dict[str, int]) -> str:
    layers = [f"{layer} ({count:,} parameters)" for layer, count in unused.items()]
    shown = ", ".join(layers[:3]) + (f" and {len(layers) - 3} more" if len(layers) > 3 else "")
    one = len(layers) == 1
    return (
        f"{shown} {'reaches' if one else 'reach'} no output: {'it stays' if one else 'they stay'} in the PyTorch "
        "module and its state dict, not in the graph"
    )


def _export_decoder(model, program: ir.ProgramIR, module: ir.ModuleIR, staging: Path, report: ModelReport):
    """A decoder's prefill and decode_step graphs, verified token by token (dslc.decoding); None for other models.
    Graphs that do not reproduce the model (a layer mixes positions, a convolution over time say) are not written:
    the model's own graph generates, recomputing the prefix per token."""
    from dslc.decoding import VerifyError, export_decoder

    try:
        report.decoder = export_decoder(model, program, module, staging)
    except VerifyError as exc:
        report.notes.append(f"no KV-cache graphs for '{module.spec_name}': {exc}")


@dataclass(frozen=True)
class Variant:
    kind: str
    description: str  # as the build's output and --help say it
    tolerance: float  # verification's, relative to the output's largest magnitude (at least 1)
    write: Callable[[Path, Path], list[str]]  # (the verified float32 graph, the variant's path) -> notes
    hint: str  # what to do when the variant is not within its tolerance
    engines: tuple[str, ...] = ("onnxruntime",)  # what runs it for verification (keys of dslc.verify.ENGINES)


def _write_int8(source: Path, target: Path) -> list[str]:
    """onnxruntime's dynamic quantization of the matrix products and embedding tables (8-bit weights, activations
    quantized per call). Convolutions stay float32: quantized (ConvInteger) they were 10x slower (resnet18 at 32x32,
    batch 1: 13.4 ms vs 1.24 ms) for a quarter of their size."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from dslc.onnx_files import align_data_mode, data_path

    logging.disable(logging.WARNING)  # onnxruntime's advice to pre-process, printed on every call
    try:
        quantize_dynamic(
            source,
            target,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm", "Gather"],
            use_external_data_format=data_path(source).exists(),  # a quarter of a large model can still be large
        )
        align_data_mode(target)
    finally:
        logging.disable(logging.NOTSET)
    if not _has_int8_weights(target):
        return [f"{NOTHING_QUANTIZED}: no matrix product or embedding holds weights (convolutions stay float32)"]
    return []


NOTHING_QUANTIZED = "nothing to quantize"  # the int8 graph is the float32 one (unet: only convolutions)


def _has_int8_weights(path: Path) -> bool:
    import onnx

    model = onnx.load(path, load_external_data=False)
    return any(t.data_type == onnx.TensorProto.INT8 for t in model.graph.initializer)


def _write_half(source: Path, target: Path, precision: str) -> list[str]:
    """The graph at `source` computing in `precision` (a key of dslc.onnx_precision.HALVES)."""
    import onnx

    from dslc.onnx_files import save
    from dslc.onnx_precision import HALVES, float32_layers, to_half

    model = onnx.load(source)
    save(to_half(model, HALVES[precision]), target)  # in the staging folder, published whole
    recurrent = float32_layers(model)
    if not recurrent:
        return []
    note = f"its recurrent layers ({', '.join(recurrent)}) compute in float32, having no 16-bit kernels"
    return [note + ("; the Scan's weights stay float32 in the file" if "Scan" in recurrent else "")]


VARIANTS = {
    "fp16": Variant(
        "fp16",
        "float16 weights and compute, float32 inputs and outputs",
        1e-2,  # float16 keeps 11 significant bits: 5e-4 a rounding, compounded over the layers
        partial(_write_half, precision="float16"),
        "drop --precision: this model loses too much in float16",
        # onnxruntime's CPU provider runs float16 ops it has no kernel for in float32, rounding only between some:
        # the reference implementation rounds every op's output, as a GPU does
        engines=("onnxruntime", "reference"),
    ),
    "bf16": Variant(
        "bf16",
        "bfloat16 weights and compute, float32 inputs and outputs",
        0.05,  # bfloat16 keeps 8 significant bits, as int8 does: 4e-3 a rounding, compounded over the layers
        partial(_write_half, precision="bfloat16"),
        "drop --precision or use fp16: this model loses too much in bfloat16",
        # onnxruntime has bfloat16 kernels on CUDA only; the reference implementation runs any type, op by op
        engines=("reference",),
    ),
    "int8": Variant(
        "int8",
        "8-bit weights (dynamic quantization)",
        0.05,  # 8-bit weights and activations
        _write_int8,
        "drop --quantize: this model loses too much at 8 bits",
    ),
}


def _write_variant(variant: Variant, model, program: ir.ProgramIR, module: ir.ModuleIR, onnx_path: Path):
    """`<model>.<kind>.onnx` from the verified float32 graph, verified against PyTorch like it at the variant's
    tolerance."""
    from dslc.onnx_files import checksums, file_bytes
    from dslc.onnx_precision import PrecisionError
    from dslc.verify import ENGINES, verify_in

    path = onnx_path.with_name(f"{module.spec_name}.{variant.kind}.onnx")
    try:
        notes = variant.write(onnx_path, path)
    except PrecisionError as exc:
        raise error(module.loc, f"no {variant.kind} graph of '{module.spec_name}': {exc}", variant.hint) from None
    checks = verify_in(variant.engines, model, module, path, tolerance=variant.tolerance, program=program)
    for engine, checked in checks.items():
        if not checked.passed:
            raise error(
                module.loc,
                f"the {variant.kind} graph of '{module.spec_name}' is not within {variant.tolerance:.0%} of PyTorch "
                f"in {ENGINES[engine].name}: " + "; ".join(checked.problems),
                variant.hint,
            )
    size, fp32_size = file_bytes(path), file_bytes(onnx_path)
    # a tiny model: the Casts (or quantization scales) outweigh what its weights save
    if size >= fp32_size and not any(n.startswith(NOTHING_QUANTIZED) for n in notes):
        notes = [
            *notes,
            f"not smaller than the float32 file: with {module.param_count:,} parameters, the nodes the conversion adds "
            "outweigh what the weights save",
        ]
    return VariantReport(
        variant.kind,
        path.name,
        checksums(path),
        size,
        fp32_size,
        max(checked.max_abs_diff for checked in checks.values()),
        variant.tolerance,
        tuple(ENGINES[engine].name for engine in variant.engines),
        notes,
    )


def _classifies(module: ir.ModuleIR, classes: int) -> bool:
    return any(p.type.is_float and p.type.rank >= 1 and p.type.shape[-1] == classes for p in module.outputs)


def _manifest(program: ir.ProgramIR, stem: str, reports: list[ModelReport]) -> dict[str, Any]:
    from dslc.export_onnx import port_json

    by_name = {r.name: r for r in reports}
    models = []
    for module in program.exported:
        entry: dict[str, Any] = {
            "name": module.spec_name,
            "class": module.class_name,
            "params": module.param_count,
            "inputs": [port_json(p) for p in module.inputs],
            "outputs": [port_json(p) for p in module.outputs],
        }
        report = by_name.get(module.spec_name)
        if report:
            entry.update(
                onnx=report.onnx,
                **report.checksums,
                nodes=report.nodes,
                verified=report.verified,
                max_abs_diff=report.max_abs_diff,
            )
            for v in report.variants:
                entry[v.kind] = {"onnx": v.onnx, **v.checksums, "max_abs_diff": v.max_abs_diff}
        if report and report.preprocess:
            entry["preprocess"] = report.preprocess
        if program.labels.get(module.spec_name):
            entry["labels"] = program.labels[module.spec_name]
        if program.vocab:
            entry["vocab"] = program.vocab
        models.append(entry)
        if report and report.decoder:  # the KV-cache graphs: models of their own, named by the decoder's entry
            entry["decoder"] = report.decoder.manifest()
            models += [report.decoder.prefill, report.decoder.decode_step]
    return {
        "dslc_version": __version__,
        "spec": Path(program.path).name,
        "spec_sha256": program.sha256,
        "python": f"{stem}.py",
        "models": models,
    }


def write_python(spec: str | Path, out_path: str | Path, overrides: list[str] | None = None) -> ir.ProgramIR:
    program = check_file(spec, overrides)
    write_atomic(out_path, emit_program(program))
    return program
