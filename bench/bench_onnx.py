"""ONNX graphs: dslc's lowering from the IR vs torch.onnx.export(dynamo=True, optimize=True) of the same module.

For each shipped spec's exported models, in one run: compute nodes (Constant and Identity left out) of both
graphs, and onnxruntime (CPU) median latency at batch 1 and batch 32 of both (ms, dslc / torch.onnx), printed with
the ratio dslc / torch.onnx (below 1: dslc's is smaller or faster). Both graphs get the same weights and inputs; where torch.onnx fails or
freezes a dimension, the row says so. The dynamo exporter needs onnxscript (`pip install onnxscript`).

    python bench/bench_onnx.py [--specs cnn bert_classifier] [--repeat 50] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dslc.build import build, load_generated  # noqa: E402
from dslc.export_onnx import example_inputs, example_sizes, export  # noqa: E402

SPECS = sorted((ROOT / "specs").glob("*.model"))
# vgg at its defaults is 138M parameters and 15 GFLOPs an image: it is compared at this size
SMALL_SETTINGS = {"vgg": ["image_size=32", "hidden=256"]}


def compute_nodes(path: Path) -> int:
    return sum(1 for n in onnx.load(str(path)).graph.node if n.op_type not in ("Constant", "Identity"))


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def latency(sess: ort.InferenceSession, feeds: dict[str, np.ndarray], repeat: int) -> float:
    for _ in range(3):
        sess.run(None, feeds)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def torch_onnx(net: torch.nn.Module, module, program, path: Path) -> str | None:
    """torch.onnx's default exporter with every symbolic size dynamic; None, or why it failed."""
    args = example_inputs(module, example_sizes(module), program=program)
    dims = {}
    for port in module.inputs:
        dims[port.name] = {
            i: torch.export.Dim.AUTO for i, d in enumerate(port.type.shape) if not isinstance(d, int)
        } or None
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net,
                args,
                str(path),
                input_names=[p.name for p in module.inputs],
                output_names=[p.name for p in module.outputs],
                dynamic_shapes=dims,
                dynamo=True,
                optimize=True,
            )
    except Exception as exc:  # the exporter's own failure is a result of this benchmark
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
    return None


def feeds_at(module, program, batch: int) -> dict[str, np.ndarray]:
    sizes = example_sizes(module) | {"batch": batch}
    inputs = example_inputs(module, sizes, program=program)
    return {p.name: x.numpy() for p, x in zip(module.inputs, inputs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", nargs="*", default=None)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("torch").setLevel(logging.ERROR)  # the dynamo exporter's notes on missing torchvision ops
    specs = [s for s in SPECS if args.specs is None or s.stem in args.specs]
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, CPU, {args.threads} thread(s)")
    print(
        f"{'model':<36} {'nodes dslc/torch':>18} {'ratio':>6} {'b1 ms dslc/torch':>17} {'b1 ratio':>9} "
        f"{'b32 ms dslc/torch':>18} {'b32 ratio':>9}"
    )
    node_ratios, b1, b32 = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for spec in specs:
            result = build(spec, out / spec.stem, SMALL_SETTINGS.get(spec.stem), export_onnx=False)
            generated = load_generated(result.python_path)
            for module in result.program.exported:
                torch.manual_seed(0)
                net = generated.MODELS[module.spec_name]().eval()
                ours, theirs = out / f"{module.spec_name}_dslc.onnx", out / f"{module.spec_name}_torch.onnx"
                export(net, result.program, module, ours)
                name = f"{spec.stem}/{module.spec_name}"
                failed = torch_onnx(net, module, result.program, theirs)
                if failed:
                    print(f"{name:<36} {compute_nodes(ours):>8} / failed: {failed}")
                    continue
                nodes = (compute_nodes(ours), compute_nodes(theirs))
                row, millis = [nodes[0] / nodes[1]], []
                for batch, acc in ((1, b1), (32, b32)):
                    feeds = feeds_at(module, result.program, batch)
                    try:
                        times = [latency(session(p, args.threads), feeds, args.repeat) for p in (ours, theirs)]
                    except Exception:  # torch.onnx froze a size: its graph does not run at this batch
                        row.append(float("nan"))
                        millis.append("n/a")
                        continue
                    row.append(times[0] / times[1])
                    millis.append(f"{1e3 * times[0]:.2f} / {1e3 * times[1]:.2f}")
                    acc.append(row[-1])
                node_ratios.append(row[0])
                print(
                    f"{name:<36} {nodes[0]:>8} / {nodes[1]:<7} {row[0]:>6.2f} {millis[0]:>17} {row[1]:>9.2f} "
                    f"{millis[1]:>18} {row[2]:>9.2f}"
                )
    print(
        f"median ratios dslc / torch.onnx: nodes {statistics.median(node_ratios):.2f}, "
        f"batch-1 latency {statistics.median(b1):.2f}, batch-32 latency {statistics.median(b32):.2f}"
    )


if __name__ == "__main__":
    main()
