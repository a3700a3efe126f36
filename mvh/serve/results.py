"""Per-tile values of `mvh eval survival` and `mvh eval st` runs (`--results` folders), for viewer overlays.

All parsing of task outputs lives here, and reads them defensively: the tasks' output shapes evolve.
A folder is recognised by its `results.json`, whose `job` names the job that wrote it (results of
older releases are recognised by their keys); per-tile values are read from tidy tables beside it:

- attention (survival `--heatmap`): `attention*.{csv,parquet}` or `heatmap*.{csv,parquet}` with columns
  `x`, `y` (level-0 top-left of a stored tile), `attention`, and `slide_id` (else the slide id is the
  file stem after `attention_` / `heatmap_`); or results.json `attention: {slide_id: {x, y, attention}}`.
- ST predictions (`mvh eval st`): `predictions*.{csv,parquet}` with `slide_id` (or `sample_id`/`sample`),
  `x`, `y` (level-0 spot centres), and one numeric column per gene (wide), or `gene` + `predicted` (long);
  or results.json `predictions: {sample: {x, y, genes: {gene: [...]}}}`.

Figures (PNG) that results.json lists under `figures` and that lie inside the folder are served as they
are; a survival `heatmap` figure belongs to the run's `heatmap` slide. What cannot be read is reported as
a note (listed on `/api/overlays`), never guessed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from mvh.errors import UsageError

ID_COLUMNS = ("slide_id", "sample_id", "sample")
NON_VALUE_COLUMNS = {"slide_id", "sample_id", "sample", "x", "y", "barcode", "tile_id", "fold", "split",
                     "patient_id", "model", "tile_px", "mpp", "gene"}


@dataclass
class Layer:
    """Values at points of one slide: attention per tile (top-left) or predicted genes per spot (centre)."""

    kind: str
    label: str
    slide_id: str
    anchor: str
    x: list[int]
    y: list[int]
    values: dict[str, list[float | None]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite values as null)."""
        return {
            "kind": self.kind, "label": self.label, "slide_id": self.slide_id, "anchor": self.anchor,
            "x": self.x, "y": self.y, "channels": list(self.values),
            "values": {k: [v if v is not None and math.isfinite(v) else None for v in vs]
                       for k, vs in self.values.items()},
        }


@dataclass(frozen=True)
class Figure:
    """A PNG figure of a results folder, and the slide it shows (None for run-level figures)."""

    key: str
    path: Path
    slide_id: str | None


