"""Command-line helpers: ``run``, ``bench`` and ``info``.

The functions :func:`run_cli`, :func:`bench_cli` and :func:`info_cli` are plain functions so that
another CLI (the ``dslc`` click app) can wire them in; :func:`main` is an argparse front end used
by ``python -m dslc_runtime``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import onnxruntime as ort

from ._manifest import VARIANTS
from ._npy import load_npy
from ._output_files import output_file_names, save_outputs
from .errors import DslcRuntimeError, InputError, ModelError, ProviderError
from .generation import Generator
from .model import Description, Model, describe, needs_cuda
from .providers import check_known
from .signature import TensorSpec, display, quoted

__all__ = [
    "BenchResult",
    "bench_cli",
    "generate_cli",
    "info_cli",
    "load_inputs",
    "main",
    "output_file_names",
    "outputs_to_json",
    "parse_pairs",
    "parse_prompt",
    "random_inputs",
    "run_cli",
    "save_outputs",
]

_DEFAULT_DIM = 16
_MAX_RANDOM_ELEMENTS = 1 << 28
"""Random benchmark inputs beyond this (1 GiB of float32) come from a hostile or mistyped shape."""


def _quiet_onnxruntime() -> None:
    """Silence onnxruntime's own error log: its failures reach the user as dslc_runtime errors."""
    ort.set_default_logger_severity(4)


def _summary(name: str, value: Any) -> str:
    arr = np.asarray(value)
    head = f"{display(name)}: {arr.dtype}{list(arr.shape)}"
    if arr.size <= 20:
        return f"{head} = {np.array2string(arr, precision=5, separator=', ')}"
    if arr.dtype.kind in "fiub":
        return f"{head} min={arr.min():.5g} max={arr.max():.5g} mean={arr.astype(np.float64).mean():.5g}"
    return head


def parse_pairs(items: Sequence[str], what: str = "input") -> dict[str, str]:
    """``["NAME=VALUE", "VALUE"]`` -> ``{"NAME": "VALUE", "": "VALUE"}``; a name given twice is an error."""
    pairs: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            name, value = "", item
        if name in pairs:
            raise InputError(f"{what} {quoted(name) if name else '(unnamed)'} given twice")
        pairs[name] = value
    return pairs


def load_inputs(model: Model, inputs: Mapping[str, str | Path]) -> dict[str, np.ndarray]:
    """Load ``{name: file.npy}`` (never unpickling objects). A lone input may use the name ``""``."""
    arrays: dict[str, np.ndarray] = {}
    for name, file in inputs.items():
        key = name
        if not key:
            if len(model.input_names) != 1:
                names = ", ".join(map(display, model.input_names)) or "none"
                raise InputError(f"{display(model.name)} has inputs ({names}); use NAME=FILE.npy")
            key = model.input_names[0]
        arrays[key] = load_npy(file, f"input {quoted(key)}")
    return arrays


def run_cli(
    model_path: str | Path,
    inputs: Mapping[str, str | Path],
    output_dir: str | Path | None = None,
    *,
    providers: str = "auto",
    model: str | None = None,
    variant: str | None = None,
    stream: TextIO | None = None,
) -> dict[str, np.ndarray]:
    """Run a model on ``.npy`` inputs, print a summary of each output, save ``NAME.npy`` files.

    Output file names are made safe (see :func:`output_file_names`): a model cannot make this
    write outside ``output_dir``.
    """
    out = stream or sys.stdout
    _quiet_onnxruntime()
    m = Model.load(model_path, model=model, variant=variant, providers=providers)
    results = m.run(load_inputs(m, inputs))
    print(f"{display(m.name)}{f' ({m.variant})' if m.variant else ''} on {m.provider}", file=out)
    for note in m.notes:
        print(f"  note: {note}", file=out)
    arrays = {name: np.asarray(value) for name, value in results.items()}
    for name, arr in arrays.items():
        print("  " + _summary(name, arr), file=out)
    if output_dir is not None:
        folder = Path(output_dir)
        saved = save_outputs(folder, arrays)
        print(f"saved {len(saved)} output(s) to {folder}", file=out)
        for name, file in saved.items():
            if file.name != f"{name}.npy":
                print(f"  {quoted(name)} -> {file.name}", file=out)
    return arrays


def parse_prompt(text: str) -> list[list[int]]:
    """``"1 5 7"`` or ``"1,5,7"`` -> ``[[1, 5, 7]]``; rows of a batch are separated by ``;``."""
    rows = []
    for part in text.split(";"):
        words = part.replace(",", " ").split()
        try:
            rows.append([int(w) for w in words])
        except ValueError:
            raise InputError(
                f"--prompt must be token ids separated by spaces or commas (rows by ';'), got {text!r}"
            ) from None
    if not rows or any(not row for row in rows):
        raise InputError(f"--prompt has an empty row: {text!r}")
    return rows


