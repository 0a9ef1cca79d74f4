"""A fuzz campaign: many mutants through `check` (and the accepted ones through `build`), a summary, a corpus."""

from __future__ import annotations

import hashlib
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.fuzz import harness
from tests.fuzz.harness import ACCEPTED, BUILD, CHECK, OUTCOMES, Outcome, Signature, WorkerPool
from tests.fuzz.minimize import Shrinker, minimize
from tests.fuzz.mutate import KINDS, Mutant, mutants

CORPUS = Path(__file__).resolve().parent / "corpus"
MAX_CORPUS_BYTES = 100_000  # a reproducer that cannot shrink below this (a size limit's) is reported, not kept


@dataclass
class Result:
    mutant: Mutant
    check: Outcome
    build: Outcome | None = None

    @property
    def outcomes(self) -> list[Outcome]:
        return [self.check] + ([self.build] if self.build else [])


@dataclass
class Settings:
    jobs: int = 2
    timeout_s: float = harness.CHECK_TIMEOUT_S
    build_timeout_s: float = harness.BUILD_TIMEOUT_S
    memory_gb: float = harness.CHECK_MEMORY_GB
    build_memory_gb: float = harness.BUILD_MEMORY_GB

    def check_pool(self, jobs: int | None = None) -> WorkerPool:
        return WorkerPool(jobs or self.jobs, timeout_s=self.timeout_s, memory_gb=self.memory_gb)

    def build_pool(self, jobs: int | None = None) -> WorkerPool:
        budget, memory = self.build_timeout_s, self.build_memory_gb
        return WorkerPool(jobs or self.jobs, build_timeout_s=budget, memory_gb=memory, preload_torch=True)


@dataclass
class Campaign:
    seed: int
    results: list[Result] = field(default_factory=list)
    check_seconds: float = 0.0
    build_seconds: float = 0.0

    def to_json(self) -> list[dict[str, object]]:
        """Every result, one record per stage run, for analysis outside the fuzzer."""
        return [
            {"key": r.mutant.key, "base": r.mutant.base, "detail": r.mutant.detail, "bytes": len(r.mutant.data)}
            | asdict(outcome)
            for r in self.results
            for outcome in r.outcomes
        ]

    def problems(self) -> list[tuple[Mutant, Outcome]]:
        return [(r.mutant, o) for r in self.results for o in r.outcomes if o.is_problem]

    def groups(self) -> dict[Signature, list[tuple[Mutant, Outcome]]]:
        """Problems by signature (stage, outcome, exception type, raising function), most frequent first."""
        grouped: dict[Signature, list[tuple[Mutant, Outcome]]] = defaultdict(list)
        for mutant, outcome in self.problems():
            grouped[outcome.signature].append((mutant, outcome))
        return dict(sorted(grouped.items(), key=lambda item: -len(item[1])))


Progress = Callable[[str, int, int], None]  # (stage, done, total)


def run_checks(items: list[Mutant], settings: Settings, progress: Progress | None = None) -> list[Result]:
    results = []
    with settings.check_pool() as pool:
        for mutant, outcome in pool.map((m, CHECK, m.data) for m in items):
            results.append(Result(mutant, outcome))
            if progress:
                progress(CHECK, len(results), len(items))
    return sorted(results, key=lambda r: r.mutant.index)


def run_builds(results: list[Result], limit: int, settings: Settings, progress: Progress | None = None) -> None:
    """Build the first `limit` accepted mutants, filling in `Result.build`."""
    accepted = [r for r in results if r.check.outcome == ACCEPTED][:limit]
    if not accepted:
        return
    with settings.build_pool(min(settings.jobs, len(accepted))) as pool:
        for done, (result, outcome) in enumerate(pool.map((r, BUILD, r.mutant.data) for r in accepted), 1):
            result.build = outcome
            if progress:
                progress(BUILD, done, len(accepted))


def run_campaign(
    seed: int,
    count: int,
    kinds: tuple[str, ...] = KINDS,
    settings: Settings | None = None,
    build: int = 0,
    progress: Progress | None = None,
) -> Campaign:
    """`count` mutants through check, then the first `build` accepted ones through build."""
    settings = settings or Settings()
    campaign = Campaign(seed)
    start = time.monotonic()
    campaign.results = run_checks(list(mutants(seed, count, kinds)), settings, progress)
    campaign.check_seconds = time.monotonic() - start
    if build:
        start = time.monotonic()
        run_builds(campaign.results, build, settings, progress)
        campaign.build_seconds = time.monotonic() - start
    return campaign


