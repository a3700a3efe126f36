"""Render the library's progress events: Rich bars in a terminal, plain lines when piped."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from mvh.cli._app import err_console
from mvh.progress import Event
from mvh.progress import Progress as ProgressFn

PLAIN_EVERY_S = 30.0


class RichBars:
    """One Rich bar per task, created on its first event."""

    def __init__(self, bars: Progress, console: Console) -> None:
        self.bars = bars
        self.console = console
        self.tasks: dict[str, TaskID] = {}

    def _task(self, name: str) -> TaskID:
        if name not in self.tasks:
            self.tasks[name] = self.bars.add_task(name, total=None, status="")
        return self.tasks[name]

    def __call__(self, event: Event, task: str, n: int = 1, detail: str = "") -> None:
        if event is Event.NOTE:
            self.console.print(Text.assemble(("note: ", "yellow"), detail), highlight=False, soft_wrap=True)
            return
        tid = self._task(task)
        if event is Event.TOTAL:
            self.bars.update(tid, total=(self.bars.tasks[tid].total or 0) + n)
        elif event is Event.ADVANCE:
            self.bars.update(tid, advance=n)
        elif event is Event.STATUS:
            self.bars.update(tid, status=detail)


class PlainLines:
    """Plain `task done/total` lines on stderr: at the first event, then at most every `every_s` seconds;
    with `heartbeat()` running, also every `every_s` seconds while no event arrives (a long step)."""

    def __init__(self, console: Console, every_s: float = PLAIN_EVERY_S, clock=time.monotonic) -> None:
        self.console = console
        self.every_s = every_s
        self.clock = clock
        self.start = clock()
        self.last: float | None = None
        self.done: dict[str, int] = {}
        self.total: dict[str, int] = {}
        self.status: dict[str, str] = {}
        self._lock = threading.Lock()

    def __call__(self, event: Event, task: str, n: int = 1, detail: str = "") -> None:
        if event is Event.NOTE:
            self.console.print(f"note: {detail}", highlight=False, markup=False, soft_wrap=True)
            return
        with self._lock:
            self.done.setdefault(task, 0)
            if event is Event.TOTAL:
                self.total[task] = self.total.get(task, 0) + n
            elif event is Event.ADVANCE:
                self.done[task] += n
            elif event is Event.STATUS:
                self.status[task] = detail
            now = self.clock()
            if self.last is None or now - self.last >= self.every_s:
                self.flush(now)

    @contextmanager
    def heartbeat(self) -> Iterator[None]:
        """Print the current line every `every_s` seconds from a background thread while inside."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.every_s / 4):
                with self._lock:
                    now = self.clock()
                    if self.last is not None and now - self.last >= self.every_s:
                        self.flush(now)

        thread = threading.Thread(target=beat, name="mvh-progress-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def line(self, now: float) -> str:
        """`[12s] slides 3/10 | tiles 640/2100 (loss 4.1)`."""
        parts = []
        for task, done in self.done.items():
            total = self.total.get(task)
            text = f"{task} {done}/{total}" if total else f"{task} {done}"
            if self.status.get(task):
                text += f" ({self.status[task]})"
            parts.append(text)
        return f"[{now - self.start:.0f}s] " + " | ".join(parts)

    def flush(self, now: float | None = None) -> None:
        """Print the current line now."""
        now = self.clock() if now is None else now
        self.last = now
        if self.done:
            self.console.print(self.line(now), highlight=False, markup=False, soft_wrap=True)


@contextmanager
def progress_reporter(enabled: bool = True, console: Console | None = None) -> Iterator[ProgressFn | None]:
    """A `Progress` for a command: Rich bars on a terminal, plain lines when piped, None when disabled.

    While the job runs, whatever a library prints to stdout goes to stderr: stdout carries the command's
    result only (`--json` output stays parseable when Ray's driver thread prints that a worker died).
    """
    with redirect_stdout(sys.stderr):
        with _reporter(enabled, console or err_console) as progress:
            yield progress


@contextmanager
def _reporter(enabled: bool, console: Console) -> Iterator[ProgressFn | None]:
    if not enabled:
        yield None
        return
    if not console.is_terminal:
        plain = PlainLines(console)
        with plain.heartbeat():
            yield plain
        plain.flush()
        return
    columns = (
        TextColumn("[bold]{task.description:>8}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, console=console, transient=True) as bars:
        yield RichBars(bars, console)