def generate_cli(
    model_path: str | Path,
    prompt: str | None = None,
    *,
    text: str | None = None,
    max_new_tokens: int = 20,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop: Sequence[int] = (),
    pad_id: int | None = None,
    inputs: Mapping[str, str | Path] | None = None,
    output_dir: str | Path | None = None,
    cache: bool | None = None,
    providers: str = "auto",
    model: str | None = None,
    stream: TextIO | None = None,
) -> np.ndarray:
    """Generate from a prompt (token ids, or ``text`` with the model's vocabulary) and print the tokens."""
    out = stream or sys.stdout
    _quiet_onnxruntime()
    if prompt is not None and text is not None:
        raise InputError("give the prompt as --prompt (token ids) or as --text, not both")
    if prompt is None and text is None:
        raise InputError("generating needs a prompt: --prompt '1 5 7' (token ids) or --text '...'")
    gen = Generator.load(model_path, model=model, providers=providers, cache=cache)
    ids = parse_prompt(prompt) if prompt is not None else [gen.encode(text or "")]
    static: dict[str, np.ndarray] = {}
    for name, file in (inputs or {}).items():
        if not name:
            if len(gen.static_inputs) != 1:
                raise InputError(
                    f"{display(gen.name)} takes no input besides the prompt; drop --input"
                )
            name = gen.static_inputs[0]
        static[name] = load_npy(file, f"input {quoted(name)}")
    start = time.perf_counter()
    result = gen.generate(
        ids,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop=list(stop),
        pad_id=pad_id,
        inputs=static,
    )
    seconds = time.perf_counter() - start
    if temperature <= 0 and (top_k is not None or top_p is not None or seed is not None):
        print(
            "  note: temperature 0 is greedy: --top-k, --top-p and --seed apply with --temperature > 0",
            file=out,
        )
    how = f"KV cache of {gen.layers} layers" if gen.cached else "full recompute per token"
    print(f"{display(gen.name)} on {gen.provider} ({how})", file=out)
    for note in gen.notes:
        print(f"  note: {note}", file=out)
    prompt_len = len(ids[0])
    for row in result:
        print(
            "  tokens: "
            + " ".join(map(str, row[:prompt_len]))
            + " | "
            + " ".join(map(str, row[prompt_len:])),
            file=out,
        )
        if gen.vocab:
            print(
                f"  text: {display(gen.decode(row[:prompt_len]), 10_000)} | {display(gen.decode(row[prompt_len:]), 10_000)}",
                file=out,
            )
    new = result.shape[0] * (result.shape[1] - prompt_len)  # padding after a stop token included
    print(
        f"generated {new} token{'s' if new != 1 else ''} in {seconds:.3f} s ({new / max(seconds, 1e-9):.0f} tokens/s)",
        file=out,
    )
    if output_dir is not None:
        saved = save_outputs(Path(output_dir), {"tokens": result})
        print(f"saved {saved['tokens'].name} to {output_dir}", file=out)
    return result


def info_cli(
    model_path: str | Path,
    *,
    model: str | None = None,
    variant: str | None = None,
    providers: str = "auto",
    stream: TextIO | None = None,
) -> Model | Description:
    """Print a model's signature, provider and dslc metadata. A graph that no provider here has kernels for
    (bfloat16 on the CPU) is described from its file, with why it cannot run."""
    out = stream or sys.stdout
    _quiet_onnxruntime()
    m: Model | Description
    try:
        m = Model.load(model_path, model=model, variant=variant, providers=providers)
        provider, notes = m.provider, [*m.notes, *([m.cpu_only] if m.cpu_only else [])]
    except ModelError as exc:
        # the file's own error comes first (a manifest disagreeing with the graph), then the session's
        m = describe(model_path, model=model, variant=variant)
        if not needs_cuda(m.metadata):
            raise
        provider, notes = "none on this machine", [str(exc)]
    print(f"{display(m.name)}{f' ({m.variant})' if m.variant else ''}  ({m.path})", file=out)
    print(f"provider: {provider}", file=out)
    for note in notes:
        print(f"  note: {note}", file=out)
    print(m.signature.describe(), file=out)
    for key in ("dslc.version", "dslc.spec_sha256"):
        if key in m.metadata:
            print(f"{key}: {display(m.metadata[key])}", file=out)
    if m.labels:
        shown = ", ".join(display(label) for label in m.labels[:10])
        print(f"labels ({len(m.labels)}): {shown}{' ...' if len(m.labels) > 10 else ''}", file=out)
    if m.vocab:
        print(f"vocab: {len(m.vocab)} tokens", file=out)
    return m