@dataclass
class ResultsFolder:
    """One `--results` folder: its summary, the layers it holds by slide, and its figures by key."""

    name: str
    folder: Path
    task: str
    layers: list[Layer] = field(default_factory=list)
    figures: dict[str, Figure] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _read_table(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def _task(results: dict[str, Any]) -> str:
    """The job that wrote a results.json: its `job` name; results of older releases, which have none, by
    their keys."""
    if isinstance(results.get("job"), str):
        return results["job"]
    settings = results.get("settings") if isinstance(results.get("settings"), dict) else {}
    task = results.get("job") or results.get("task") or settings.get("task")
    if isinstance(task, str):
        return task
    if "abmil" in results or "cohort" in settings or "heatmap" in settings:
        return "survival"
    if "genes" in settings or "top_genes" in settings or "split" in settings:
        return "st"
    return "unknown"


def _slide_column(frame: pd.DataFrame) -> str | None:
    return next((c for c in ID_COLUMNS if c in frame.columns), None)


def _attention_layers(path: Path, frame: pd.DataFrame, label: str) -> list[Layer]:
    if not {"x", "y", "attention"} <= set(frame.columns):
        raise ValueError("needs columns x, y, attention")
    column = _slide_column(frame)
    if column is None:
        stem = path.stem
        slide = stem.split("_", 1)[1] if "_" in stem else ""
        if not slide:
            raise ValueError("has no slide_id column and its name is not attention_<slide_id>")
        frame = frame.assign(slide_id=slide)
        column = "slide_id"
    return [
        Layer("attention", label, str(slide), "top-left", part["x"].astype(int).tolist(),
              part["y"].astype(int).tolist(), {"attention": part["attention"].astype(float).tolist()})
        for slide, part in frame.groupby(column, sort=True)
    ]


def _st_layers(frame: pd.DataFrame, label: str) -> list[Layer]:
    column = _slide_column(frame)
    if column is None or not {"x", "y"} <= set(frame.columns):
        raise ValueError("needs columns slide_id (or sample_id), x, y")
    if {"gene", "predicted"} <= set(frame.columns):
        frame = frame.pivot_table(index=[column, "x", "y"], columns="gene", values="predicted").reset_index()
    genes = [c for c in frame.columns
             if c not in NON_VALUE_COLUMNS and pd.api.types.is_numeric_dtype(frame[c])]
    if not genes:
        raise ValueError("has no numeric gene columns")
    return [
        Layer("st", label, str(slide), "centre", part["x"].round().astype(int).tolist(),
              part["y"].round().astype(int).tolist(), {g: part[g].astype(float).tolist() for g in genes})
        for slide, part in frame.groupby(column, sort=True)
    ]


def _json_layers(results: dict[str, Any], label: str) -> list[Layer]:
    layers = []
    attention = results.get("attention")
    if isinstance(attention, dict):
        for slide, rec in attention.items():
            values = {"attention": [float(v) for v in rec["attention"]]}
            layers.append(Layer("attention", label, str(slide), "top-left", [int(v) for v in rec["x"]],
                                [int(v) for v in rec["y"]], values))
    predictions = results.get("predictions")
    if isinstance(predictions, dict):
        for slide, rec in predictions.items():
            layers.append(Layer("st", label, str(slide), "centre", [int(round(v)) for v in rec["x"]],
                                [int(round(v)) for v in rec["y"]],
                                {g: [float(v) for v in vs] for g, vs in rec["genes"].items()}))
    return layers


def _heatmap_slide(results: dict[str, Any]) -> str | None:
    settings = results.get("settings") if isinstance(results.get("settings"), dict) else {}
    slide = results.get("heatmap", settings.get("heatmap"))
    return slide if isinstance(slide, str) else None


def _figures(results: dict[str, Any], folder: Path, notes: list[str]) -> dict[str, Figure]:
    listed = results.get("figures")
    if not isinstance(listed, dict):
        return {}
    root = folder.resolve()
    out = {}
    for key, value in listed.items():
        if not isinstance(value, str):
            continue
        path = Path(value) if Path(value).is_absolute() else folder / value
        resolved = path.resolve()
        if root not in resolved.parents or resolved.suffix.lower() != ".png" or not resolved.is_file():
            notes.append(f"{folder}: figure {key!r} ({value}) is not a PNG inside the folder; not served")
            continue
        slide = _heatmap_slide(results) if key == "heatmap" else None
        out[str(key)] = Figure(str(key), resolved, slide)
    return out


def check_results_folders(folders: list[Path]) -> None:
    """Refuse (exit 2) a --results folder without a results.json, before anything is opened."""
    for folder in folders:
        if not (Path(folder) / "results.json").is_file():
            raise UsageError(
                f"--results {folder}: no results.json there; point it at the --out folder of "
                "`mvh eval survival` or `mvh eval st`"
            )


def read_results_folder(folder: Path, name: str) -> ResultsFolder:
    """Read a results folder's task and per-tile layers (notes for whatever cannot be read)."""
    folder = Path(folder)
    out = ResultsFolder(name=name, folder=folder, task="unknown")
    try:
        results = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError) as exc:
        out.notes.append(f"{folder}/results.json is unreadable ({exc})")
        return out
    if not isinstance(results, dict):
        out.notes.append(f"{folder}/results.json is not a JSON object")
        return out
    out.task = _task(results)
    label = f"{out.task} ({folder.name})"
    out.figures = _figures(results, folder, out.notes)
    try:
        out.layers.extend(_json_layers(results, label))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        out.notes.append(f"{folder}/results.json: per-tile values not understood ({exc!r})")
    for path in sorted(folder.iterdir()):
        if path.suffix not in (".csv", ".parquet") or not path.is_file():
            continue
        prefix = path.stem.split("_", 1)[0]
        try:
            if prefix in ("attention", "heatmap"):
                out.layers.extend(_attention_layers(path, _read_table(path), label))
            elif prefix == "predictions":
                out.layers.extend(_st_layers(_read_table(path), label))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            out.notes.append(f"{path}: not read as an overlay ({exc})")
    if not out.layers:
        out.notes.append(
            f"{folder}: no per-tile values found (attention_*.csv for survival, predictions_*.csv for ST); "
            f"figures only ({', '.join(out.figures) or 'none'})"
        )
    return out


def figures_for(folders: list[ResultsFolder], slide_id: str) -> list[dict[str, Any]]:
    """JSON-ready figures of this slide and run-level figures, with the URL that serves each."""
    return [
        {"results": f.name, "key": fig.key, "slide_id": fig.slide_id, "file": fig.path.name,
         "url": f"/api/results/{f.name}/figures/{quote(fig.key, safe='')}"}
        for f in folders for fig in f.figures.values() if fig.slide_id in (None, slide_id)
    ]


def layers_for(folders: list[ResultsFolder], slide_id: str) -> list[dict[str, Any]]:
    """JSON-ready layers of all results folders on one slide."""
    return [
        {"results": f.name, **layer.to_dict()}
        for f in folders for layer in f.layers if layer.slide_id == slide_id
    ]
