"""Run a mutant through `dslc check` or `dslc build` exactly as the command line does, and classify it.

The command runs in-process in a worker (click's CliRunner invoking `dslc --debug check fuzz.model`:
the same wrapper that turns DslcError into located messages and anything else into "internal error"
with exit code 2; `--debug` adds the traceback, which names the function that raised). A hang inside
the compiler cannot be interrupted reliably from the same process, so each worker is a separate
process: the parent gives every mutant a time budget and kills and restarts a worker that overruns
it. Workers run under an address-space limit, so a spec that allocates terabytes fails with a
MemoryError (reported as an internal error) instead of taking the machine down.
"""

from __future__ import annotations

import faulthandler
import gc
import multiprocessing
import os
import re
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, TypeVar

CHECK, BUILD = "check", "build"
ACCEPTED, BUILT, LOCATED, UNLOCATED, INTERNAL, HANG = (
    "accepted",
    "built",
    "located-error",
    "unlocated-error",
    "internal-error",
    "hang",
)
OUTCOMES = (ACCEPTED, BUILT, LOCATED, UNLOCATED, INTERNAL, HANG)
PROBLEMS = (UNLOCATED, INTERNAL, HANG)

SPEC_NAME = "fuzz.model"  # a valid stem, so that `build` names its outputs after it
# CPU seconds a check may take, as the issue asks. The slowest mutants are blocks of 1,000 inserted statements used
# by up to 17 stages (17,000 layers, checked in linear time): 0.8-1.3 s with two workers on a 2-core machine.
CHECK_TIMEOUT_S = 2.0
BUILD_TIMEOUT_S = 60.0
CHECK_MEMORY_GB = 4.0
BUILD_MEMORY_GB = 8.0
WALL_FACTOR = 10  # a task that uses no CPU (blocked) is a hang after this many budgets of wall-clock time
WORKER_START_TIMEOUT_S = 120.0  # importing torch on two busy cores can take a while
STACK_DUMP_WAIT_S = 0.3  # for a hung worker to write its stack before it is killed
MESSAGE_LINES = 6

HEADER_RE = re.compile(r"^(?:(?P<file>\S.*?):(?P<line>-?\d+):(?P<col>-?\d+): )?(?:error|warning): (?P<message>.*)$")
FRAME_RE = re.compile(r'^ *File "(?P<path>[^"]*)", line (?P<line>\d+),? in (?P<func>\S+)\n(?:    (?P<code>.*))?', re.M)
CHAIN_RE = re.compile(r"^(?:During handling of the above exception|The above exception was the direct cause).*$", re.M)
EXCEPTION_LINE_RE = re.compile(r"^[A-Za-z_][\w.]*(?::.*)?$", re.MULTILINE)  # `Type: message`, after the frames
INTERNAL_RE = re.compile(r"^internal error: .*$", re.MULTILINE)
DSLC_PATH_RE = re.compile(r"(?:^|/)(dslc/[^/].*)$")
GENERATED_PATH_RE = re.compile(r"/\.dslc-build-[^/]+/([^/]+)$")  # build's staging folder
FAULTHANDLER_RE = re.compile(r"^(?:Current thread|Thread) 0x[0-9a-f]+ \(most recent call first\):", re.M)


Signature = tuple[str, str, str, str]  # stage, outcome, error type, culprit frame


@dataclass(frozen=True)
class Outcome:
    stage: str  # check or build
    outcome: str  # one of OUTCOMES
    seconds: float  # CPU seconds of the command (the budget is CPU time: other work on the machine does not count)
    error_type: str = ""  # internal: the exception class; unlocated: no-location, not-utf8, bad-location, ...
    where: str = ""  # internal error: the culprit dslc frame as FILE:FUNCTION; hang: where it was stopped
    line: int = 0  # ... and its line
    message: str = ""  # the first lines the command printed

    @property
    def is_problem(self) -> bool:
        return self.outcome in PROBLEMS

    @property
    def signature(self) -> Signature:
        """Two failures with the same signature are taken to be the same bug."""
        return (self.stage, self.outcome, self.error_type, self.where)

    def same_failure(self, other: Outcome) -> bool:
        """Whether `other` fails like this one; for a hang, any hang (where it was stopped is chance)."""
        if self.outcome == HANG:
            return (other.stage, other.outcome) == (self.stage, HANG)
        return other.signature == self.signature

    def label(self) -> str:
        parts = [self.outcome if self.stage == CHECK else f"{self.stage} {self.outcome}", self.error_type]
        if self.where:
            parts.append(f"in {self.where} (line {self.line})")
        return " ".join(p for p in parts if p)