def random_inputs(
    model: Model | Description, batch: int, dims: Mapping[str, int] | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """Random inputs matching the signature: leading symbolic dim = ``batch``; ints are zeros."""
    rng = np.random.default_rng(seed)
    sizes = dict(dims or {})
    arrays: dict[str, np.ndarray] = {}
    for spec in model.signature.inputs:
        arrays[spec.name] = _random(spec, batch, sizes, rng)
    return arrays


def _random(
    spec: TensorSpec, batch: int, sizes: dict[str, int], rng: np.random.Generator
) -> np.ndarray:
    shape = []
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int):
            shape.append(dim)
        elif dim is not None and dim in sizes:
            shape.append(sizes[dim])
        else:
            size = batch if axis == 0 else _DEFAULT_DIM
            if dim is not None:
                sizes[dim] = size
            shape.append(size)
    if any(size < 0 for size in shape) or math.prod(s for s in shape if s) > _MAX_RANDOM_ELEMENTS:
        raise InputError(
            f"cannot make a random input {quoted(spec.name)} of shape {shape}; set its dims (--dim)"
        )
    dtype = spec.numpy_dtype or np.dtype(np.float32)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "O":
        return np.full(shape, "", dtype=object)
    return np.zeros(shape, dtype=dtype)


@dataclass(frozen=True)
class BenchResult:
    provider: str
    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    throughput: float
    """Samples per second (batch / mean latency)."""


def bench_cli(
    model_path: str | Path,
    providers: Sequence[str] = ("auto",),
    batch_sizes: Sequence[int] = (1,),
    iterations: int = 100,
    *,
    warmup: int = 10,
    model: str | None = None,
    variant: str | None = None,
    dims: Mapping[str, int] | None = None,
    stream: TextIO | None = None,
) -> list[BenchResult]:
    """Print latency percentiles (p50/p90/p99) and throughput per provider and batch size."""
    out = stream or sys.stdout
    if iterations < 1 or warmup < 0:
        raise InputError(
            f"bench needs iterations >= 1 and warmup >= 0 (got {iterations}, {warmup})"
        )
    results: list[BenchResult] = []
    header = [
        f"{'provider':<28} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'samples/s':>11}"
    ]

    def row(text: str) -> None:  # the header with the first row: an error before any prints alone
        while header:
            print(header.pop(), file=out)
        print(text, file=out)

    for request in providers:  # a typo is an error; a provider this machine lacks is skipped
        check_known(request)
    skipped = []
    for request in providers:
        try:
            m = Model.load(model_path, model=model, variant=variant, providers=request)
        except (ProviderError, ModelError) as exc:
            if isinstance(exc, ModelError) and not needs_cuda(
                describe(model_path, model=model, variant=variant).metadata
            ):
                raise  # a graph no provider could run, not one this provider cannot
            row(f"{request:<28} skipped: {exc}")
            skipped.append(request)
            continue
        lead = (
            m.signature.inputs[0].shape[0]
            if m.signature.inputs and m.signature.inputs[0].rank
            else None
        )
        for batch in batch_sizes:
            actual = lead if isinstance(lead, int) else batch
            feeds = random_inputs(m, actual, dims)
            for _ in range(warmup):
                m.run(feeds)
            times = np.empty(iterations)
            for i in range(iterations):
                start = time.perf_counter()
                m.run(feeds)
                times[i] = time.perf_counter() - start
            p50, p90, p99 = (float(v) * 1e3 for v in np.percentile(times, [50, 90, 99]))
            result = BenchResult(m.provider, actual, p50, p90, p99, actual / float(times.mean()))
            results.append(result)
            row(
                f"{m.provider:<28} {actual:>5} {p50:>9.3f} {p90:>9.3f} {p99:>9.3f} "
                f"{result.throughput:>11.1f}"
            )
    if not results:
        raise ProviderError(
            f"nothing measured: no provider asked for ({', '.join(skipped)}) can run the model here"
        )
    return results


