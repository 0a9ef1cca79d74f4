"""Benchmark text generation: the runtime's KV-cache graphs vs full recompute vs HuggingFace generate().

For each prompt length (default 32 and 128) and 512 new greedy tokens at batch 1, in one run:

* runtime, cached: ``Generator`` running ``<model>.prefill.onnx`` once and ``<model>.decode_step.onnx`` per token
  (plain session runs, the CPU default; and with ``io_binding=True``, the GPU's loop, for comparison);
* runtime, uncached: the same loop recomputing the whole sequence through ``<model>.onnx`` per token;
* HuggingFace ``transformers`` ``GPT2LMHeadModel.generate()`` in torch eager (its own KV cache) on the same weights.

Models (``--spec``): ``gpt2`` builds specs/gpt2.model (HuggingFace's GPT2LMHeadModel layout) with the state dict
of a ``GPT2LMHeadModel`` made from a small ``GPT2Config`` with random weights; ``text_generator`` builds
specs/text_generator.model with ``context=1024`` and copies its weights into an equivalent GPT2LMHeadModel
(exact GELU, untied head). ``auto`` (default) is gpt2 once specs/gpt2.model is committed, else text_generator.
Before timing, the logits of the ONNX graph and of the HuggingFace model are compared, and so are their greedy
tokens. Each contender runs ``--repeats`` times, interleaved; the best time counts (the machine is shared).

    python bench/bench_generate.py [--spec auto|gpt2|text_generator] [--prompts 32,128] [--new 512]
                                   [--threads 1] [--repeats 3]

torch and transformers are imported here only, never by the runtime.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from dslc_runtime import Generator

from dslc.build import build, load_generated

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = 1024


def committed(path: Path) -> bool:
    log = subprocess.run(["git", "log", "--oneline", "-1", "--", str(path)], cwd=ROOT, capture_output=True, text=True)
    return bool(log.stdout.strip())


def quiet_transformers():
    import transformers

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    return transformers


def gpt2_build(out: Path):
    """specs/gpt2.model built with a random GPT2LMHeadModel's state dict; returns the HuggingFace model."""
    transformers = quiet_transformers()
    config = transformers.GPT2Config(
        vocab_size=256, n_positions=CONTEXT, n_embd=128, n_layer=4, n_head=4, bos_token_id=1, eos_token_id=2
    )
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    state = {k: v for k, v in hf.state_dict().items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    build(ROOT / "specs" / "gpt2.model", out, overrides=[f"positions={CONTEXT}"], state_dicts={"gpt2": state})
    return hf


def text_generator_build(out: Path):
    """specs/text_generator.model (context 1024) and a GPT2LMHeadModel holding the same weights."""
    transformers = quiet_transformers()
    result = build(ROOT / "specs" / "text_generator.model", out, overrides=[f"context={CONTEXT}"])
    torch.manual_seed(0)  # as dslc.build does before instantiating the model
    ours = load_generated(result.python_path).MODELS["text_generator"]().state_dict()
    layers = 1 + max(int(k.split(".")[1]) for k in ours if k.startswith("blocks."))
    vocab, width = ours["token_embedding.weight"].shape
    config = transformers.GPT2Config(
        vocab_size=vocab,
        n_positions=CONTEXT,
        n_embd=width,
        n_layer=layers,
        n_head=4,
        n_inner=ours["blocks.0.fc1.weight"].shape[0],
        activation_function="gelu",
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    hf = transformers.GPT2LMHeadModel(config).eval()
    sd = {
        "transformer.wte.weight": ours["token_embedding.weight"],
        "transformer.wpe.weight": ours["position_embedding.weight"],
        "transformer.ln_f.weight": ours["ln_f.weight"],
        "transformer.ln_f.bias": ours["ln_f.bias"],
        "lm_head.weight": ours["head.weight"],
    }
    for i in range(layers):
        a, h = f"blocks.{i}.", f"transformer.h.{i}."
        q, k, v = (ours[f"{a}attention.{n}_proj.weight"] for n in "qkv")
        sd[h + "attn.c_attn.weight"] = torch.cat([q, k, v]).T  # Conv1D stores [in, out]
        sd[h + "attn.c_attn.bias"] = torch.cat([ours[f"{a}attention.{n}_proj.bias"] for n in "qkv"])
        sd[h + "attn.c_proj.weight"] = ours[a + "attention.out_proj.weight"].T
        sd[h + "attn.c_proj.bias"] = ours[a + "attention.out_proj.bias"]
        sd[h + "mlp.c_fc.weight"] = ours[a + "fc1.weight"].T
        sd[h + "mlp.c_fc.bias"] = ours[a + "fc1.bias"]
        sd[h + "mlp.c_proj.weight"] = ours[a + "fc2.weight"].T
        sd[h + "mlp.c_proj.bias"] = ours[a + "fc2.bias"]
        for ln, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
            sd[f"{h}{theirs}.weight"] = ours[f"{a}{ln}.weight"]
            sd[f"{h}{theirs}.bias"] = ours[f"{a}{ln}.bias"]
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected and all(k.endswith((".attn.bias", ".attn.masked_bias")) for k in missing), missing
    return hf


def hf_generate(hf, prompt: np.ndarray, new: int) -> np.ndarray:
    ids = torch.from_numpy(prompt).to(hf.device)
    with torch.inference_mode():
        out = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            use_cache=True,
            pad_token_id=0,
            eos_token_id=None,
        )
    return out.cpu().numpy()


def best_of(repeats: int, contenders: dict[str, Callable[[], object]]) -> dict[str, float]:
    """The best wall time of each contender over ``repeats`` interleaved rounds (after one warm-up each)."""
    for run in contenders.values():
        run()
    best = dict.fromkeys(contenders, float("inf"))
    for _ in range(repeats):
        for name, run in contenders.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default="auto", choices=["auto", "gpt2", "text_generator"])
    parser.add_argument("--prompts", default="32,128", help="prompt lengths, comma-separated")
    parser.add_argument("--new", type=int, default=512, help="new tokens per generation")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of onnxruntime and torch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--providers", default="cpu", choices=["cpu", "cuda"], help="onnxruntime's (and torch's device)"
    )
    args = parser.parse_args()
    spec = args.spec
    if spec == "auto":
        spec = "gpt2" if committed(ROOT / "specs" / "gpt2.model") else "text_generator"
    torch.set_num_threads(args.threads)
    prompts = [int(p) for p in args.prompts.split(",") if p]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / spec
        hf = (gpt2_build if spec == "gpt2" else text_generator_build)(out)
        load = {"providers": args.providers, "intra_op_num_threads": args.threads, "inter_op_num_threads": 1}
        hf = hf.to("cuda" if args.providers == "cuda" else "cpu")
        cached = Generator.load(out, cache=True, **load)
        bound = Generator.load(out, cache=True, io_binding=True, **load)
        full = Generator.load(out, cache=False, **load)
        assert full.full is not None
        vocab = hf.config.vocab_size
        print(f"{spec}: {sum(p.numel() for p in hf.parameters()):,} parameters, vocab {vocab}, {cached.layers} layers")
        print(f"onnxruntime {cached.provider}, {args.threads} thread(s); torch {torch.__version__} eager")

        rng = np.random.default_rng(0)
        check = rng.integers(0, vocab, size=(1, 64)).astype(np.int64)
        with torch.inference_mode():
            want = hf(torch.from_numpy(check).to(hf.device)).logits.cpu().numpy()
        got = full.full.run({full.tokens: check})[full.logits]
        print(f"logits, ONNX vs HuggingFace: max abs diff {np.abs(got - want).max():.2e}")
        tokens = cached.generate(check[:, :32], 64)
        same = int((tokens == hf_generate(hf, check[:, :32], 64)).all(axis=0).sum()) - 32
        print(f"greedy tokens, runtime cached vs HuggingFace generate: {same} of 64 equal")

        header = f"{'prompt':>6} {'new':>5} {'cached tok/s':>13} {'IOBinding tok/s':>16} {'uncached tok/s':>15}"
        print(f"\n{header} {'HF tok/s':>9} {'cached/uncached':>16} {'cached/HF':>10}")
        for length in prompts:
            prompt = rng.integers(0, vocab, size=(1, length)).astype(np.int64)
            times = best_of(
                args.repeats,
                {
                    "cached": lambda p=prompt: cached.generate(p, args.new),
                    "bound": lambda p=prompt: bound.generate(p, args.new),
                    "uncached": lambda p=prompt: full.generate(p, args.new),
                    "hf": lambda p=prompt: hf_generate(hf, p, args.new),
                },
            )
            rate = {k: args.new / t for k, t in times.items()}
            print(
                f"{length:>6} {args.new:>5} {rate['cached']:>13.0f} {rate['bound']:>16.0f} {rate['uncached']:>15.0f} "
                f"{rate['hf']:>9.0f} {rate['cached'] / rate['uncached']:>15.1f}x {rate['cached'] / rate['hf']:>9.2f}x"
            )


if __name__ == "__main__":
    main()
