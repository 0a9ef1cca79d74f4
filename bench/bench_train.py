"""Training throughput: the generated training script vs an equivalent hand-written PyTorch loop.

For each spec (cnn on digits 28x28, rnn on generated sequences) both loops train the same model
class on the same in-memory data with the same optimizer, learning-rate schedule, gradient
clipping, batch size and thread count, in the same process. The epochs are interleaved: during a
run of the generated script, one hand-written epoch runs next to each generated epoch (outside its
timing; before it in even rounds, after it in odd rounds), so a burst of load on this machine hits
one pair rather than one side. Each pair gives a ratio generated / hand-written samples/s; the
first epoch of each run is warm-up. Printed: the medians of both rates and the median ratio
(target >= 0.97), both by wall time and by process CPU time (with --threads 1 the CPU-time
figure is the one least disturbed by other work on the machine).

    python bench/bench_train.py [--epochs 6] [--rounds 4] [--specs cnn rnn] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import shutil
import statistics
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
from dslc.training import runtime as rt  # noqa: E402
from dslc.training.command import prepare_run  # noqa: E402
from dslc.training.overrides import split_overrides  # noqa: E402

# larger generated data sets, so that an epoch is long enough to time
OVERRIDES = {"rnn": ["data.samples=12000"]}


class HandWritten:
    """What a careful engineer writes by hand for the same configuration: an Adam step, the spec's
    schedule (LambdaLR, stepped per batch) and clipping, and the epoch's loss summed on the device."""

    def __init__(self, spec: Path, epochs: int, out: Path):
        consts, settings = split_overrides(spec, OVERRIDES.get(spec.stem, []))
        program = check_file(spec, consts, settings)
        cfg = program.train
        module = load_generated(out / f"{spec.stem}.py")  # the same model class
        data = sets.load(cfg.data.name, base=spec.parent, seed=cfg.seed, **dict(cfg.data.options))
        self.x, self.y = data.train[program.exported[0].inputs[0].name], data.train["label"]
        self.batch_size = cfg.batch_size
        torch.manual_seed(cfg.seed)
        self.model = module.MODELS[program.exported[0].spec_name]()
        step = cfg.steps[0]
        assert step.optimizer.kind == "adam" and step.accumulate == 1, "the hand-written loop is an Adam loop"
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=step.optimizer.options["lr"])
        steps_per_epoch = math.ceil(len(self.x) / cfg.batch_size)
        self.scheduler = None
        if step.schedule.kind == "cosine":
            warmup = (
                max(1, round(step.schedule.options["warmup"] * steps_per_epoch))
                if step.schedule.options["warmup"]
                else 0
            )
            total = max(1, epochs * steps_per_epoch)

            def factor(i: int) -> float:
                if i < warmup:
                    return (i + 1) / warmup
                return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (i - warmup) / max(1, total - warmup))))

            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        else:
            assert step.schedule.kind == "constant" and not step.schedule.options["warmup"], step.schedule
        self.clip = step.clip_grad_norm
        self.params = list(self.model.parameters())

    def epoch(self, epoch: int) -> tuple[float, float]:
        """Train one epoch; samples per second of wall time and of process CPU time."""
        model, x, y = self.model, self.x, self.y
        model.train()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        t0, c0 = time.perf_counter(), time.process_time()
        total_loss = torch.zeros(())
        for idx in order.split(self.batch_size):
            logits = model(x[idx])
            logits = logits[0] if isinstance(logits, tuple) else logits
            loss = F.cross_entropy(logits, y[idx])
            loss.backward()
            if self.clip:
                torch.nn.utils.clip_grad_norm_(self.params, self.clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.scheduler is not None:
                self.scheduler.step()
            total_loss += loss.detach()
        total_loss.item()
        return len(x) / (time.perf_counter() - t0), len(x) / max(time.process_time() - c0, 1e-9)


def paired_round(spec: Path, epochs: int, work: Path, hand_first: bool) -> list[tuple[float, float, float, float]]:
    """One run of the generated script with a hand-written epoch next to each of its epochs (before it when
    `hand_first`, else after it). Per epoch after the first: (generated, hand-written) samples/s of wall time
    (the generated one as its metrics.jsonl records it), then the same of process CPU time, which machine load
    from other processes disturbs far less."""
    out = work / f"gen-{time.time_ns()}"
    script = prepare_run(spec, out, OVERRIDES.get(spec.stem, []), resume=False)
    hand = HandWritten(spec, epochs, out)
    pairs: list[tuple[float, float, float, float]] = []
    hand_rates: list[tuple[float, float]] = []
    cpu: list[float] = []
    start, record, end = rt.Run.start_epoch, rt.Run.train_record, rt.Run.end_epoch

    def start_epoch(self, epoch, steps):  # the hand-written epoch runs outside the generated epoch's timing
        if hand_first:
            hand_rates.append(hand.epoch(epoch))
        cpu.append(time.process_time())
        return start(self, epoch, steps)

    def train_record(self, epoch, loss_sums, steps):
        result = record(self, epoch, loss_sums, steps)
        cpu[-1] = self.samples / max(time.process_time() - cpu[-1], 1e-9)
        return result

    def end_epoch(self, rec, models):
        if not hand_first:
            hand_rates.append(hand.epoch(rec["epoch"] - 1))
        pairs.append((rec["samples_per_s"], hand_rates[-1][0], cpu[-1], hand_rates[-1][1]))
        return end(self, rec, models)

    rt.Run.start_epoch, rt.Run.train_record, rt.Run.end_epoch = start_epoch, train_record, end_epoch
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            load_generated(script).main(["--out", str(out), "--epochs", str(epochs), "--quiet", "--device", "cpu"])
    finally:
        rt.Run.start_epoch, rt.Run.train_record, rt.Run.end_epoch = start, record, end
        shutil.rmtree(out, ignore_errors=True)
    return pairs[1:]  # the first epoch of each is warm-up


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--specs", nargs="+", default=["cnn", "rnn"])
    p.add_argument("--threads", type=int, default=None, help="torch threads for both loops (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="dslc-bench-"))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds of {args.epochs} epochs "
        "(the first of each is warm-up), generated and hand-written epochs interleaved"
    )
    results = []
    try:
        for name in args.specs:
            spec = ROOT / "specs" / f"{name}.model"
            pairs = []
            for r in range(args.rounds):  # alternate which loop runs first
                got = paired_round(spec, args.epochs, work, hand_first=r % 2 == 0)
                pairs += got
                ratios = " ".join(f"{p[0] / p[1]:.3f}" for p in got)
                cpu_ratios = " ".join(f"{p[2] / p[3]:.3f}" for p in got)
                print(
                    f"{name:>4} round {r + 1} ({'hand' if r % 2 == 0 else 'generated'} first): wall ratios {ratios}   "
                    f"cpu ratios {cpu_ratios}",
                    flush=True,
                )
            for label, g_i, h_i in (("wall", 0, 1), ("cpu ", 2, 3)):
                gen, hand = [p[g_i] for p in pairs], [p[h_i] for p in pairs]
                ratio = statistics.median(p[g_i] / p[h_i] for p in pairs)
                results.append(
                    f"{name:>4} {label}: generated {statistics.median(gen):9.1f} samples/s   hand-written "
                    f"{statistics.median(hand):9.1f} samples/s   median ratio {ratio:.3f} over {len(pairs)} epoch pairs"
                )
        print("\n".join(results))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