# ------------------------------------------------------------------ replaying and minimising


def stage_runner(check_pool: WorkerPool, build_pool: WorkerPool | None) -> Callable[[bytes], Outcome]:
    """check, then build what checks when a build pool is given: the outcome of the last stage reached."""

    def run(data: bytes) -> Outcome:
        outcome = check_pool.run(CHECK, data)
        if build_pool is not None and outcome.outcome == ACCEPTED:
            return build_pool.run(BUILD, data)
        return outcome

    return run


def corpus_name(outcome: Outcome, data: bytes) -> str:
    prefix = outcome.outcome if outcome.stage == CHECK else f"{outcome.stage}-{outcome.outcome}"
    return f"{prefix}-{hashlib.sha256(data).hexdigest()[:10]}.model"


@dataclass
class Crasher:
    mutant: Mutant
    outcome: Outcome
    data: bytes
    path: Path | None = None


def minimize_groups(
    campaign: Campaign, settings: Settings, corpus: Path | None, max_seconds: float, log: Callable[[str], None] = print
) -> list[Crasher]:
    """One minimised reproducer per signature, made from the group's smallest mutant; saved into `corpus`."""
    crashers = []
    groups = campaign.groups()
    needs_build = any(signature[0] == BUILD for signature in groups)
    builds = settings.build_pool(1) if needs_build else nullcontext()
    with settings.check_pool(1) as check_pool, builds as build_pool:
        for n, (signature, members) in enumerate(groups.items(), 1):
            mutant, outcome = min(members, key=lambda item: len(item[0].data))
            run = stage_runner(check_pool, build_pool if signature[0] == BUILD else None)
            shrinker = Shrinker(run, outcome, max_seconds=max_seconds)
            data = minimize(mutant.data, shrinker)
            crasher = Crasher(mutant, outcome, data)
            if corpus is not None and len(data) <= MAX_CORPUS_BYTES:
                corpus.mkdir(parents=True, exist_ok=True)
                crasher.path = corpus / corpus_name(outcome, data)
                crasher.path.write_bytes(data)
            shrunk = f"{len(mutant.data):,} -> {len(data):,} bytes in {shrinker.tests} runs"
            kept = crasher.path or ("too large to keep" if corpus else "")
            log(f"  [{n}/{len(groups)}] {outcome.label()}: {mutant.key}, {shrunk}: {kept}")
            crashers.append(crasher)
    return crashers


# ------------------------------------------------------------------ reporting


def outcome_table(results: list[Result], stage: str = CHECK) -> str:
    """Counts per mutation kind and outcome, for one stage."""
    rows: dict[str, Counter[str]] = defaultdict(Counter)
    for result in results:
        outcome = result.check if stage == CHECK else result.build
        if outcome is not None:
            rows[result.mutant.kind][outcome.outcome] += 1
    if not rows:
        return "(nothing)"
    columns = [o for o in OUTCOMES if any(row[o] for row in rows.values())]
    total: Counter[str] = sum(rows.values(), Counter())
    width = max(len(kind) for kind in [*rows, "total"])
    lines = [f"{'kind':<{width}}  " + "  ".join(f"{c:>{max(len(c), 6)}}" for c in columns) + "   total"]
    for kind, counts in [*sorted(rows.items()), ("total", total)]:
        cells = "  ".join(f"{counts[c]:>{max(len(c), 6)}}" for c in columns)
        lines.append(f"{kind:<{width}}  {cells}  {sum(counts.values()):>6}")
    return "\n".join(lines)


def slowest(results: list[Result], count: int = 10) -> list[tuple[Mutant, Outcome]]:
    timed = [(r.mutant, o) for r in results for o in r.outcomes]
    return sorted(timed, key=lambda item: -item[1].seconds)[:count]


def problem_report(campaign: Campaign, examples: int = 10) -> str:
    lines = []
    for members in campaign.groups().values():
        first = members[0][1]
        lines.append(f"{first.label()}: {len(members)} mutant{'s' if len(members) != 1 else ''}")
        lines += ["    | " + line for line in first.message.split("\n")]
        lines += [f"    {m.describe()}" for m, _ in members[:examples]]
        if len(members) > examples:
            lines.append(f"    ... and {len(members) - examples} more")
    return "\n".join(lines)
