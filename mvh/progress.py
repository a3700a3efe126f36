"""The one progress protocol every job reports through.

A job calls `progress(event, task, n, detail)`. Tasks are named counters ("slides", "tiles", "folds",
"steps", ...): `TOTAL` adds `n` to a task's total (announce work as it becomes known), `ADVANCE` counts `n`
units done, `STATUS` replaces the task's one-line status text (a loss, the fold being fitted), `NOTE` is
a message for the user (a skipped slide, an assumption made). The CLI renders these as Rich bars in a
terminal and as plain lines at least every 30 s when piped (`mvh.cli._progress`); the web app streams them.
"""

from __future__ import annotations

from enum import Enum
from typing import Protocol


class Event(str, Enum):
    """What a progress call means."""

    TOTAL = "total"
    ADVANCE = "advance"
    STATUS = "status"
    NOTE = "note"


# Task names shared by several jobs (a job may use its own names too).
SLIDES = "slides"
TILES = "tiles"
FILES = "files"
SAMPLES = "samples"
IMAGES = "images"
FOLDS = "folds"
STEPS = "steps"
VECTORS = "vectors"


class Progress(Protocol):
    """Callback a job reports to: `progress(Event.ADVANCE, TILES, 64)`."""

    def __call__(self, event: Event, task: str, n: int = 1, detail: str = "") -> None: ...


def report(progress: Progress | None, event: Event, task: str, n: int = 1, detail: str = "") -> None:
    """Call `progress` if there is one (jobs accept `progress=None`)."""
    if progress is not None:
        progress(event, task, n, detail)


class Recorder:
    """A `Progress` that keeps every call: for tests and for jobs that forward events."""

    def __init__(self) -> None:
        self.calls: list[tuple[Event, str, int, str]] = []

    def __call__(self, event: Event, task: str, n: int = 1, detail: str = "") -> None:
        self.calls.append((event, task, n, detail))

    def count(self, event: Event, task: str) -> int:
        """Sum of `n` over the calls of `event` on `task`."""
        return sum(n for e, t, n, _ in self.calls if e == event and t == task)
