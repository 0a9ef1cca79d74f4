"""`dslc bench`: onnxruntime latency per provider, and torch eager on the same inputs when known."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


def bench_model(
    path: Path,
    model_name: str | None,
    providers: list[str],
    batch_sizes: list[int],
    iterations: int,
    variant: str | None = None,
) -> None:
    from dslc_runtime.cli import bench_cli, random_inputs
    from dslc_runtime.model import describe

    results = bench_cli(path, providers, batch_sizes, iterations, model=model_name, variant=variant)
    eager = _eager_model(path, model_name)
    if eager is None or not results:
        return
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    graph = describe(path, model=model_name, variant=variant)  # its inputs (a bf16 graph opens on CUDA only)
    label = "torch eager (cpu, float32)" if variant else "torch eager (cpu)"  # the module, whatever the graph's type
    print(f"\n{label:<28} {'batch':>5} {'p50 ms':>9} {'ort/torch p50':>14}")
    for batch in batch_sizes:
        feeds = random_inputs(graph, batch)
        tensors = [torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in graph.signature.input_names]
        times = np.empty(iterations)
        with torch.inference_mode():
            for _ in range(10):
                eager(*tensors)
            for i in range(iterations):
                start = time.perf_counter()
                eager(*tensors)
                times[i] = time.perf_counter() - start
        p50 = float(np.percentile(times, 50)) * 1e3
        ort = next((r for r in results if r.batch == batch and "CPU" in r.provider), None)
        ratio = f"{ort.p50_ms / p50:>14.2f}" if ort else f"{'-':>14}"
        print(f"{label:<28} {batch:>5} {p50:>9.3f} {ratio}")


def _eager_model(path: Path, model_name: str | None):
    """The PyTorch module for a build directory (random weights: latency does not depend on them)."""
    manifest_path = path / "manifest.json" if path.is_dir() else None
    if manifest_path is None or not manifest_path.exists():
        return None
    manifest = json.loads(manifest_path.read_text())
    python = path / manifest.get("python", "")
    if not python.is_file():
        return None
    from dslc.build import load_generated

    generated = load_generated(python)
    name = model_name or manifest["models"][0]["name"]
    return generated.MODELS[name]().eval()
