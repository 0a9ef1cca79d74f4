"""Generated-code size and check time per shipped spec, against a baseline in the same run.

For each spec: lines and classes of the generated module, and the time of `dslc check SPEC` in a
fresh process. The baseline is the same measurement for another checkout of dslc (`--baseline
DIR`, e.g. a `git worktree` of the previous commit), run in the same session, so the ratios
compare like with like on a noisy machine.

    python bench/bench_codegen.py [--baseline /tmp/before] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.model"))

_MEASURE = """
import json, re, sys
from dslc.checker import check_file
from dslc.emit_torch import emit_program
out = {}
for path in sys.argv[1:]:
    code = emit_program(check_file(path))
    out[path] = {"lines": code.count("\\n"), "classes": len(re.findall(r"^class ", code, re.M))}
print(json.dumps(out))
"""


def generated_sizes(checkout: Path) -> dict[str, dict[str, int]]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, *map(str, SPECS)],
        env=env,
        cwd=checkout,  # `python -c` puts the working folder first on sys.path
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


def check_time(checkout: Path, spec: Path, repeat: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "dslc.cli", "check", str(spec)],
            env=env,
            cwd=checkout,
            capture_output=True,
            check=True,
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another dslc checkout to compare against")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    checkouts = {"this": ROOT} | ({"baseline": args.baseline} if args.baseline else {})
    sizes = {name: generated_sizes(path) for name, path in checkouts.items()}
    times = {name: {str(s): check_time(path, s, args.repeat) for s in SPECS} for name, path in checkouts.items()}
    header = f"{'spec':<24} {'lines':>6} {'classes':>7} {'check ms':>8}"
    if args.baseline:
        header += f" | {'base lines':>10} {'base cls':>8} {'base ms':>7} {'lines x':>7} {'time x':>6}"
    print(f"# generated code and `dslc check` time per spec (fresh process, median of {args.repeat})")
    print(header)
    for spec in map(str, SPECS):
        mine, ms = sizes["this"][spec], times["this"][spec] * 1e3
        row = f"{Path(spec).stem:<24} {mine['lines']:>6} {mine['classes']:>7} {ms:>8.0f}"
        if args.baseline:
            base, base_ms = sizes["baseline"][spec], times["baseline"][spec] * 1e3
            row += f" | {base['lines']:>10} {base['classes']:>8} {base_ms:>7.0f}"
            row += f" {mine['lines'] / base['lines']:>7.2f} {ms / base_ms:>6.2f}"
        print(row)
    total = sum(times["this"].values())
    line = f"all specs: {total * 1e3:.0f} ms"
    if args.baseline:
        base_total = sum(times["baseline"].values())
        line += f"; baseline {base_total * 1e3:.0f} ms; ratio {total / base_total:.2f}x"
    print(line)


if __name__ == "__main__":
    main()
