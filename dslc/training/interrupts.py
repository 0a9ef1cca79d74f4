"""Ctrl-C (SIGINT) and SIGTERM during training: the signal is noted, the step under way finishes, the run saves a
checkpoint there (mid-epoch) and stops with the `--resume` command that continues it (exit 130 or 143).

A second Ctrl-C stops at once (KeyboardInterrupt): the atomic writes leave the files whole, and `--resume` continues
from the last checkpoint. DSLC_INTERRUPT_AT_STEP=N[:SIGTERM] makes a run send itself the signal after its Nth
training step, so tests interrupt at a known step through the same handler.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)
SELF_INTERRUPT_ENV = "DSLC_INTERRUPT_AT_STEP"
# set by `dslc train` for the script it runs: the command line that resumes the run
RESUME_COMMAND_ENV = "DSLC_RESUME_COMMAND"


class RunInterruptedError(Exception):
    """The run stopped on a signal after saving a checkpoint; `code` is the exit status (128 + the signal)."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.code, self.message = 128 + signum, message


class Interrupts:
    """The handlers of SIGINT and SIGTERM while training runs (installed by `install`, put back by `restore`)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.noticed = False
        self.previous: dict[int, Any] = {}
        self.steps = 0  # training steps taken in this process (for DSLC_INTERRUPT_AT_STEP)
        self.self_interrupt = _self_interrupt(os.environ.get(SELF_INTERRUPT_ENV, ""))

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self) -> None:
        if self.previous or threading.current_thread() is not threading.main_thread():
            return  # signal handlers belong to the main thread
        for signum in SIGNALS:
            self.previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        if self.signum is None:
            self.signum = signum  # said by `notice` after the step: printing here could reenter a write under way

    def notice(self) -> str | None:
        """Once, after a signal: the line saying what happens now."""
        if self.signum is None or self.noticed:
            return None
        self.noticed = True
        return f"{signal.Signals(self.signum).name}: saving a checkpoint, then stopping (Ctrl-C again to stop at once)"

    def stepped(self) -> None:
        """A training step ended: count it (the self-interrupt of tests)."""
        self.steps += 1
        if self.self_interrupt is not None and self.steps == self.self_interrupt[0]:
            signal.raise_signal(self.self_interrupt[1])


def _self_interrupt(value: str) -> tuple[int, int] | None:
    """`12` -> (12, SIGINT), `12:SIGTERM` -> (12, SIGTERM); None when unset or malformed."""
    step, _, name = value.partition(":")
    if not step.strip().isdigit():
        return None
    return int(step), getattr(signal, name.strip() or "SIGINT", signal.SIGINT)


def resume_command(argv: list[str]) -> str:
    """The command that continues this run: `dslc train`'s command line when it runs the script, else this script's
    (`python x_train.py ARGS`), with --resume added."""
    given = os.environ.get(RESUME_COMMAND_ENV)
    if given:
        words = shlex.split(given)
    else:
        words = [os.path.basename(sys.executable) or "python", sys.argv[0], *argv]
    if "--resume" not in words:
        words.append("--resume")
    return shlex.join(words)
