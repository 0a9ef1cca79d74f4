"""Benchmark dslc_runtime against bare onnxruntime and torch eager (CPU, batch 1).

1. Per-call overhead of ``Model.run`` (validation + dict plumbing) versus a bare
   ``onnxruntime.InferenceSession.run`` on the same file with the same session options
   (target: ratio <= 1.05). Calls are timed in blocks, the two contenders interleaved
   (alternating order) over many rounds; medians of the per-call block means are reported.
2. Batch-1 latency of the runtime versus torch eager (``torch.inference_mode``) for a small MLP
   and CNN built with plain torch and exported with the legacy exporter.

    python bench/bench_runtime.py [--rounds 31] [--calls 300] [--threads 1]

All ratios are computed from numbers measured in the same run. torch is used here only.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from dslc_runtime import Model
from torch import nn


def tiny() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 10),
    )


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "tiny-mlp": (tiny, (1, 4)),
    "mlp": (mlp, (1, 1, 28, 28)),
    "cnn": (cnn, (1, 1, 28, 28)),
}


def export(net: nn.Module, shape: tuple[int, ...], path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.zeros(shape),),
            str(path),
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
            dynamo=False,
        )


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        fn()
    return (time.perf_counter_ns() - start) / calls / 1e3


def interleaved(contenders: dict[str, Callable[[], object]], rounds: int, calls: int) -> dict[str, float]:
    """Median over rounds of the mean per-call time (us); order alternates every round."""
    for fn in contenders.values():  # warm up
        per_call_us(fn, max(10, calls // 10))
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            samples[name].append(per_call_us(contenders[name], calls))
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--calls", type=int, default=300, help="calls per timed block")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (ORT and torch)")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    print(
        f"onnxruntime {ort.__version__}, torch {torch.__version__}, threads={args.threads}, "
        f"{args.rounds} rounds x {args.calls} calls, CPU, batch 1"
    )
    print(f"{'model':<10} {'bare ort us':>12} {'runtime us':>11} {'overhead':>9} {'torch us':>9} {'torch/runtime':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (factory, shape) in MODELS.items():
            net = factory().eval()
            path = Path(tmp) / f"{name}.onnx"
            export(net, shape, path)

            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = args.threads
            bare = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            model = Model.load(path, providers="cpu", intra_op_num_threads=args.threads)

            x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            xt = torch.from_numpy(x)
            feed = {"x": x}
            np.testing.assert_allclose(model.run(feed)["y"], bare.run(None, feed)[0], rtol=1e-5)

            def torch_eager(net: nn.Module = net, xt: torch.Tensor = xt) -> object:
                with torch.inference_mode():
                    return net(xt)

            t = interleaved(
                {
                    "bare": lambda bare=bare, feed=feed: bare.run(None, feed),
                    "runtime": lambda model=model, feed=feed: model.run(feed),
                    "torch": torch_eager,
                },
                args.rounds,
                args.calls,
            )
            print(
                f"{name:<10} {t['bare']:>12.2f} {t['runtime']:>11.2f} "
                f"{t['runtime'] / t['bare']:>8.3f}x {t['torch']:>9.2f} "
                f"{t['torch'] / t['runtime']:>13.2f}x"
            )
    print(
        "overhead = runtime / bare onnxruntime (target <= 1.05x); "
        "torch/runtime > 1 means the runtime is faster than torch eager"
    )


if __name__ == "__main__":
    main()
