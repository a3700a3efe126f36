"""The one job shape: `cfg = XConfig(...)` validates itself, `run_x(cfg, *, progress=None) -> XResult`.

`JobResult` gives every result dataclass `to_dict()` (results.json is exactly that: JSON-ready values,
paths as strings, NaN as null) and `from_dict()` (nested dataclass fields rebuilt from their type hints).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from mvh.errors import DataError, UsageError

R = TypeVar("R", bound="JobResult")
RESULTS_FILE = "results.json"  # what every job writes into its --out folder
# Names that say "a file": `--out` took one in older releases of some commands (`--out results.json`).
_FILE_SUFFIXES = (".json", ".md", ".csv", ".parquet", ".png", ".txt", ".h5")


def jsonable(value: Any) -> Any:
    """`value` as plain JSON types: dataclasses and mappings as dicts, paths as str, NaN/inf as None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, Enum):
        return jsonable(value.value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _rebuild(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return _from_fields(hint, value)
    if origin in (list, tuple) and args and isinstance(value, list):
        inner = args[0]
        items = [_rebuild(inner, v) for v in value]
        return items if origin is list else tuple(items)
    if origin is dict and len(args) == 2 and isinstance(value, dict):
        return {k: _rebuild(args[1], v) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if arg is type(None):
                continue
            if isinstance(arg, type) and dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return _from_fields(arg, value)
            if arg is Path and isinstance(value, str):
                return Path(value)
        return value
    if hint is Path and isinstance(value, str):
        return Path(value)
    return value


def _from_fields(cls: type, data: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {f.name: _rebuild(hints.get(f.name, Any), data[f.name]) for f in dataclasses.fields(cls)
              if f.init and f.name in data}
    return cls(**kwargs)


class JobResult:
    """Mixin for result dataclasses: `to_dict()`, `from_dict()`, `write_json(path)`.

    A job's result names its job in the class line (`class SurvivalResult(JobResult, job="survival")`):
    its results.json then carries `"job": "survival"`, so a reader (the web app) knows the type to read it
    with instead of guessing from the keys. Results of older releases have no `job`.
    """

    job: ClassVar[str | None] = None

    def __init_subclass__(cls, job: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if job is not None:
            cls.job = job

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field, after the job's name (results.json is exactly this)."""
        data = jsonable(self)
        return data if self.job is None else {"job": self.job, **data}

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        """Rebuild a result from `to_dict()` output (DataError when it names another job)."""
        named = data.get("job")
        if named is not None and named != cls.job:
            raise DataError(f"results of job {named!r} are not {cls.__name__} results ({cls.job!r})")
        return _from_fields(cls, data)

    def write_json(self, path: Path) -> Path:
        """Write `to_dict()` to `path` (results.json) and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        return path


def out_folder(out: Path | str, writes: str) -> Path:
    """`--out` as the folder a job writes `writes` into; a file name (the old form) is a UsageError."""
    path = Path(out)
    if path.suffix.lower() in _FILE_SUFFIXES:
        raise UsageError(
            f"--out {path} names a file, but --out is a folder ({writes} is written inside it): "
            f"give a folder, e.g. --out {path.with_suffix('')}"
        )
    return path


def check_out_folder(out: Path) -> None:
    """UsageError unless `out` is a folder or absent (a job calls it when it starts, before any work)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder (new or existing)")
