"""Execution-provider selection: TensorRT only when asked, then CUDA, then CPU.

onnxruntime-gpu lists CUDA/TensorRT as *available* even on a machine without a GPU or without
the CUDA libraries; creating a session then silently falls back to CPU. We probe cheaply and
quietly first (load the provider library, ask the driver for devices) so that an explicit
request fails with a clear reason and ``"auto"`` falls back without log noise.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import onnxruntime as ort

from .errors import ProviderError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

ALIASES = {"cpu": CPU, "cuda": CUDA, "gpu": CUDA, "tensorrt": TENSORRT, "trt": TENSORRT}

ProviderRequest = str | Sequence[str]


@dataclass
class ProviderPlan:
    """Providers to pass to onnxruntime, and what must actually run."""

    providers: list[tuple[str, dict[str, str]]]
    required: str | None = None
    """Provider that must end up first in ``session.get_providers()`` (explicit requests)."""
    notes: list[str] = field(default_factory=list)
    """Why a preferred provider was skipped (``"auto"`` fallbacks on a machine with a GPU)."""
    cpu_only: str | None = None
    """Why ``"auto"`` runs on the CPU of a machine without a GPU: expected, so ``run`` keeps quiet
    about it and ``info`` says it."""


@functools.cache
def preload_cuda_libraries() -> bool:
    """Preload the CUDA/cuDNN libraries shipped as pip wheels (as a CUDA build of torch does).

    Uses ``onnxruntime.preload_dlls`` when available; silent and best-effort. Never imports torch.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return False
    # CUDA builds of torch depend on the ``nvidia-*`` wheels (namespace package ``nvidia``);
    # on Windows preload_dlls also looks into torch/lib. find_spec imports nothing.
    if importlib.util.find_spec("nvidia") is None and os.name != "nt":
        return False
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            preload()
    except Exception:
        return False
    return True


def _provider_library(name: str) -> str:
    stem = {CUDA: "cuda", TENSORRT: "tensorrt"}[name]
    capi = os.path.join(os.path.dirname(ort.__file__), "capi")
    filename = (
        f"onnxruntime_providers_{stem}.dll"
        if os.name == "nt"
        else f"libonnxruntime_providers_{stem}.so"
    )
    return os.path.join(capi, filename)


@functools.cache
def _gpu_problem(device_id: int) -> str | None:
    """Ask the NVIDIA driver whether ``device_id`` exists; None when it does."""
    try:
        libcuda = ctypes.CDLL("nvcuda.dll" if os.name == "nt" else "libcuda.so.1")
    except OSError:
        return "the NVIDIA driver (libcuda) is not installed or no GPU is present"
    rc = libcuda.cuInit(0)
    if rc != 0:
        return f"the NVIDIA driver failed to initialise (cuInit error {rc}); no usable GPU"
    count = ctypes.c_int(0)
    if libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value <= device_id:
        return f"CUDA device {device_id} not found ({count.value} device(s) visible)"
    return None


CPU_FALLBACK = "Use providers='auto' (--providers auto) to fall back to CPU."
"""What a refused explicit provider request advises, unless the graph cannot run on the CPU either."""


@functools.cache
def provider_problem(name: str, device_id: int = 0) -> str | None:
    """Why ``name`` cannot run here (None if it looks usable). Cached per process."""
    if name == CPU:
        return None
    if name not in ort.get_available_providers():
        return (
            f"{name} is not part of this onnxruntime build "
            f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu"
        )
    preload_cuda_libraries()
    library = _provider_library(name)
    if os.path.exists(library):
        try:
            ctypes.CDLL(library)
        except OSError as exc:
            return f"{name} cannot load its libraries: {exc}"
    return _gpu_problem(device_id)


def check_known(name: str) -> None:
    """Refuse a provider name that is neither an alias ('auto', 'cpu', 'cuda', ...) nor onnxruntime's (a typo)."""
    onnxruntime_names = {*ALIASES.values(), *ort.get_available_providers()}
    if name.lower() not in {"auto", *ALIASES} and name not in onnxruntime_names:
        raise ProviderError(
            f"unknown execution provider {name!r}; use 'auto', 'cpu', 'cuda', 'tensorrt' "
            f"or one of {', '.join(ort.get_available_providers())}"
        )


def resolve(
    request: ProviderRequest,
    *,
    device_id: int = 0,
    enable_cuda_graph: bool = False,
    provider_options: dict[str, dict[str, Any]] | None = None,
    fallback: str = CPU_FALLBACK,
) -> ProviderPlan:
    """Turn ``"auto" | "cpu" | "cuda" | "tensorrt"`` (or a list of names) into a provider plan; ``fallback`` is the
    advice a refused explicit request ends with."""
    extra = provider_options or {}

    def options(name: str) -> dict[str, str]:
        opts: dict[str, str] = {}
        if name in (CUDA, TENSORRT):
            opts["device_id"] = str(device_id)
        if name == CUDA and enable_cuda_graph:
            opts["enable_cuda_graph"] = "1"
        if name == TENSORRT and enable_cuda_graph:
            opts["trt_cuda_graph_enable"] = "1"
        opts.update({k: str(v) for k, v in extra.get(name, {}).items()})
        return opts

    if isinstance(request, str):
        key = request.lower()
        if key == "auto":
            problem = provider_problem(CUDA, device_id)
            if problem is None:
                return ProviderPlan([(CUDA, options(CUDA)), (CPU, options(CPU))])
            if _gpu_problem(device_id) is not None:  # no GPU here: the CPU is what was expected
                return ProviderPlan([(CPU, options(CPU))], cpu_only=f"using CPU: {problem}")
            return ProviderPlan([(CPU, options(CPU))], notes=[f"using CPU: {problem}"])
        names = [ALIASES.get(key, request)]
    else:
        names = [ALIASES.get(n.lower(), n) for n in request]
    if not names:
        raise ProviderError("empty provider list")
    for name in names:
        check_known(name)
    # Complete the chain: TensorRT -> CUDA -> CPU.
    chain = list(dict.fromkeys(names))
    if chain[0] == TENSORRT and CUDA not in chain:
        chain.append(CUDA)
    if CPU not in chain:
        chain.append(CPU)
    primary = chain[0]
    problem = provider_problem(primary, device_id)
    if problem is not None:
        raise ProviderError(
            f"{primary} was requested explicitly but is not usable: {problem}. {fallback}"
        )
    return ProviderPlan(
        [(n, options(n)) for n in chain], required=primary if primary != CPU else None
    )