def _sizes(text: str, what: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not sizes or any(size < 1 for size in sizes):
        raise InputError(f"{what} must be positive integers, got {text!r}")
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dslc_runtime", description="Run and benchmark dslc ONNX models."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("model", help=".onnx file or build directory with manifest.json")
        p.add_argument(
            "--model", dest="model_name", help="model name when the manifest has several"
        )
        p.add_argument(
            "--variant",
            choices=VARIANTS,
            help="the model's fp16, bf16 or int8 graph (dslc build --precision/--quantize)",
        )

    p_run = sub.add_parser("run", help="run a model on .npy inputs")
    common(p_run)
    p_run.add_argument("--input", "-i", action="append", default=[], metavar="NAME=FILE.npy")
    p_run.add_argument("--output-dir", "-o", help="save outputs as NAME.npy here")
    p_run.add_argument("--providers", default="auto", help="auto | cpu | cuda | tensorrt")
    gen = p_run.add_argument_group(
        "generation (a decoder's build: prefill, then one step per token)"
    )
    gen.add_argument(
        "--generate", action="store_true", help="generate tokens from --prompt or --text"
    )
    gen.add_argument("--prompt", help="token ids, e.g. '1 5 7' (rows of a batch separated by ';')")
    gen.add_argument("--text", help="a text prompt, tokenised with the model's vocabulary")
    gen.add_argument("--max-new-tokens", type=int, default=20)
    gen.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--top-p", type=float, default=None)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument(
        "--stop", type=int, action="append", default=[], help="stop token id (repeatable)"
    )
    gen.add_argument("--pad-id", type=int, default=None, help="written after a row stopped")
    gen.add_argument(
        "--no-cache",
        dest="cache",
        action="store_const",
        const=False,
        default=None,
        help="recompute the whole sequence per token",
    )
    gen.add_argument(
        "--cache",
        dest="cache",
        action="store_const",
        const=True,
        help="refuse a build without KV-cache graphs",
    )

    p_bench = sub.add_parser("bench", help="latency percentiles and throughput")
    common(p_bench)
    p_bench.add_argument("--providers", default="auto", help="comma-separated, e.g. cpu,cuda")
    p_bench.add_argument("--batch-sizes", default="1", help="comma-separated, e.g. 1,8,32")
    p_bench.add_argument("--iterations", type=int, default=100)
    p_bench.add_argument("--warmup", type=int, default=10)
    p_bench.add_argument(
        "--dim",
        action="append",
        default=[],
        metavar="NAME=SIZE",
        help="size of a symbolic dim (default: batch for the leading dim, else 16)",
    )

    p_info = sub.add_parser("info", help="print the signature and metadata")
    common(p_info)
    p_info.add_argument("--providers", default="auto")

    args = parser.parse_args(argv)
    for stream in (sys.stdout, sys.stderr):  # names from model files may not fit the encoding
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        if args.command == "run" and args.generate and args.variant:
            raise InputError(
                "--variant runs a model's other graph; generation uses its KV-cache graphs"
            )
        if args.command == "run" and args.generate:
            generate_cli(
                args.model,
                args.prompt,
                text=args.text,
                max_new_tokens=args.max_new_tokens,
                temperature=args.temperature,
                top_k=args.top_k,
                top_p=args.top_p,
                seed=args.seed,
                stop=args.stop,
                pad_id=args.pad_id,
                inputs=parse_pairs(args.input, "input"),
                output_dir=args.output_dir,
                cache=args.cache,
                providers=args.providers,
                model=args.model_name,
            )
        elif args.command == "run":
            run_cli(
                args.model,
                parse_pairs(args.input, "input"),
                args.output_dir,
                providers=args.providers,
                model=args.model_name,
                variant=args.variant,
            )
        elif args.command == "bench":
            dims = {k: _sizes(v, f"--dim {k}")[0] for k, v in parse_pairs(args.dim, "dim").items()}
            bench_cli(
                args.model,
                [p.strip() for p in args.providers.split(",") if p.strip()],
                _sizes(args.batch_sizes, "--batch-sizes"),
                args.iterations,
                warmup=args.warmup,
                model=args.model_name,
                variant=args.variant,
                dims=dims,
            )
        else:
            info_cli(
                args.model, model=args.model_name, variant=args.variant, providers=args.providers
            )
    except DslcRuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `... | head`: the reader has what it wanted
        # stdout goes to /dev/null, so flushing it at exit raises no second error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports SIGPIPE
    return 0


def outputs_to_json(outputs: Mapping[str, Any]) -> str:
    """Serialise outputs as ``{name: {dtype, shape, data}}`` JSON (used by the examples)."""
    arrays = {name: np.asarray(value) for name, value in outputs.items()}
    return json.dumps(
        {
            name: {"dtype": str(a.dtype), "shape": list(a.shape), "data": a.ravel().tolist()}
            for name, a in arrays.items()
        }
    )
