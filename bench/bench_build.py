"""`dslc build` time (check, emit, lower, verify) of each shipped spec: this tree vs an earlier commit.

The earlier commit is checked out into a temporary git worktree and both run in fresh processes with this tree's
virtual environment, interleaved per spec (the order alternating), so each ratio compares numbers measured in the
same run. The default baseline is the last commit before the native ONNX lowering, when builds exported through
torch.onnx's TorchScript tracer. Specs the baseline does not have are left out. Both trees run with bytecode caching
on and one untimed build first, as an installed package runs: with PYTHONDONTWRITEBYTECODE set, every build would also
compile the compiler's sources, which times the tree's size rather than its work.

    python bench/bench_build.py [--baseline 72a5e3f^] [--repeat 3] [--specs cnn resnet18]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NATIVE_LOWERING = "72a5e3f"  # the first commit lowering the IR to ONNX itself
SMALL_SETTINGS = {"vgg": ["image_size=32", "hidden=256"]}
ENVIRONMENT = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def build_seconds(tree: Path, spec: Path, out: Path) -> float:
    settings = [arg for s in SMALL_SETTINGS.get(spec.stem, []) for arg in ("--set", s)]
    command = [sys.executable, "-m", "dslc.cli", "build", str(spec), "-o", str(out), *settings]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=tree, capture_output=True, text=True, env=ENVIRONMENT)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{spec.stem} in {tree}: {result.stderr.strip().splitlines()[-1:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default=f"{NATIVE_LOWERING}^", help="git commit to compare with")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--specs", nargs="+", metavar="STEM")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "baseline"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(old), args.baseline], cwd=ROOT, check=True, capture_output=True
        )
        try:
            compare(old, Path(tmp), args)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, capture_output=True)


def compare(old: Path, tmp: Path, args: argparse.Namespace) -> None:
    stems = args.specs or sorted(p.stem for p in (ROOT / "specs").glob("*.model"))
    print(f"dslc build, median of {args.repeat} fresh processes: this tree vs {args.baseline}")
    print(f"{'spec':<20} {'now s':>7} {'then s':>7} {'now/then':>9}")
    for tree in (ROOT, old):  # writes each tree's bytecode
        build_seconds(tree, tree / "specs" / "mlp.model", tmp / "warm-up")
    ratios = []
    for stem in stems:
        if not (old / "specs" / f"{stem}.model").exists():
            continue
        times: dict[str, list[float]] = {"now": [], "then": []}
        for r in range(args.repeat):
            for which in ("now", "then")[:: 1 if r % 2 == 0 else -1]:
                tree = ROOT if which == "now" else old
                times[which].append(build_seconds(tree, tree / "specs" / f"{stem}.model", tmp / which / stem))
        now, then = statistics.median(times["now"]), statistics.median(times["then"])
        ratios.append(now / then)
        print(f"{stem:<20} {now:>7.2f} {then:>7.2f} {now / then:>9.2f}")
    if ratios:
        print(f"{'geometric mean':<20} {'':>7} {'':>7} {statistics.geometric_mean(ratios):>9.2f}")


if __name__ == "__main__":
    main()
