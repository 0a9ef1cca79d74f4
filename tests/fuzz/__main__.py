"""`python -m tests.fuzz --count N [--seed S] [--build] [--kinds ...] [--jobs J] [--save-crashers DIR]`.

Runs N mutants through `dslc check` (and, with --build, the first accepted ones through `dslc build`),
prints the outcomes per mutation kind, the slowest mutants and every problem (internal error, hang,
unlocated error) grouped by signature; with --save-crashers, minimises one reproducer per signature
into DIR (the regression corpus is tests/fuzz/corpus). Exits 1 when a problem was found.
Run it from the repository root. `--show KIND:SEED:INDEX` writes that mutant's bytes to stdout instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tests.fuzz import harness
from tests.fuzz.campaign import (
    Campaign,
    Settings,
    minimize_groups,
    outcome_table,
    problem_report,
    run_campaign,
    slowest,
)
from tests.fuzz.harness import BUILD, CHECK
from tests.fuzz.mutate import KINDS, mutant_from_key


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n\n")[1])
    add = parser.add_argument
    add("--count", type=int, default=1000, help="mutants to run (default %(default)s)")
    add("--seed", type=int, default=0)
    add("--kinds", nargs="+", choices=KINDS, default=list(KINDS), metavar="KIND", help=", ".join(KINDS))
    add("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (default: one per core)")
    add("--build", action="store_true", help="also build accepted mutants")
    add("--build-count", type=int, default=300, help="accepted mutants to build (default %(default)s)")
    add("--timeout", type=float, default=harness.CHECK_TIMEOUT_S, help="seconds per check (default %(default)s)")
    add("--build-timeout", type=float, default=harness.BUILD_TIMEOUT_S, help="seconds per build (default %(default)s)")
    add("--memory-gb", type=float, default=harness.CHECK_MEMORY_GB, help="address space of a check worker")
    add("--build-memory-gb", type=float, default=harness.BUILD_MEMORY_GB, help="address space of a build worker")
    add("--save-crashers", type=Path, metavar="DIR", help="minimise one reproducer per problem signature into DIR")
    add("--minimize-seconds", type=float, default=120.0, help="time to spend shrinking each reproducer")
    add("--slowest", type=int, default=10, help="how many of the slowest mutants to list")
    add("--examples", type=int, default=10, help="mutants listed per problem signature")
    add("--json", type=Path, metavar="FILE", help="also write every result to FILE as JSON")
    add("--show", metavar="KIND:SEED:INDEX", help="write this mutant's bytes to stdout and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.show:
        sys.stdout.buffer.write(mutant_from_key(args.show).data)
        return 0
    settings = Settings(args.jobs, args.timeout, args.build_timeout, args.memory_gb, args.build_memory_gb)
    build = args.build_count if args.build else 0
    campaign = run_campaign(args.seed, args.count, tuple(args.kinds), settings, build, progress=show_progress)
    if args.json:
        args.json.write_text(json.dumps(campaign.to_json(), indent=1) + "\n", encoding="utf-8")
    print_summary(campaign, args)
    if campaign.problems() and args.save_crashers:
        print(f"\nminimising into {args.save_crashers}:", flush=True)
        minimize_groups(campaign, settings, args.save_crashers, args.minimize_seconds)
    return 1 if campaign.problems() else 0


def show_progress(stage: str, done: int, total: int) -> None:
    if done % max(1, total // 10) == 0 or done == total:
        print(f"{stage}: {done}/{total}", file=sys.stderr, flush=True)


def print_summary(campaign: Campaign, args: argparse.Namespace) -> None:
    print(f"{args.count} mutants (seed {args.seed}, {args.jobs} jobs): check stage {campaign.check_seconds:.1f} s")
    print(outcome_table(campaign.results, CHECK))
    if args.build:
        built = sum(r.build is not None for r in campaign.results)
        print(f"\nbuild stage: {built} accepted mutants in {campaign.build_seconds:.1f} s")
        print(outcome_table(campaign.results, BUILD))
    print(f"\nslowest {args.slowest} (CPU seconds):")
    for mutant, outcome in slowest(campaign.results, args.slowest):
        print(f"  {outcome.seconds:6.2f} s  {outcome.stage:<5}  {outcome.outcome:<15}  {mutant.describe()}")
    problems = campaign.problems()
    print(f"\n{len(problems)} problems, {len(campaign.groups())} distinct")
    if problems:
        print(problem_report(campaign, args.examples), flush=True)


if __name__ == "__main__":
    sys.exit(main())
