"""The shared job-result mixin and the progress renderers."""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

from mvh.cli._progress import PlainLines
from mvh.jobs import JobResult
from mvh.progress import Event, Recorder


@dataclass
class _Fold(JobResult):
    name: str
    score: float


@dataclass
class _Result(JobResult):
    folds: list[_Fold]
    out: Path
    mean: float
    extra: dict[str, float] | None = None


def test_result_round_trips_through_json(tmp_path):
    result = _Result([_Fold("f0", 0.5), _Fold("f1", np.float32(0.25))], tmp_path / "r", float("nan"))
    written = result.write_json(tmp_path / "results.json")
    data = json.loads(written.read_text())
    assert data == {"folds": [{"name": "f0", "score": 0.5}, {"name": "f1", "score": 0.25}],
                    "out": str(tmp_path / "r"), "mean": None, "extra": None}
    back = _Result.from_dict(data)
    assert back.folds[1] == _Fold("f1", 0.25) and back.out == tmp_path / "r"
    assert back.to_dict() == data and not (isinstance(back.mean, float) and math.isnan(back.mean))


def test_plain_lines_print_first_event_then_every_30_s():
    buf, now = io.StringIO(), [0.0]
    plain = PlainLines(Console(file=buf, width=200), every_s=30, clock=lambda: now[0])
    plain(Event.TOTAL, "slides", 4)
    for t in (5, 10, 29):
        now[0] = t
        plain(Event.ADVANCE, "slides")
    now[0] = 31
    plain(Event.ADVANCE, "slides")
    plain(Event.NOTE, "slides", detail="slide a skipped")
    lines = buf.getvalue().splitlines()
    assert lines == ["[0s] slides 0/4", "[31s] slides 4/4", "note: slide a skipped"]


def test_recorder_counts_by_event_and_task():
    rec = Recorder()
    rec(Event.TOTAL, "tiles", 10)
    rec(Event.ADVANCE, "tiles", 4)
    rec(Event.ADVANCE, "tiles", 6)
    assert rec.count(Event.ADVANCE, "tiles") == 10 and rec.count(Event.TOTAL, "tiles") == 10


def test_plain_lines_keep_printing_during_a_long_step():
    """Piped output never goes quiet for longer than the interval, even when no event arrives."""
    import time as _time

    buf = io.StringIO()
    plain = PlainLines(Console(file=buf, width=200), every_s=0.1)
    with plain.heartbeat():
        plain(Event.TOTAL, "steps", 10)
        plain(Event.ADVANCE, "steps")
        _time.sleep(0.55)  # one long step: no event
    lines = [line for line in buf.getvalue().splitlines() if "steps 1/10" in line]
    assert len(lines) >= 4
