"""``Model``: load an exported ONNX model (file or build directory) and run it."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from . import providers as _providers
from ._files import sha256_of
from ._manifest import Resolved, check_ports, resolve
from ._onnx_scan import ModelScan, PortScan, check_external_data, scan_file
from .errors import DslcRuntimeError, InputError, ModelError, ProviderError, RunError
from .signature import (
    Signature,
    describe_values,
    display,
    dtype_from_onnx,
    dtype_from_ort,
    dtype_name,
    input_error,
    merge_spec,
    quoted,
)

_OPT_LEVELS = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}

# DLPack device types (dlpack.h): CPU, CUDA, CUDA pinned host memory.
_DL_CPU, _DL_CUDA, _DL_CUDA_HOST = 1, 2, 3

_Check = tuple[
    str, "np.dtype[Any] | None", int, tuple[tuple[int, int], ...], tuple[tuple[int, str], ...]
]


_ORT_PREFIX = re.compile(r"\[ONNXRuntimeError\] : \d+ : \w+ : ")
_ORT_OUT_OF_MEMORY = re.compile(r"allocate memory|bad.alloc|storage size overflowed")
# FATAL only: every onnxruntime error becomes an exception carrying its message, so logging
# it too would print it twice (raw, with C++ source locations).
_LOG_FATAL_ONLY = 4
_ORT_LOCATION = re.compile(r"(?:/[^\s:]*/)?[\w-]+\.(?:cc|h|cpp):\d+ ")
_CPP_FUNCTION = re.compile(r"[\w:<>,*&~ ]*::~?\w+\(")


def clean_ort_message(message: str) -> str:
    """First line of an onnxruntime error without its code prefix and C++ source locations."""
    text = _ORT_PREFIX.sub("", message.strip().splitlines()[0] if message.strip() else "")
    while (match := _ORT_LOCATION.search(text)) is not None:
        end = match.end()
        rest = text[end:]
        # Drop a following C++ function signature ``ret ns::f(args...)`` (balanced parens).
        if _CPP_FUNCTION.match(rest):
            paren = rest.index("(")
            depth, i = 0, paren
            for i in range(paren, len(rest)):
                depth += {"(": 1, ")": -1}.get(rest[i], 0)
                if depth == 0:
                    break
            end += i + 1
        text = (text[: match.start()] + text[end:].lstrip()).strip()
    return text


_BF16_FALLBACK = (
    "The graph computes in bfloat16, which onnxruntime's CPU provider has no kernels for: falling back to the CPU "
    "would not run it; load the build's float32 graph there (no variant), or its fp16 one "
    "(variant='fp16', --variant fp16)."
)


def _precision_hint(metadata: Mapping[str, str], message: str) -> str:
    """Why a graph of ``dslc build --precision bf16`` found no kernels, and what runs it."""
    if not needs_cuda(metadata) or "Could not find an implementation" not in message:
        return ""
    return (
        " (the graph computes in bfloat16, which onnxruntime's CPU provider has no kernels for: run it on the "
        "CUDA provider (providers='cuda', --providers cuda), or load the build's float32 or fp16 graph on the CPU: "
        "no variant, or variant='fp16' (--variant fp16))"
    )


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".", 1)[0] == "torch"


def _json_meta(metadata: Mapping[str, str], key: str, path: Path) -> Any:
    raw = metadata.get(key)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except RecursionError:
        raise ModelError(f"{path}: metadata {key!r} is JSON nested too deeply") from None
    except ValueError:
        raise ModelError(f"{path}: metadata {key!r} is not valid JSON") from None


def _string_list(value: Any, key: str, path: Path) -> list[str] | None:
    """Labels or tokens as strings; numbers are accepted (``[0, 1]``), containers are not."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str | int | float) for v in value):
        raise ModelError(f"{path}: {key} must be a JSON list of strings")
    return [str(v) for v in value]


