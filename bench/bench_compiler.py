"""Compiler benchmarks, each printed as a ratio against a baseline measured in the same run.

1. `dslc check` of every shipped spec (a fresh process) vs the bare cost of `import torch`:
   checking must not pay for torch.
2. `dslc build` (check, emit, export, verify) vs a bare `torch.onnx.export` of an equivalent
   hand-written module (torch's default exporter): time and ONNX node count.
3. onnxruntime vs torch eager latency for each spec, batch 1 and 32, at the export sizes and, for specs
   whose export sizes are far below what they run at (LONGER_SIZES), at a working size too.

    python bench/bench_compiler.py [--repeat 5] [--only latency --specs resnet18 vae]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.model"))
# vgg at its defaults is 138M parameters and 15 GFLOPs an image: its latency is measured at this size
SMALL_SETTINGS = {"vgg": ["image_size=32", "hidden=256"]}
# deepspeech is exported at 16 frames (0.16 s of audio); speech runs at seconds: 200 frames is 2 s at 10 ms hops
LONGER_SIZES = {"deepspeech": {"time": 200}}


def timed_process(args: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True, cwd=ROOT)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_check(repeat: int) -> None:
    check = timed_process([sys.executable, "-m", "dslc.cli", "check", *map(str, SPECS)], repeat)
    torch_import = timed_process([sys.executable, "-c", "import torch"], repeat)
    print(f"\n## dslc check of {len(SPECS)} specs (fresh process, median of {repeat})")
    print(
        f"dslc check: {check * 1e3:.0f} ms   import torch alone: {torch_import * 1e3:.0f} ms   ratio {check / torch_import:.2f}x"
    )


# ---------------------------------------------------------------- hand-written equivalents


class HandMlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 1))

    def forward(self, x):
        return self.net(x)


class HandCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding="same"),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(2304, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x):
        logits = self.head(self.features(x))
        return logits, torch.softmax(logits, dim=-1)


class HandBiLstm(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(10000, 100)
        self.lstm = nn.LSTM(100, 128, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(0.5)
        self.head = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 2))

    def forward(self, tokens):
        states = self.dropout(self.lstm(self.embedding(tokens))[0])
        return self.head(states.amax(dim=1))


HAND = {
    "mlp": (HandMlp, lambda b, t: (torch.randn(b, 10),), ({0: "batch"},)),
    "cnn": (HandCnn, lambda b, t: (torch.randn(b, 1, 28, 28),), ({0: "batch"},)),
    "bilstm_classifier": (HandBiLstm, lambda b, t: (torch.randint(0, 10000, (b, t)),), ({0: "batch", 1: "time"},)),
}


def bare_export(name: str, path: Path) -> tuple[float, int, str]:
    cls, make_args, dims = HAND[name]
    model = cls().eval()
    dynamic = tuple({axis: torch.export.Dim(label, min=2) for axis, label in d.items()} for d in dims)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, make_args(3, 16), str(path), dynamic_shapes=dynamic, verbose=False)
        except Exception as exc:  # the bare exporter failing is itself a finding
            return time.perf_counter() - start, -1, f"export failed: {type(exc).__name__}"
    elapsed = time.perf_counter() - start
    nodes = len(onnx.load(str(path)).graph.node)
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        args = make_args(5, 9)  # sizes other than the export example
        got = session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)})
        with torch.no_grad():
            want = model(*args)
        want = want if isinstance(want, tuple) else (want,)
        declared = [
            [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim]
            for o in onnx.load(str(path)).graph.output
        ]
        frozen = any(
            isinstance(d, int) and d not in (w.shape[i] for w in want) for dims in declared for i, d in enumerate(dims)
        )
        close = all(np.allclose(g, w.numpy(), atol=1e-5) for g, w in zip(got, want))
        status = "matches at other sizes" if close else "wrong at other sizes"
        if frozen:
            status += "; output shape frozen in the graph"
    except Exception as exc:
        status = f"does not run: {type(exc).__name__}"
    return elapsed, nodes, status


def bench_build() -> None:
    from dslc.build import build

    print("\n## dslc build vs bare torch.onnx.export (default exporter) of a hand-written module")
    print(
        f"{'spec':<20} {'dslc s':>8} {'bare s':>8} {'time x':>7} {'dslc nodes':>11} {'bare nodes':>11} {'nodes x':>8}  bare status"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name in HAND:
            start = time.perf_counter()
            result = build(ROOT / "specs" / f"{name}.model", Path(tmp) / name)
            dslc_time = time.perf_counter() - start
            dslc_nodes = result.models[0].nodes
            bare_time, bare_nodes, status = bare_export(name, Path(tmp) / f"{name}_bare.onnx")
            ratio = f"{dslc_nodes / bare_nodes:.2f}" if bare_nodes > 0 else "-"
            print(
                f"{name:<20} {dslc_time:>8.2f} {bare_time:>8.2f} {dslc_time / bare_time:>7.2f} {dslc_nodes:>11} {bare_nodes:>11} {ratio:>8}  {status}"
            )


def median_latency(fn, iterations: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_latency(iterations: int, stems: list[str] | None = None) -> None:
    from dslc.build import build, load_generated
    from dslc.export_onnx import example_inputs, example_sizes

    print(f"\n## onnxruntime vs torch eager, CPU, median of {iterations} calls (ratio < 1: onnxruntime faster)")
    print(f"{'spec':<22} {'batch':>5} {'torch ms':>9} {'ort ms':>8} {'ort/torch':>10}")
    torch.set_num_threads(1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        for spec in [s for s in SPECS if stems is None or s.stem in stems]:
            result = build(spec, Path(tmp) / spec.stem, SMALL_SETTINGS.get(spec.stem))
            generated = load_generated(result.python_path)
            for report in result.models:
                module_ir = result.program.model(report.name)
                model = generated.MODELS[report.name]().eval()
                session = ort.InferenceSession(
                    str(Path(tmp) / spec.stem / report.onnx), options, providers=["CPUExecutionProvider"]
                )
                label = report.name if len(result.models) > 1 else spec.stem
                for longer in ({}, LONGER_SIZES.get(report.name)):
                    if longer is None:
                        continue
                    for batch in (1, 32):
                        sizes = {**example_sizes(module_ir), **longer, "batch": batch}
                        inputs = example_inputs(module_ir, sizes)
                        feeds = {p.name: x.numpy() for p, x in zip(module_ir.inputs, inputs)}
                        with torch.inference_mode():
                            eager = median_latency(lambda m=model, x=inputs: m(*x), iterations)
                        onnx_time = median_latency(lambda s=session, f=feeds: s.run(None, f), iterations)
                        shown = label + "".join(f" {k}={v}" for k, v in longer.items())
                        print(
                            f"{shown:<22} {batch:>5} {eager * 1e3:>9.3f} {onnx_time * 1e3:>8.3f} "
                            f"{onnx_time / eager:>10.2f}"
                        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--only", choices=["check", "build", "latency"])
    parser.add_argument("--specs", nargs="+", metavar="STEM", help="latency of these specs only (default: all)")
    args = parser.parse_args()
    np.random.seed(0)
    if args.only in (None, "check"):
        bench_check(args.repeat)
    if args.only in (None, "build"):
        bench_build()
    if args.only in (None, "latency"):
        bench_latency(args.iterations, args.specs)


if __name__ == "__main__":
    main()
