"""float32 vs `--precision fp16|bf16` vs `--quantize int8` graphs of the same weights: file size, onnxruntime
latency at batch 1 and 32, and what the precision costs: cnn's accuracy on the digits it was trained on
(`dslc train`, the spec's validation split), bert_classifier's largest logit difference from the float32 graph.

    python bench/bench_precision.py [--specs cnn bert_classifier] [--epochs 3] [--rounds 15] [--threads 1] [--cuda]

The graphs of a model are timed in interleaved rounds (the order alternating), so each ratio compares numbers
measured in the same run; latency is the median of the rounds' per-call means. onnxruntime's CPU provider has no
bfloat16 kernels: on the CPU the bf16 graph's quality is measured in onnx's reference implementation, as
`dslc build` verifies it, and it is not timed; with --cuda every graph runs on the CUDA provider.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dslc.build import build  # noqa: E402
from dslc.export_onnx import example_inputs, example_sizes  # noqa: E402

KINDS = ("fp32", "fp16", "bf16", "int8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--specs", nargs="+", default=["cnn", "bert_classifier"])
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of a spec measured by accuracy")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cuda", action="store_true", help="run the graphs on onnxruntime's CUDA provider")
    args = parser.parse_args()
    where = "CUDA" if args.cuda else f"CPU, {args.threads} thread(s)"
    print(f"onnxruntime {ort.__version__}, {where}, {args.rounds} rounds")
    print(
        f"{'model':<18} {'graph':<5} {'bytes':>11} {'size':>5} {'b1 ms':>8} {'b1 x':>5} {'b32 ms':>8} {'b32 x':>5}  quality"
    )
    for stem in args.specs:
        with tempfile.TemporaryDirectory() as tmp:
            measure(stem, Path(tmp), args)


def measure(stem: str, tmp: Path, args: argparse.Namespace) -> None:
    spec = ROOT / "specs" / f"{stem}.model"
    states = trained_weights(spec, tmp, args.epochs) if stem == "cnn" else None
    with contextlib.redirect_stdout(io.StringIO()):
        result = build(spec, tmp / "out", state_dicts=states, variants=KINDS[1:])
    program = result.program
    for report in result.models:
        module = program.model(report.name)
        paths = {"fp32": tmp / "out" / report.onnx, **{v.kind: tmp / "out" / v.onnx for v in report.variants}}
        sessions = {kind: session(path, args.threads, args.cuda) for kind, path in paths.items()}
        timed_sessions = {kind: s for kind, s in sessions.items() if isinstance(s, ort.InferenceSession)}
        latency = {}
        for batch in (1, 32):
            sizes = example_sizes(module, 0) | {"batch": batch}
            feeds = {p.name: x.numpy() for p, x in zip(module.inputs, example_inputs(module, sizes, program=program))}
            latency[batch] = timed(timed_sessions, feeds, args.rounds)
        quality = accuracy(sessions, program, spec) if states else largest_difference(sessions, module, program)
        base = paths["fp32"].stat().st_size
        for kind in KINDS:
            size = paths[kind].stat().st_size
            times = "".join(_latency(latency[batch], kind) for batch in (1, 32))
            print(f"{report.name:<18} {kind:<5} {size:>11,} {size / base:>5.2f}{times}  {quality[kind]}")


def _latency(latency: dict[str, float], kind: str) -> str:
    """Milliseconds and the ratio to float32, or dashes for a graph not timed."""
    if kind not in latency:
        return f" {'-':>8} {'-':>5}"
    return f" {latency[kind] * 1e3:>8.3f} {latency[kind] / latency['fp32']:>5.2f}"


def trained_weights(spec: Path, tmp: Path, epochs: int) -> dict:
    """The state dicts `dslc train` leaves in its run folder."""
    from click.testing import CliRunner
    from safetensors.torch import load_file

    from dslc.cli import main as dslc

    run = tmp / "run"
    result = CliRunner().invoke(dslc, ["train", str(spec), "--epochs", str(epochs), "--out", str(run)])
    if result.exit_code != 0:
        raise SystemExit(f"dslc train failed:\n{result.output}")
    return {path.stem: load_file(path) for path in run.glob("*.safetensors")}


def session(path: Path, threads: int, cuda: bool):
    """An onnxruntime session; on the CPU, for a bfloat16 graph, onnx's reference implementation (not timed)."""
    if ".bf16." in path.name and not cuda:
        from dslc.onnx_reference import ReferenceSession

        return ReferenceSession(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = threads
    providers = ["CUDAExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), options, providers=providers)


def timed(sessions: dict[str, ort.InferenceSession], feeds: dict, rounds: int) -> dict[str, float]:
    """Seconds a call, per graph: the median over rounds of the mean of a block of calls."""
    for s in sessions.values():
        s.run(None, feeds)  # warm-up
    start = time.perf_counter()
    sessions["fp32"].run(None, feeds)
    calls = max(3, min(200, int(0.02 / max(time.perf_counter() - start, 1e-6))))
    means: dict[str, list[float]] = {kind: [] for kind in sessions}
    for r in range(rounds):
        for kind in list(sessions)[:: 1 if r % 2 == 0 else -1]:
            start = time.perf_counter()
            for _ in range(calls):
                sessions[kind].run(None, feeds)
            means[kind].append((time.perf_counter() - start) / calls)
    return {kind: statistics.median(values) for kind, values in means.items()}


def accuracy(sessions, program, spec: Path) -> dict[str, str]:
    """Accuracy on the validation split of the spec's data set (the split `dslc train` held out)."""
    from dslc.data import sets

    options = dict(program.train.data.options)
    data = sets.load(program.train.data.name, spec.parent, program.train.seed, **options)
    images, labels = data.val["image"].numpy(), data.val["label"].numpy()
    out = {}
    for kind, s in sessions.items():
        logits = s.run(["logits"], {"image": images})[0]
        out[kind] = f"accuracy {float((logits.argmax(-1) == labels).mean()):.4f} on {len(labels)} digits"
    return out


def largest_difference(sessions, module, program) -> dict[str, str]:
    sizes = example_sizes(module, 0) | {"batch": 64}
    feeds = {p.name: x.numpy() for p, x in zip(module.inputs, example_inputs(module, sizes, seed=7, program=program))}
    results = {kind: s.run(None, feeds) for kind, s in sessions.items()}
    out = {}
    for kind, outputs in results.items():
        diff = max(float(np.abs(a - b).max()) for a, b in zip(outputs, results["fp32"]))
        scale = max(float(np.abs(a).max()) for a in results["fp32"])
        out[kind] = f"max |diff| {diff:.1e} (outputs up to {scale:.2f})"
    return out


if __name__ == "__main__":
    main()
