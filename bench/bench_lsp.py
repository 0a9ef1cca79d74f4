"""Diagnostic latency of `dslc lsp`: from a change to the diagnostics published for it, as an editor sees it.

The server runs as a subprocess over stdio (tests/tools/lsp_client.py). The spec is opened, then edited
at spread-out places, one edit at a time: a character typed (mostly a new error: an unknown name, a
syntax error) and then removed (the spec checks again). Each change waits for its own diagnostics, so
the time includes the debounce, the check and the JSON-RPC round trip. Printed: median and p95 over
all edits, and over each half (typed / removed), with the check's own time (`Analysis.seconds`,
measured in process) as the baseline.

    python bench/bench_lsp.py [--spec specs/bert_classifier.model] [--edits 100]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dslc.lsp.analysis import analyze  # noqa: E402
from tests.tools.lsp_client import LspClient  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default=str(ROOT / "specs" / "bert_classifier.model"))
    parser.add_argument("--edits", type=int, default=100)
    args = parser.parse_args()
    spec = Path(args.spec).resolve()
    source = spec.read_text(encoding="utf-8")
    checks = []
    for _ in range(10):
        checks.append(analyze(str(spec), source).seconds)

    client = LspClient(ROOT)
    uri = spec.as_uri()
    client.open(uri, source, 0)
    client.diagnostics(uri, 0, timeout=60)
    body = source.index("model ")
    places = [body + (len(source) - body) * k // args.edits for k in range(args.edits)]
    typed, removed = [], []
    version = 0
    for place in places:
        for text, times in ((source[:place] + "x" + source[place:], typed), (source, removed)):
            version += 1
            seen = len(client.notifications)
            start = time.perf_counter()
            client.change(uri, text, version)
            client.diagnostics(uri, version, timeout=60, after=seen)
            times.append(time.perf_counter() - start)
    assert client.errors_logged() == []
    client.close()

    def line(name: str, values: list[float]) -> str:
        med, p95 = statistics.median(values) * 1000, percentile(values, 0.95) * 1000
        return f"{name:<28} median {med:6.1f} ms   p95 {p95:6.1f} ms   ({len(values)} edits)"

    print(f"{spec.name}: {len(source):,} characters")
    print(line("check alone (in process)", checks))
    print(line("all edits", typed + removed))
    print(line("a character typed", typed))
    print(line("the character removed", removed))


if __name__ == "__main__":
    main()