# ------------------------------------------------------------------ classification


def first_lines(text: str, count: int = MESSAGE_LINES, width: int = 300) -> str:
    lines = [line if len(line) <= width else line[:width] + "..." for line in text.strip("\n").split("\n")]
    return "\n".join(lines[:count] + ([f"... ({len(lines) - count} more lines)"] if len(lines) > count else []))


def classify(stage: str, exit_code: int, stderr: str, output: str, source: bytes, seconds: float) -> Outcome:
    """What the command's exit code and diagnostics say about how it handled the spec."""
    message = first_lines(output)
    if exit_code == 0:
        return Outcome(stage, ACCEPTED if stage == CHECK else BUILT, seconds, message=message)
    internal = INTERNAL_RE.search(stderr)
    if internal:
        return internal_outcome(stage, seconds, stderr[: internal.start()], internal.group())
    if exit_code != 1:
        return Outcome(stage, INTERNAL, seconds, f"exit-code-{exit_code}", message=message)
    problem = location_problem(stderr, source)
    if problem:
        return Outcome(stage, UNLOCATED, seconds, problem, message=message)
    return Outcome(stage, LOCATED, seconds, message=message)


def location_problem(stderr: str, source: bytes) -> str:
    """Why the diagnostics are not all FILE:LINE:COL inside the spec; empty when they are."""
    headers = [m for m in map(HEADER_RE.match, stderr.split("\n")) if m]
    if not headers:
        return "no-diagnostic"
    for header in headers:
        if header.group("line") is None:
            return "not-utf8" if "not UTF-8" in header.group("message") else "no-location"
        line, col = int(header.group("line")), int(header.group("col"))
        if header.group("file") == SPEC_NAME and not inside(source, line, col):
            return "bad-location"
    return ""


def inside(source: bytes, line: int, col: int) -> bool:
    """Whether LINE:COL is in the source (or just past a line's end), with lines ended by LF alone (as the
    lexer counts) or by LF, CR and CRLF (as Python's text mode reads a file)."""
    text = source.decode("utf-8", "surrogateescape")
    for lines in (text.split("\n"), text.replace("\r\n", "\n").replace("\r", "\n").split("\n")):
        if 1 <= line <= len(lines) and 1 <= col <= len(lines[line - 1]) + 1:
            return True
    return False


@dataclass(frozen=True)
class Frame:
    where: str  # FILE:FUNCTION, FILE relative to the dslc package's parent (or <generated>/NAME, or a full path)
    line: int
    code: str
    origin: str  # dslc, generated (the code a build wrote) or other (click, lark, torch, the standard library)

    def __str__(self) -> str:
        return f"  at {self.where}:{self.line}" + (f": {self.code}" if self.code else "")


@dataclass(frozen=True)
class Raised:
    """One exception of a printed chain: its frames, outermost first, and its `Type: message` line."""

    frames: list[Frame]
    exception: str

    @property
    def type_name(self) -> str:
        return self.exception.split(":", 1)[0].rsplit(".", 1)[-1]

    def ours(self) -> list[Frame]:
        return [f for f in self.frames if f.origin != "other"]

    @property
    def depth(self) -> int:
        """How often the most repeated frame occurs: the depth of a recursion."""
        return max(Counter(f.where for f in self.frames).values(), default=0)

    def culprit(self, recursion: bool = False) -> Frame | None:
        """The innermost dslc frame. For a recursion, the function that recursed (the most frequent frame),
        or, when that is not dslc's (lark's tree walk), the dslc frame that called into it."""
        dslc = [f for f in self.frames if f.origin == "dslc"]
        if not dslc or not recursion:
            return dslc[-1] if dslc else None
        counts = Counter(f.where for f in self.frames)
        recursing = max(self.frames, key=lambda f: counts[f.where])
        if recursing.origin == "dslc":
            return recursing
        callers = [f for f in self.frames[: self.frames.index(recursing)] if f.origin == "dslc"]
        return callers[-1] if callers else dslc[-1]