def _declared(items: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(items, list):
        return {}
    return {str(d["name"]): d for d in items if isinstance(d, dict) and "name" in d}


_Port = tuple[str, str, Any]  # (name, dtype, shape) as the graph declares it


def _graph_signature(
    inputs: list[_Port], outputs: list[_Port], resolved: Resolved, metadata: Mapping[str, str]
) -> Signature:
    """Names, dtypes and shapes from the graph; docs and dim names from the manifest or metadata."""
    path, entry = resolved.onnx_path, resolved.entry
    decl_inputs = _declared(entry and entry.inputs) or _declared(
        _json_meta(metadata, "dslc.inputs", path)
    )
    decl_outputs = _declared(entry and entry.outputs) or _declared(
        _json_meta(metadata, "dslc.outputs", path)
    )
    return Signature(
        tuple(merge_spec(n, t, shape, decl_inputs.get(n)) for n, t, shape in inputs),
        tuple(merge_spec(n, t, shape, decl_outputs.get(n)) for n, t, shape in outputs),
        _max_sizes(_json_meta(metadata, "dslc.max_sizes", path), path),
    )


def _max_sizes(value: Any, path: Path) -> dict[str, int]:
    """``dslc.max_sizes``: dim name -> its largest size, a positive integer."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and type(v) is int and 1 <= v < 2**63 for k, v in value.items()
    ):
        raise ModelError(
            f"{path}: metadata 'dslc.max_sizes' must map dim names to positive integers"
        )
    return value


def _session_ports(session: ort.InferenceSession, path: Path) -> tuple[list[_Port], list[_Port]]:
    try:  # onnxruntime decodes names lazily, on attribute access
        return (
            [(i.name, dtype_from_ort(i.type), i.shape) for i in session.get_inputs()],
            [(o.name, dtype_from_ort(o.type), o.shape) for o in session.get_outputs()],
        )
    except UnicodeDecodeError:
        raise ModelError(
            f"{path}: an input or output name or dimension is not valid UTF-8 (corrupt file?)"
        ) from None


def _scanned_ports(scan: ModelScan) -> tuple[list[_Port], list[_Port]]:
    def port(p: PortScan) -> _Port:
        return p.name, dtype_from_onnx(p.elem_type), p.shape or ()

    return [port(p) for p in scan.inputs], [port(p) for p in scan.outputs]


def _string_lists(
    metadata: Mapping[str, str], resolved: Resolved
) -> tuple[list[str] | None, list[str] | None]:
    """The model's labels and vocabulary: from its metadata, else from its manifest entry."""
    path, entry = resolved.onnx_path, resolved.entry
    labels = _string_list(
        _json_meta(metadata, "dslc.labels", path) or (entry and entry.labels), "dslc.labels", path
    )
    vocab = _string_list(
        _json_meta(metadata, "dslc.vocab", path) or (entry and entry.vocab), "dslc.vocab", path
    )
    return labels, vocab


@dataclass(frozen=True)
class Description:
    """What the file and its manifest say of a model, read without onnxruntime (``describe``)."""

    path: Path
    signature: Signature
    metadata: dict[str, str]
    labels: list[str] | None
    vocab: list[str] | None
    variant: str | None

    @property
    def name(self) -> str:
        return self.metadata.get("dslc.model") or self.path.stem


def _open_file(
    path: str | os.PathLike[str], model: str | None, variant: str | None
) -> tuple[Resolved, ModelScan, dict[str, str]]:
    """The graph ``path`` leads to, checked before onnxruntime sees it (checksums, external data, precision)."""
    resolved = resolve(Path(path), model, variant)
    scan = scan_file(resolved.onnx_path)
    check_external_data(resolved.onnx_path, scan)
    metadata = dict(scan.metadata)
    _check_precision(resolved, variant, metadata)
    return resolved, scan, metadata


def describe(
    path: str | os.PathLike[str], *, model: str | None = None, variant: str | None = None
) -> Description:
    """The model ``Model.load(path, model=..., variant=...)`` would load, its checksums checked, without opening an
    onnxruntime session: for a graph this machine has no kernels for (bfloat16 on the CPU)."""
    resolved, scan, metadata = _open_file(path, model, variant)
    signature = _graph_signature(*_scanned_ports(scan), resolved, metadata)
    check_ports(resolved, signature)
    return Description(
        resolved.onnx_path, signature, metadata, *_string_lists(metadata, resolved), variant
    )


# a variant's dslc.precision metadata (int8 and float32 graphs have none)
_PRECISIONS = {"fp16": "float16", "bf16": "bfloat16"}


def _check_precision(resolved: Resolved, variant: str | None, metadata: Mapping[str, str]) -> None:
    """A graph found through a manifest computes in the type its entry says: not a float16 file as the float32 one."""
    if resolved.entry is None:
        return
    want, got = _PRECISIONS.get(variant or ""), metadata.get("dslc.precision")
    if got != want:
        listed = f"its {variant} graph" if variant else "its graph"
        raise ModelError(
            f"{resolved.manifest_path}: model {quoted(resolved.entry.name)}: {listed} {resolved.onnx_path.name} "
            f"computes in {got or 'float32'}, not {want or 'float32'} (the manifest names the wrong file)"
        )


def needs_cuda(metadata: Mapping[str, str]) -> bool:
    """A graph of ``dslc build --precision bf16``: onnxruntime has bfloat16 kernels on CUDA only."""
    return metadata.get("dslc.precision") == "bfloat16"


def _ort_error_types() -> tuple[type[BaseException], ...]:
    """What a session run raises: onnxruntime's pybind exception types, RuntimeError, MemoryError."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as state
    except ImportError:  # a layout change: the built-in types below still cover most failures
        return (RuntimeError, MemoryError)
    own = [t for t in vars(state).values() if isinstance(t, type) and issubclass(t, Exception)]
    return (*own, RuntimeError, MemoryError)


_ORT_ERRORS = _ort_error_types()


class Model:
    """A loaded ONNX model with a validated, numpy-friendly calling convention.

    Create with :meth:`Model.load`; call with keyword arguments or a dict of arrays::

        model = Model.load("build/", providers="auto")
        out = model(image=np.zeros((2, 1, 28, 28), np.float32))
        out["logits"].shape  # (2, 10)
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        *,
        path: Path,
        signature: Signature,
        metadata: dict[str, str],
        labels: list[str] | None = None,
        vocab: list[str] | None = None,
        manifest: dict[str, Any] | None = None,
        notes: list[str] | None = None,
        device_id: int = 0,
        cuda_graph: bool = False,
        cpu_only: str | None = None,
        variant: str | None = None,
    ) -> None:
        self._session = session
        self.path = path
        self.signature = signature
        self.metadata = metadata
        self.labels = labels
        self.vocab = vocab
        self.manifest = manifest
        self.notes = notes or []
        self.variant = variant
        """``"fp16"``, ``"bf16"`` or ``"int8"`` when loaded with ``variant=``; None for the float32 graph."""
        self.cpu_only = cpu_only
        """Why ``"auto"`` chose the CPU on a machine without a GPU (``info`` shows it)."""
        self.device_id = device_id
        self.providers: list[str] = list(session.get_providers())
        self._output_names = signature.output_names
        self._input_names = frozenset(signature.input_names)
        self._checks: list[_Check] = [
            (
                s.name,
                s.numpy_dtype,
                s.rank,
                tuple((i, d) for i, d in enumerate(s.shape) if isinstance(d, int)),
                tuple((i, d) for i, d in enumerate(s.shape) if isinstance(d, str)),
            )
            for s in signature.inputs
        ]
        inner = getattr(session, "_sess", None)
        # The pybind session skips InferenceSession.run's own Python-level re-validation
        # (we validated already); fall back to the public API if the layout ever changes.
        self._run_fn: Callable[..., list[Any]] = (
            inner.run if inner is not None and hasattr(inner, "run") else session.run
        )
        self._on_gpu = self.providers[0] in (_providers.CUDA, _providers.TENSORRT)
        self._cuda_graph = _CudaGraph(self) if cuda_graph else None
        self._fast_check = _never if cuda_graph else _compile_fast_check(signature)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        model: str | None = None,
        variant: str | None = None,
        providers: _providers.ProviderRequest = "auto",
        device_id: int = 0,
        cache_dir: str | os.PathLike[str] | None = None,
        enable_cuda_graph: bool = False,
        optimization: str = "all",
        intra_op_num_threads: int | None = None,
        inter_op_num_threads: int | None = None,
        provider_options: dict[str, dict[str, Any]] | None = None,
        session_options: ort.SessionOptions | None = None,
    ) -> Model:
        """Load ``path``: an ``.onnx`` file, a build directory with ``manifest.json``, or a manifest.

        Args:
            model: model name when the manifest lists several (e.g. ``"generator"``).
            variant: ``"fp16"``, ``"bf16"`` or ``"int8"``: the model's graph that ``dslc build --precision`` or
                ``--quantize`` wrote, found (and its sha256 checked) through the build's manifest.
            providers: ``"auto"`` (CUDA if really usable, else CPU), ``"cpu"``, ``"cuda"``,
                ``"tensorrt"`` (TensorRT -> CUDA -> CPU), or a list of onnxruntime provider
                names. Explicit requests raise :class:`ProviderError` instead of falling back.
            cache_dir: keep the optimized graph in ``cache_dir`` (keyed by the file's sha256,
                the providers and the onnxruntime version) to speed up later loads.
            enable_cuda_graph: capture the model as a CUDA graph (static shapes only, CUDA/TRT).
            optimization: graph optimization level: ``all`` (default), ``extended``, ``basic``,
                ``none``.
        """
        resolved, scan, metadata = _open_file(path, model, variant)
        onnx_path = resolved.onnx_path

        fallback = _providers.CPU_FALLBACK if not needs_cuda(metadata) else _BF16_FALLBACK
        plan = _providers.resolve(
            providers,
            device_id=device_id,
            enable_cuda_graph=enable_cuda_graph,
            provider_options=provider_options,
            fallback=fallback,
        )
        if optimization not in _OPT_LEVELS:
            raise ValueError(f"optimization must be one of {', '.join(_OPT_LEVELS)}")
        options = session_options or ort.SessionOptions()
        options.graph_optimization_level = _OPT_LEVELS[optimization]
        if session_options is None:
            options.log_severity_level = _LOG_FATAL_ONLY
        if intra_op_num_threads is not None:
            options.intra_op_num_threads = intra_op_num_threads
        if inter_op_num_threads is not None:
            options.inter_op_num_threads = inter_op_num_threads

        source, pending = onnx_path, None
        if cache_dir is not None and not scan.external:
            source, pending = _cached_source(
                onnx_path, Path(cache_dir), plan, optimization, options
            )

        try:
            session = ort.InferenceSession(
                _session_source(Path(source), scan.external),
                sess_options=options,
                providers=[name for name, _ in plan.providers],
                provider_options=[opts for _, opts in plan.providers],
            )
        except Exception as exc:  # onnxruntime raises pybind exception types
            message = clean_ort_message(str(exc)) or type(exc).__name__
            raise ModelError(
                f"onnxruntime cannot load {onnx_path}: {message}{_precision_hint(metadata, message)}"
            ) from None
        if pending is not None:
            _finish_cache(*pending)

        active = session.get_providers()
        if plan.required is not None and active[0] != plan.required:
            raise ProviderError(
                f"{plan.required} was requested but onnxruntime created the session with "
                f"{', '.join(active)} (the provider failed to initialise; check the CUDA/cuDNN "
                f"installation). {fallback}"
            )
        notes = list(plan.notes)
        wanted = plan.providers[0][0]
        if wanted != active[0]:
            notes.append(f"{wanted} failed to initialise; running on {active[0]}")

        signature = _graph_signature(*_session_ports(session, onnx_path), resolved, metadata)
        check_ports(resolved, signature)
        labels, vocab = _string_lists(metadata, resolved)
        if enable_cuda_graph and active[0] not in (_providers.CUDA, _providers.TENSORRT):
            raise ProviderError("enable_cuda_graph=True needs the CUDA or TensorRT provider")
        if enable_cuda_graph:
            dynamic = [str(s) for s in (*signature.inputs, *signature.outputs) if not s.is_static]
            if dynamic:
                raise ModelError(
                    "CUDA graphs need static shapes; these tensors have symbolic dims: "
                    + ", ".join(dynamic)
                )
        return cls(
            session,
            path=onnx_path,
            signature=signature,
            metadata=metadata,
            labels=labels,
            vocab=vocab,
            manifest=resolved.manifest,
            notes=notes,
            device_id=device_id,
            cuda_graph=enable_cuda_graph,
            cpu_only=plan.cpu_only,
            variant=variant,
        )

    # --------------------------------------------------------------- properties
    @property
    def name(self) -> str:
        return self.metadata.get("dslc.model") or self.path.stem

    @property
    def provider(self) -> str:
        """The execution provider that actually runs the model (first of session.get_providers())."""
        return self.providers[0]

    @property
    def session(self) -> ort.InferenceSession:
        """The underlying onnxruntime session (for advanced use)."""
        return self._session

    @property
    def input_names(self) -> list[str]:
        return self.signature.input_names

    @property
    def output_names(self) -> list[str]:
        return list(self._output_names)

    def __repr__(self) -> str:
        variant = f" ({self.variant})" if self.variant else ""
        return f"<dslc_runtime.Model {self.name!r}{variant} {self.signature} on {self.provider}>"

    # ------------------------------------------------------------------ running
    def __call__(self, **inputs: Any) -> dict[str, Any]:
        return self.run(inputs)

    def run(self, inputs: Mapping[str, Any] | None = None, /, **kwargs: Any) -> dict[str, Any]:
        """Run the model; ``inputs`` maps input names to arrays. Returns ``{output: array}``.

        numpy arrays (and nested lists / scalars, converted to the declared dtype) run through
        the plain session. Objects supporting DLPack (torch tensors, ...) are accepted too: on
        CPU they are viewed with ``np.from_dlpack`` and, for torch inputs, outputs come back as
        torch tensors; device-resident (CUDA) tensors go through IOBinding without host copies
        and outputs stay on the device.
        """
        feeds: Mapping[str, Any] = inputs if not kwargs else {**(inputs or {}), **kwargs}
        try:  # free in CPython 3.11+ unless something is raised
            if type(feeds) is dict and self._fast_check(feeds):
                names = self._output_names
                return dict(zip(names, self._run_fn(names, feeds, None), strict=True))
            return self._run_checked(feeds)
        except DslcRuntimeError:
            raise
        except _ORT_ERRORS as exc:
            raise self._run_error(exc, feeds) from None

    def _run_error(self, exc: BaseException, feeds: Mapping[str, Any]) -> RunError:
        """onnxruntime's failure as a :class:`RunError` naming the model and the input shapes."""
        if isinstance(exc, MemoryError):
            reason = "out of memory"
        else:
            reason = clean_ort_message(str(exc)) or type(exc).__name__
            if _ORT_OUT_OF_MEMORY.search(reason):
                reason += " (not enough memory for its tensors: try smaller inputs or batches)"
        return RunError(
            f"onnxruntime failed to run {quoted(self.name)} ({self.path}) on "
            f"{describe_values(feeds) or 'no inputs'}: {reason}"
        )

    def _run_numpy(self, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
        """One plain session run of validated numpy inputs."""
        try:
            outputs = self._run_fn(self._output_names, feeds, None)
        except _ORT_ERRORS as exc:
            raise self._run_error(exc, feeds) from None
        return dict(zip(self._output_names, outputs, strict=True))

    def _run_checked(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        arrays, special = self._prepare(feeds)
        if self._cuda_graph is not None:
            return self._cuda_graph.run(arrays, special)
        if special is None:
            return self._run_numpy(arrays)
        if special == "device":
            return self._run_iobinding(arrays)
        outputs = self._run_fn(self._output_names, arrays, None)
        torch = sys.modules["torch"]
        return {n: torch.from_numpy(o) for n, o in zip(self._output_names, outputs, strict=True)}

    def validate(self, inputs: Mapping[str, Any]) -> None:
        """Check ``inputs`` against the signature; raise :class:`InputError` if they do not match."""
        self._prepare(inputs)

    def _prepare(self, feeds: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
        """Validate and normalise inputs.

        Returns ``(arrays, special)`` where special is None (plain numpy), ``"torch"`` (CPU torch
        tensors were given) or ``"device"`` (device-resident values need IOBinding).
        """
        if len(feeds) != len(self._checks) or not self._input_names.issuperset(feeds):
            raise self._name_error(feeds)
        arrays: dict[str, Any] = {}
        problems: list[str] = []
        symbols: dict[str, tuple[int, str]] = {}
        special: str | None = None
        for name, dtype, rank, fixed, syms in self._checks:
            x = feeds[name]
            if type(x) is np.ndarray:
                shape, got = x.shape, x.dtype
                if (
                    got != dtype
                    and dtype is not None
                    and not (dtype.kind == "O" and got.kind in "OUS")
                ):
                    problems.append(f"{display(name)}: dtype {got} but the model expects {dtype}")
            else:
                x, kind = self._convert(name, x, dtype)
                if kind is not None and special != "device":
                    special = kind
                shape = tuple(x.shape() if isinstance(x, ort.OrtValue) else x.shape)
                got_name = (
                    dtype_from_ort(x.data_type())
                    if isinstance(x, ort.OrtValue)
                    else dtype_name(x.dtype)
                )
                if dtype is not None and got_name != dtype_name(dtype) and dtype.kind != "O":
                    problems.append(
                        f"{display(name)}: dtype {got_name} but the model expects {dtype}"
                    )
            arrays[name] = x
            if len(shape) != rank:
                problems.append(
                    f"{display(name)}: rank {len(shape)} (shape {tuple(shape)}) but the model expects rank {rank}"
                )
                continue
            for i, size in fixed:
                if shape[i] != size:
                    problems.append(
                        f"{display(name)}: dim {i} is {shape[i]} but the model expects {size}"
                    )
            for i, sym in syms:
                seen = symbols.setdefault(sym, (shape[i], name))
                if seen[0] != shape[i]:
                    problems.append(
                        f"{display(name)}: dim {i} ({quoted(sym)}) is {shape[i]} but {display(seen[1])} has {quoted(sym)} = {seen[0]}"
                    )
        for sym, (size, name) in symbols.items():
            largest = self.signature.max_sizes.get(sym)
            if largest is not None and size > largest:
                problems.append(
                    f"{display(name)}: {quoted(sym)} is {size} but the model takes at most {largest}"
                )
        if problems:
            raise input_error(self.signature, problems, describe_values(feeds))
        return arrays, special

    def _convert(self, name: str, x: Any, dtype: np.dtype[Any] | None) -> tuple[Any, str | None]:
        if isinstance(x, ort.OrtValue):
            if x.device_name().lower() != "cpu" and not self._on_gpu:
                raise input_error(
                    self.signature,
                    [
                        f"{display(name)}: OrtValue on {x.device_name()} but the model runs on {self.provider}"
                    ],
                )
            return x, "device"  # OrtValues always go through IOBinding
        if hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__"):
            is_torch = _is_torch(x)
            if is_torch and getattr(x, "requires_grad", False):
                x = x.detach()
            device_type = int(x.__dlpack_device__()[0])
            if device_type in (_DL_CPU, _DL_CUDA_HOST):
                try:
                    return np.from_dlpack(x), ("torch" if is_torch else None)
                except (TypeError, BufferError, RuntimeError) as exc:  # e.g. bfloat16
                    raise input_error(
                        self.signature, [f"{display(name)}: cannot view as numpy: {exc}"]
                    ) from None
            if device_type == _DL_CUDA and self._on_gpu:
                return x, "device"
            raise input_error(
                self.signature,
                [
                    f"{display(name)}: tensor lives on DLPack device {device_type} but the model runs on "
                    f"{self.provider}; move it to the CPU first"
                ],
            )
        try:
            return np.asarray(x, dtype=dtype), None
        except (TypeError, ValueError) as exc:
            raise input_error(
                self.signature,
                [f"{display(name)}: cannot convert {type(x).__name__} to {dtype}: {exc}"],
            ) from None

    def _name_error(self, feeds: Mapping[str, Any]) -> InputError:
        problems = []
        unknown = [k for k in feeds if k not in self._input_names]
        missing = [n for n in self.signature.input_names if n not in feeds]
        if unknown:
            problems.append(f"unknown input(s): {', '.join(display(str(k)) for k in unknown)}")
        if missing:
            problems.append(f"missing input(s): {', '.join(map(display, missing))}")
        return input_error(
            self.signature, problems, describe_values({str(k): v for k, v in feeds.items()})
        )

    def _run_iobinding(self, arrays: Mapping[str, Any]) -> dict[str, Any]:
        """Run with device-resident inputs bound in place; outputs stay on the device."""
        binding = self._session.io_binding()
        torch_cuda = None
        for name, x in arrays.items():
            if isinstance(x, np.ndarray):
                binding.bind_cpu_input(name, np.ascontiguousarray(x))
            elif isinstance(x, ort.OrtValue):
                binding.bind_ortvalue_input(name, x)
            else:
                if _is_torch(x):
                    torch_cuda = sys.modules["torch"].cuda
                    x = x.contiguous()
                binding.bind_ortvalue_input(name, ort.OrtValue.from_dlpack(x))
        device = "cuda" if self._on_gpu else "cpu"
        for name in self._output_names:
            binding.bind_output(name, device, self.device_id)
        if torch_cuda is not None:
            # The producer's stream must be done before onnxruntime's stream reads the data.
            torch_cuda.current_stream(self.device_id).synchronize()
        binding.synchronize_inputs()
        self._session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        values = binding.get_outputs()
        if torch_cuda is not None:
            from_dlpack = sys.modules["torch"].from_dlpack
            return {n: from_dlpack(v) for n, v in zip(self._output_names, values, strict=True)}
        return dict(zip(self._output_names, values, strict=True))

    # ----------------------------------------------------------------- batching
    def run_batched(self, inputs: Mapping[str, Any], batch_size: int) -> dict[str, np.ndarray]:
        """Run ``inputs`` in chunks of ``batch_size`` along axis 0 and concatenate the outputs.

        Inputs whose leading dim is symbolic (e.g. ``batch``) are split; others are passed whole
        to every chunk. Outputs with a symbolic leading dim are concatenated; outputs with a
        fixed leading dim are taken from the first chunk.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        arrays, special = self._prepare(inputs)
        if special is not None:
            raise InputError(
                "run_batched takes numpy arrays; convert tensors with np.asarray first"
            )
        batched = [
            s.name for s in self.signature.inputs if s.rank > 0 and not isinstance(s.shape[0], int)
        ]
        if not batched:
            raise input_error(
                self.signature, ["run_batched: no input has a dynamic batch (leading) dim"]
            )
        total = arrays[batched[0]].shape[0]
        if any(arrays[n].shape[0] != total for n in batched):
            raise input_error(
                self.signature,
                ["run_batched: batched inputs disagree on the batch size"],
                describe_values(arrays),
            )
        concat = {
            s.name for s in self.signature.outputs if s.rank > 0 and not isinstance(s.shape[0], int)
        }
        chunks: list[dict[str, Any]] = []
        for start in range(0, max(total, 1), batch_size):
            feed = {
                n: (a[start : start + batch_size] if n in batched else a) for n, a in arrays.items()
            }
            chunks.append(self._run_numpy(feed))
        return {
            n: np.concatenate([c[n] for c in chunks], axis=0) if n in concat else chunks[0][n]
            for n in self._output_names
        }


def _never(feeds: Mapping[str, Any]) -> bool:
    return False


def _compile_fast_check(signature: Signature) -> Callable[[Mapping[str, Any]], bool]:
    """Generate a straight-line check accepting only inputs that certainly match the signature.

    It sees plain C-level numpy arrays with the exact dtype objects, ranks, fixed dims and
    consistent symbolic dims; anything else (lists, tensors, mismatches) returns False and goes
    through the general path, which converts or explains. This keeps the per-call overhead of
    ``Model.run`` within a few percent of a bare ``InferenceSession.run``.
    """
    specs = signature.inputs
    if any(s.numpy_dtype is None or s.numpy_dtype.kind == "O" for s in specs):
        return _never
    env: dict[str, Any] = {"ndarray": np.ndarray}
    lines = ["def check(feeds):", f"    if len(feeds) != {len(specs)}:", "        return False"]
    lines.append("    try:")
    lines += [f"        x{i} = feeds[{s.name!r}]" for i, s in enumerate(specs)]
    lines += ["    except KeyError:", "        return False"]
    conditions: list[str] = []
    first_seen: dict[str, str] = {}
    for i, spec in enumerate(specs):
        env[f"dt{i}"] = spec.numpy_dtype
        conditions.append(f"type(x{i}) is not ndarray")
        conditions.append(f"x{i}.dtype is not dt{i}")
    lines.append(f"    if {' or '.join(conditions) or 'False'}:")
    lines.append("        return False")
    conditions = []
    for i, spec in enumerate(specs):
        lines.append(f"    s{i} = x{i}.shape")
        conditions.append(f"len(s{i}) != {spec.rank}")
    for i, spec in enumerate(specs):
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int):
                conditions.append(f"s{i}[{axis}] != {dim}")
            elif isinstance(dim, str):
                here = f"s{i}[{axis}]"
                if dim in first_seen:
                    conditions.append(f"{here} != {first_seen[dim]}")
                else:
                    first_seen[dim] = here
                    if dim in signature.max_sizes:
                        conditions.append(f"{here} > {int(signature.max_sizes[dim])}")
    lines.append(f"    if {' or '.join(conditions) or 'False'}:")
    lines.append("        return False")
    lines.append("    return True")
    exec("\n".join(lines), env)  # generated from names via repr() and ints only
    check: Callable[[Mapping[str, Any]], bool] = env["check"]
    return check


class _CudaGraph:
    """Fixed-address input/output buffers for CUDA-graph replay (static shapes only)."""

    def __init__(self, model: Model) -> None:
        sig, dev = model.signature, model.device_id
        self.model = model
        self.inputs = {
            s.name: ort.OrtValue.ortvalue_from_shape_and_type(
                list(s.shape), s.numpy_dtype, "cuda", dev
            )
            for s in sig.inputs
        }
        self.outputs = {
            s.name: ort.OrtValue.ortvalue_from_shape_and_type(
                list(s.shape), s.numpy_dtype, "cuda", dev
            )
            for s in sig.outputs
        }
        self.binding = model.session.io_binding()
        for name, value in self.inputs.items():
            self.binding.bind_ortvalue_input(name, value)
        for name, value in self.outputs.items():
            self.binding.bind_ortvalue_output(name, value)

    def run(self, arrays: Mapping[str, Any], special: str | None) -> dict[str, Any]:
        torch = sys.modules.get("torch") if special is not None else None
        for name, x in arrays.items():
            if isinstance(x, np.ndarray):
                self.inputs[name].update_inplace(np.ascontiguousarray(x))
            elif torch is not None and _is_torch(x):
                torch.from_dlpack(self.inputs[name]).copy_(x)
            else:
                raise InputError(
                    f"{display(name)}: CUDA-graph models take numpy arrays or torch tensors"
                )
        if torch is not None:
            torch.cuda.current_stream(self.model.device_id).synchronize()
        self.model.session.run_with_iobinding(self.binding)
        self.binding.synchronize_outputs()
        if torch is not None:
            return {n: torch.from_dlpack(v).clone() for n, v in self.outputs.items()}
        return {n: v.numpy() for n, v in self.outputs.items()}


def _cached_source(
    onnx_path: Path,
    cache_dir: Path,
    plan: _providers.ProviderPlan,
    optimization: str,
    options: ort.SessionOptions,
) -> tuple[Path, tuple[Path, Path] | None]:
    """Return the path to load and, when the cache is cold, (temp, final) to publish afterwards."""
    key_src = json.dumps(
        [
            sha256_of(onnx_path, "model file", ModelError),
            ort.__version__,
            platform.machine(),
            optimization,
            [name for name, _ in plan.providers],
        ]
    )
    key = hashlib.sha256(key_src.encode()).hexdigest()[:32]
    final = cache_dir / f"{onnx_path.stem}-{key}.onnx"
    if final.is_file():
        # Already optimized offline: skip re-optimizing for a faster load.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return final, None
    cache_dir.mkdir(parents=True, exist_ok=True)
    temp = cache_dir / f".{final.stem}.{os.getpid()}.tmp.onnx"
    options.optimized_model_filepath = str(temp)
    return onnx_path, (temp, final)


def _finish_cache(temp: Path, final: Path) -> None:
    try:
        if temp.is_file():
            os.replace(temp, final)
    except OSError:
        temp.unlink(missing_ok=True)


def _session_source(path: Path, external: bool) -> str | bytes:
    """What onnxruntime opens: the path, or the file's bytes where the path is not UTF-8 (a name with bytes
    that are not, which Python keeps as surrogates and onnxruntime's binding refuses)."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        if external:
            raise ModelError(
                f"{text!r} keeps its weights in external data, which onnxruntime finds only through a UTF-8 "
                "path; rename the folder or file"
            ) from None
        return path.read_bytes()
    return text
