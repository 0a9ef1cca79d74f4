"""The spec fuzz suite: the regression corpus, a CI-sized campaign and a build-stage sample.

Every mutant must end in a clean accept or in diagnostics that all carry FILE:LINE:COL, within the
time budget: an internal error, a hang or an unlocated error (including "not UTF-8 text") fails.
Reproduce one with `python -m tests.fuzz --show KIND:SEED:INDEX > m.model && dslc --debug check m.model`.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.fuzz.campaign import CORPUS, Campaign, Settings, problem_report, run_campaign
from tests.fuzz.harness import (
    ACCEPTED,
    BUILD,
    BUILT,
    CHECK,
    INTERNAL,
    LOCATED,
    UNLOCATED,
    Outcome,
    WorkerPool,
    classify,
)
from tests.fuzz.minimize import Shrinker, ddmin, fewest_copies, minimize
from tests.fuzz.mutate import KINDS, base_specs, mutant, mutant_from_key, mutants

CI_SEED = 2026
CI_COUNT = 2_000  # 24 s with 2 jobs on 2 idle cores (each hang adds its 2 s budget)
BUILD_SEED = 7
BUILD_SAMPLE = 30  # accepted mutants to build: 17 s
CORPUS_FILES = sorted(CORPUS.glob("*.model"))


def failure_report(campaign: Campaign) -> str:
    problems = campaign.problems()
    not_utf8 = sum(o.outcome == UNLOCATED and o.error_type == "not-utf8" for _, o in problems)
    head = f"{len(problems)} problems in {len(campaign.results)} mutants"
    head += f" ({not_utf8} of them 'not UTF-8 text' errors without line:col)" if not_utf8 else ""
    return f"{head}\n{problem_report(campaign, examples=5)}"


# ------------------------------------------------------------------ the harness itself (fast)


def test_mutants_are_reproducible_from_their_key():
    for made in mutants(seed=3, count=40):
        again = mutant_from_key(made.key)
        assert (again.data, again.base, again.detail) == (made.data, made.base, made.detail)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_changes_the_spec(kind):
    changed = [mutant(kind, 0, i) for i in range(5)]
    assert any(m.data != base_specs()[m.base].encode() for m in changed)


def test_classify_reads_locations_and_internal_errors():
    source = b"model m {\n    input x: float32[b, 2]\n}\n"
    located = "fuzz.model:2:5: error: no output\n    2 |     input x\n        ^\n1 error"
    assert classify(CHECK, 1, located, located, source, 0.1).outcome == LOCATED
    outside = "fuzz.model:9:1: error: no output\n1 error"
    assert classify(CHECK, 1, outside, outside, source, 0.1).error_type == "bad-location"
    carriage_returns = b"model m {\r    input x: float32[b, 2]\r}\r"
    assert classify(CHECK, 1, located, located, carriage_returns, 0.1).outcome == LOCATED
    utf8 = "error: fuzz.model: not UTF-8 text (invalid start byte at byte 3)\n1 error"
    assert classify(CHECK, 1, utf8, utf8, source, 0.1).error_type == "not-utf8"
    traceback = (
        "Traceback (most recent call last):\n"
        '  File "/x/dslc/parser.py", line 116, in _number\n    return int(text)\n'
        "ValueError: too many digits\n\nDuring handling of the above exception, another exception occurred:\n\n"
        "Traceback (most recent call last):\n"
        '  File "/x/dslc/parser.py", line 52, in parse\n    items = transform(tree)\n'
        'lark.exceptions.VisitError: Error trying to process rule "int_lit":\n\ntoo many digits\n'
        'internal error: VisitError: Error trying to process rule "int_lit":\n'
    )
    internal = classify(CHECK, 2, traceback, traceback, source, 0.1)
    assert internal.error_type == "VisitError from ValueError"
    assert (internal.where, internal.line) == ("dslc/parser.py:_number", 116)


def fake_run(fails: Callable[[bytes], bool]) -> Callable[[bytes], Outcome]:
    """A stand-in for the compiler: an internal error exactly when `fails` says so."""

    def run(data: bytes) -> Outcome:
        return Outcome(CHECK, INTERNAL, 0.0, "RecursionError") if fails(data) else Outcome(CHECK, ACCEPTED, 0.0)

    return run


def test_minimizer_keeps_the_failure_and_balances_brackets():
    run = fake_run(lambda data: data.count(b"(") >= 50 and data.count(b"(") == data.count(b")"))
    data = b"const a = 1\nconst b = " + b"(" * 5000 + b"1" + b")" * 5000 + b"\nconst c = 2\n"
    smaller = minimize(data, Shrinker(run, run(data)))
    assert run(smaller).outcome == INTERNAL
    assert smaller.count(b"(") == 50 and len(smaller) < 120


def test_delta_debugging_keeps_only_what_matters():
    run = fake_run(lambda data: b"c" in data and b"f" in data)
    chunks = [bytes([c]) for c in b"abcdefgh"]
    assert ddmin(chunks, Shrinker(run, run(b"cf"))) == [b"c", b"f"]
    assert fewest_copies(1000, lambda n: n >= 321) == 321


# ------------------------------------------------------------------ the compiler under fuzzing


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings(jobs=2)


class Pools:
    """One check worker for the corpus, and a build worker (torch loads in a few seconds) once one is needed."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.check = settings.check_pool(1)
        self.build: WorkerPool | None = None

    def run(self, stage: str, data: bytes) -> Outcome:
        if stage == BUILD and self.build is None:
            self.build = self.settings.build_pool(1)
        return (self.check if stage == CHECK else self.build).run(stage, data)

    def close(self) -> None:
        for pool in (self.check, self.build):
            if pool is not None:
                pool.close()


@pytest.fixture(scope="module")
def pools(settings):
    pools = Pools(settings)
    yield pools
    pools.close()


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.name)
def test_corpus_file_is_handled(path, pools):
    data = path.read_bytes()
    outcome = pools.run(CHECK, data)
    if outcome.outcome not in (ACCEPTED, LOCATED):
        pytest.fail(f"{outcome.label()} ({outcome.seconds:.1f} s CPU)\n{outcome.message}", pytrace=False)
    if path.name.startswith(f"{BUILD}-") and outcome.outcome == ACCEPTED:
        built = pools.run(BUILD, data)
        if built.outcome not in (BUILT, LOCATED):
            pytest.fail(f"{built.label()} ({built.seconds:.1f} s CPU)\n{built.message}", pytrace=False)


@pytest.mark.fuzz
def test_ci_campaign_finds_no_problems(settings):
    campaign = run_campaign(CI_SEED, CI_COUNT, settings=settings)
    if campaign.problems():
        pytest.fail(failure_report(campaign), pytrace=False)


@pytest.mark.fuzz
def test_accepted_mutants_build_or_give_located_errors(settings):
    campaign = run_campaign(BUILD_SEED, 10 * BUILD_SAMPLE, settings=settings, build=BUILD_SAMPLE)
    built = [r for r in campaign.results if r.build is not None]
    assert len(built) == BUILD_SAMPLE, f"only {len(built)} of {10 * BUILD_SAMPLE} mutants were accepted"
    failed = [r for r in built if r.build.outcome not in (BUILT, LOCATED)]
    if failed:
        report = [f"{r.mutant.describe()}\n    {r.build.label()}\n    {r.build.message}" for r in failed]
        pytest.fail(
            f"{len(failed)} of {len(built)} accepted mutants failed to build:\n" + "\n".join(report), pytrace=False
        )