def frame_at(path: str, line: int, func: str, code: str) -> Frame:
    inside, generated = DSLC_PATH_RE.search(path), GENERATED_PATH_RE.search(path)
    if inside:
        return Frame(f"{inside.group(1)}:{func}", line, code, "dslc")
    if generated:
        return Frame(f"<generated>/{generated.group(1)}:{func}", line, code, "generated")
    return Frame(f"{path}:{func}", line, code, "other")


def parse_traceback(text: str) -> list[Raised]:
    """The exceptions of a printed traceback chain (or of a faulthandler dump), the first cause first."""
    chain = []
    for block in CHAIN_RE.split(text):
        matches = list(FRAME_RE.finditer(block))
        frames = [frame_at(m["path"], int(m["line"]), m["func"], (m["code"] or "").strip()) for m in matches]
        if FAULTHANDLER_RE.search(block):  # a stack dump (crash or hang): innermost frame first, no exception
            chain.append(Raised(frames[::-1], ""))
            continue
        raised = EXCEPTION_LINE_RE.search(block, matches[-1].end() if matches else 0)
        if raised:
            chain.append(Raised(frames, raised.group()))
    return chain


def internal_outcome(stage: str, seconds: float, traceback_text: str, headline: str) -> Outcome:
    """An internal error, named by its exception types (the last, and the first cause when they differ) and culprit frame."""
    chain = parse_traceback(traceback_text)
    if not chain:
        return Outcome(stage, INTERNAL, seconds, "unknown", message=first_lines(headline))
    cause, last = chain[0], chain[-1]
    error_type = last.type_name if cause.type_name == last.type_name else f"{last.type_name} from {cause.type_name}"
    if cause.type_name == "RecursionError":  # the recursion shows in whichever exception's frames hold it
        frame = max(chain, key=lambda raised: raised.depth).culprit(recursion=True)
    else:
        frame = cause.culprit() or last.culprit()
    frames = [str(f) for f in (cause.ours() or last.ours())[-3:]]
    lines = [headline] if headline else []
    lines += ([f"  cause: {cause.exception}"] if cause is not last else []) + frames
    where, line = (frame.where, frame.line) if frame else ("", 0)
    return Outcome(stage, INTERNAL, seconds, error_type, where, line, first_lines("\n".join(lines)))


# ------------------------------------------------------------------ the worker process


def run_command(stage: str, data: bytes) -> Outcome:
    """Write the mutant into the current directory and run the CLI command on it, in this process.

    The time counted includes freeing what the command left behind (a 10**8-element tuple takes a
    second to free), so that cost is charged to the mutant that caused it, not to the next one.
    """
    Path(SPEC_NAME).write_bytes(data)
    start = time.process_time()
    try:
        outcome = invoke_cli(stage, data)
    except MemoryError:  # raised while reading the output: still the spec's doing
        outcome = Outcome(stage, INTERNAL, 0.0, "MemoryError", "", 0, "MemoryError in the harness")
    finally:
        shutil.rmtree("out", ignore_errors=True)
        for name in [n for n in sys.modules if n.startswith("dslc_generated_")]:
            del sys.modules[name]  # each build imports its generated module: do not keep them all
        gc.collect()
    return replace(outcome, seconds=time.process_time() - start)


def invoke_cli(stage: str, data: bytes) -> Outcome:
    from click.testing import CliRunner

    from dslc.cli import main

    args = ["--debug", "check", SPEC_NAME] if stage == CHECK else ["--debug", "build", SPEC_NAME, "-o", "out"]
    result = CliRunner().invoke(main, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return escaped_exception(stage, result.exc_info)
    return classify(stage, result.exit_code, result.stderr, result.output, data, 0.0)


def escaped_exception(stage: str, exc_info: Any) -> Outcome:
    """An exception that got past the CLI's own handler (a BaseException, or raised in click)."""
    import traceback

    text = "".join(traceback.format_exception(*exc_info))
    return internal_outcome(stage, 0.0, text, f"escaped the CLI: {exc_info[0].__name__}: {exc_info[1]}")


def limit_memory(gigabytes: float) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = int(gigabytes * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))


