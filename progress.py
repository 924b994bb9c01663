"""Progress of long phases (dataset scanning, reference statistics, sampling, evaluation, saving).

On a terminal a tqdm bar on stderr; elsewhere (a log file, SLURM, CI) plain lines on stderr: one when
the phase starts, one after 5 s and then every `SAGAN_PROGRESS_SECONDS` (default 30) with the count,
the rate and the time left, and one when it ends with the time it took (phases shorter than a second end silently).
Callers print the line that says what a phase is and where its result goes.

Inside `abortable(check)` (the trainer wraps its evaluations in it), every progress update first
calls `check()` and raises `Interrupted` when it returns true, so that a stop signal does not wait for
a long evaluation to finish.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
FIRST_AFTER = 5.0
_abort: Callable[[], bool] | None = None


class Interrupted(Exception):
    """A phase run under `abortable` was abandoned (its check returned true)."""


@contextlib.contextmanager
def abortable(check: Callable[[], bool]) -> Iterator[None]:
    """Phases with progress inside this block raise Interrupted at their next update once `check()` is true."""
    global _abort
    old, _abort = _abort, check
    try:
        yield
    finally:
        _abort = old


def check_abort(what: str) -> None:
    """For loops without a progress display (sampling, prediction): raise Interrupted inside `abortable`
    once its check is true."""
    if _abort is not None and _abort():
        raise Interrupted(what)


def interval() -> float:
    try:
        return max(0.0, float(os.environ.get("SAGAN_PROGRESS_SECONDS", "30")))
    except ValueError:
        return 30.0


def duration(seconds: float) -> str:
    """'42 s', '3.5 min', '2.1 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """`with Progress("reference statistics", total, "images") as p: ... p.update(n)`."""

    def __init__(self, what: str, total: int | None, unit: str = "items") -> None:
        self.what, self.total, self.unit = what, total, unit
        self.done, self.bar = 0, None
        self.t0 = time.perf_counter()
        self.t_last = self.t0 - max(0.0, interval() - FIRST_AFTER)  # the first status line comes after FIRST_AFTER s

    def __enter__(self) -> "Progress":
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=self.what, unit=f" {self.unit}", dynamic_ncols=True, leave=False)
        return self

    def update(self, n: int = 1) -> None:
        self.done += n
        if _abort is not None and _abort():
            raise Interrupted(self.what)
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.t_last >= interval():
            self.t_last = now
            print(f"{self.what}: {self.status(now)}", file=sys.stderr, flush=True)

    def status(self, now: float) -> str:
        rate = self.done / max(now - self.t0, 1e-9)
        if self.total:
            left = (self.total - self.done) / max(rate, 1e-9)
            return f"{self.done:,}/{self.total:,} {self.unit} ({self.done / self.total:.0%}), {rate:.1f} {self.unit}/s, {duration(left)} left"
        return f"{self.done:,} {self.unit} so far, {rate:.1f} {self.unit}/s"

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self.bar is not None:
            self.bar.close()
        took = time.perf_counter() - self.t0
        if exc_type is None and took >= 1.0:
            print(f"{self.what}: {self.done:,} {self.unit} in {duration(took)}", file=sys.stderr, flush=True)


def track(items: Iterable[T], what: str, total: int | None = None, unit: str = "items") -> Iterator[T]:
    """Iterate `items`, reporting one unit per item."""
    with Progress(what, total, unit) as p:
        for x in items:
            yield x
            p.update(1)
