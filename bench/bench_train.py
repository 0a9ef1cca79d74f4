"""Training throughput: the generated training script vs an equivalent hand-written PyTorch loop.

For each spec (cnn on digits 28x28, rnn on generated sequences) both loops train the same model
class on the same in-memory data with the same optimizer and batch size, alternating rounds in
the same process; samples/s are taken over the epochs after the first (warm-up). Prints the
ratio generated / hand-written (target >= 0.97).

    python bench/bench_train.py [--epochs 3] [--rounds 2] [--specs cnn rnn]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dslc.build import load_generated  # noqa: E402
from dslc.checker import check_file  # noqa: E402
from dslc.data import sets  # noqa: E402
from dslc.training.check import split_overrides  # noqa: E402
from dslc.training.command import prepare_run  # noqa: E402

# larger generated data sets, so that an epoch is long enough to time
OVERRIDES = {"rnn": ["data.samples=12000"]}


def generated(spec: Path, epochs: int, work: Path) -> float:
    out = work / f"gen-{time.time_ns()}"
    script = prepare_run(spec, out, OVERRIDES.get(spec.stem, []), resume=False)
    load_generated(script).main(["--out", str(out), "--epochs", str(epochs), "--quiet", "--device", "cpu"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    shutil.rmtree(out, ignore_errors=True)
    later = records[1:] or records
    return sum(r["samples_per_s"] for r in later) / len(later)


def hand_written(spec: Path, epochs: int, work: Path) -> float:
    """What a careful engineer writes by hand for the same configuration."""
    consts, settings = split_overrides(spec, OVERRIDES.get(spec.stem, []))
    program = check_file(spec, consts, settings)
    cfg = program.train
    out = work / f"hand-{time.time_ns()}"
    prepare_run(spec, out, OVERRIDES.get(spec.stem, []), resume=False)
    module = load_generated(out / f"{spec.stem}.py")
    data = sets.load(cfg.data.name, base=spec.parent, seed=cfg.seed, **dict(cfg.data.options))
    x_name = program.exported[0].inputs[0].name
    x, y = data.train[x_name], data.train["label"]
    torch.manual_seed(cfg.seed)
    model = module.MODELS[program.exported[0].spec_name]()
    opt = cfg.steps[0].optimizer
    optimizer = torch.optim.Adam(model.parameters(), lr=opt.options["lr"])
    clip = cfg.steps[0].clip_grad_norm
    rates = []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        t0 = time.perf_counter()
        for idx in order.split(cfg.batch_size):
            logits = model(x[idx])
            logits = logits[0] if isinstance(logits, tuple) else logits
            loss = F.cross_entropy(logits, y[idx])
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        rates.append(len(x) / (time.perf_counter() - t0))
    shutil.rmtree(out, ignore_errors=True)
    later = rates[1:] or rates
    return sum(later) / len(later)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--specs", nargs="+", default=["cnn", "rnn"])
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dslc-bench-"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, epochs {args.epochs} (first is warm-up), rounds {args.rounds}")
    try:
        for name in args.specs:
            spec = ROOT / "specs" / f"{name}.model"
            gen, hand = [], []
            for r in range(args.rounds):  # alternate (and swap the order), so machine load affects both alike
                if r % 2:
                    gen.append(generated(spec, args.epochs, work))
                    hand.append(hand_written(spec, args.epochs, work))
                else:
                    hand.append(hand_written(spec, args.epochs, work))
                    gen.append(generated(spec, args.epochs, work))
            g, h = max(gen), max(hand)
            print(f"{name:>4}: generated {g:9.1f} samples/s   hand-written {h:9.1f} samples/s   ratio {g / h:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