def worker_main(conn: Connection, workdir: str, memory_gb: float, preload_torch: bool) -> None:
    """Serve (stage, bytes) requests with Outcomes until the parent closes the pipe."""
    log = os.open(os.path.join(workdir, "worker.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)  # native libraries print to the descriptors: keep that out of the parent's output
    os.dup2(log, 2)
    faulthandler.enable()  # a segfault leaves its Python traceback in the log
    faulthandler.register(signal.SIGUSR1)  # and so does a hang: the parent signals before it kills
    os.environ["OMP_NUM_THREADS"] = "1"  # before torch loads: workers share the machine's cores
    limit_memory(memory_gb)
    os.chdir(workdir)
    import dslc.cli  # noqa: F401 - paid once per worker, not per mutant

    if preload_torch:
        import torch  # noqa: F401

        import dslc.build  # noqa: F401

    conn.send("ready")
    while True:
        try:
            stage, data = conn.recv()
        except EOFError:
            return
        conn.send(run_command(stage, data))


# ------------------------------------------------------------------ the pool, with its watchdog

T = TypeVar("T")


@dataclass
class Worker:
    process: multiprocessing.process.BaseProcess
    conn: Connection
    workdir: Path
    ready: bool = False
    task: Any = None  # the tag of the task it is running
    stage: str = CHECK
    budget: float = 0.0  # CPU seconds the task may use
    started: float = 0.0  # when the task was sent (monotonic clock)
    cpu_at_start: float = 0.0
    deadline: float = 0.0  # when to look again whether it overran

    @property
    def busy(self) -> bool:
        return self.task is not None

    def cpu_used(self) -> float:
        """CPU seconds the worker has spent on its task; wall-clock seconds where /proc cannot say."""
        cpu = process_cpu_seconds(self.process.pid)
        return time.monotonic() - self.started if cpu is None else cpu - self.cpu_at_start


def process_cpu_seconds(pid: int | None) -> float | None:
    """User plus system CPU time of a process, from /proc/PID/stat (fields 14 and 15)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class WorkerPool:
    """Worker processes that run mutants with a time budget each; results come back in completion order."""

    jobs: int = 1
    timeout_s: float = CHECK_TIMEOUT_S
    build_timeout_s: float = BUILD_TIMEOUT_S
    memory_gb: float = CHECK_MEMORY_GB
    preload_torch: bool = False
    workers: list[Worker] = field(default_factory=list)
    restarts: int = 0

    def __post_init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dslc-fuzz-"))
        self.context = multiprocessing.get_context("spawn")  # no fork: the parent may hold torch's threads
        self.workers = [self.start_worker(n) for n in range(self.jobs)]

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start_worker(self, number: int) -> Worker:
        workdir = self.root / f"worker-{number}-{self.restarts}"
        workdir.mkdir()
        parent, child = self.context.Pipe()
        args = (child, str(workdir), self.memory_gb, self.preload_torch)
        process = self.context.Process(target=worker_main, args=args, daemon=True)
        process.start()
        child.close()
        return Worker(process, parent, workdir, deadline=time.monotonic() + WORKER_START_TIMEOUT_S)

    def replace_worker(self, worker: Worker) -> None:
        """Kill a worker (it overran its budget, or died) and start a fresh one in its place."""
        worker.process.kill()
        worker.process.join()
        worker.conn.close()
        self.restarts += 1
        self.workers[self.workers.index(worker)] = self.start_worker(self.restarts)
        shutil.rmtree(worker.workdir, ignore_errors=True)

    def close(self) -> None:
        for worker in self.workers:
            worker.conn.close()
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
        self.workers = []
        shutil.rmtree(self.root, ignore_errors=True)

    def run(self, stage: str, data: bytes) -> Outcome:
        return next(self.map([("run", stage, data)]))[1]

    def map(self, tasks: Iterable[tuple[T, str, bytes]]) -> Iterator[tuple[T, Outcome]]:
        """Run (tag, stage, bytes) tasks (tags not None); yield (tag, Outcome) as each finishes."""
        pending = iter(tasks)
        exhausted = False
        while True:
            for worker in self.workers:
                if worker.ready and not worker.busy and not exhausted:
                    task = next(pending, None)
                    if task is None:
                        exhausted = True
                    else:
                        self.submit(worker, *task)
            if exhausted and not any(w.busy for w in self.workers):
                return
            yield from self.collect()

    def submit(self, worker: Worker, tag: Any, stage: str, data: bytes) -> None:
        worker.task, worker.stage = tag, stage
        worker.budget = self.timeout_s if stage == CHECK else self.build_timeout_s
        worker.started, worker.cpu_at_start = time.monotonic(), process_cpu_seconds(worker.process.pid) or 0.0
        worker.deadline = worker.started + worker.budget
        worker.conn.send((stage, data))

    def collect(self) -> Iterator[tuple[Any, Outcome]]:
        """Wait for the first worker to answer or overrun; yield the outcomes of finished tasks."""
        waiting = [w for w in self.workers if w.busy or not w.ready]
        timeout = max(0.0, min(w.deadline for w in waiting) - time.monotonic())
        answered = wait([w.conn for w in waiting], timeout)
        now = time.monotonic()
        for worker in waiting:
            if worker.conn in answered:
                yield from self.receive(worker)
            elif now >= worker.deadline:
                yield from self.overran(worker)

    def receive(self, worker: Worker) -> Iterator[tuple[Any, Outcome]]:
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            yield from self.died(worker)
            return
        if message == "ready":
            worker.ready = True
            return
        tag, worker.task = worker.task, None
        yield tag, message

    def overran(self, worker: Worker) -> Iterator[tuple[Any, Outcome]]:
        """A hang when the task used its CPU budget, or made no progress for WALL_FACTOR budgets; else wait on."""
        if not worker.ready:
            raise RuntimeError(f"a fuzz worker did not start in time: {self.log_tail(worker)}")
        now, used = time.monotonic(), worker.cpu_used()
        if used < worker.budget and now - worker.started < worker.budget * WALL_FACTOR:
            worker.deadline = now + max(worker.budget - used, 0.05)  # starved by other processes: not its fault
            return
        tag, stage, budget = worker.task, worker.stage, worker.budget
        stack = self.stack_of(worker)
        self.replace_worker(worker)
        message = first_lines(f"no answer within {budget:g} s of CPU time; it was running:\n{stack.message}")
        yield tag, Outcome(stage, HANG, budget, "", stack.where, stack.line, message)

    def stack_of(self, worker: Worker) -> Outcome:
        """Where a hung worker is: faulthandler dumps its stack into the log on SIGUSR1, even inside C code."""
        try:
            os.kill(worker.process.pid, signal.SIGUSR1)
        except (OSError, TypeError):
            return Outcome(worker.stage, HANG, 0.0)
        time.sleep(STACK_DUMP_WAIT_S)
        log = self.log_tail(worker, lines=200)
        dumps = list(FAULTHANDLER_RE.finditer(log))
        return internal_outcome(worker.stage, 0.0, log[dumps[-1].start() :] if dumps else "", "")

    def died(self, worker: Worker) -> Iterator[tuple[Any, Outcome]]:
        worker.process.join(timeout=5)
        code = worker.process.exitcode
        how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        log = self.log_tail(worker)
        tag, stage, busy = worker.task, worker.stage, worker.busy
        self.replace_worker(worker)
        if not busy:
            raise RuntimeError(f"a fuzz worker died while starting ({how}): {log}")
        seconds = time.monotonic() - worker.started
        died = internal_outcome(stage, seconds, log, f"worker {how}")
        yield tag, Outcome(stage, INTERNAL, seconds, f"WorkerDied ({how})", died.where, died.line, died.message)

    @staticmethod
    def log_tail(worker: Worker, lines: int = 20) -> str:
        try:
            text = (worker.workdir / "worker.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().split("\n")[-lines:])
