"""`mvh eval classify`: tile classification (linear probe and kNN)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from mvh.cli._app import console, eval_app, guarded, print_json
from mvh.cli._render import fmt_mean_std
from mvh.cli.eval._models import (
    _JSON_OPT,
    _MODEL_OPT,
    _RANDOM_OPT,
    _STORE_OPT,
    _WEIGHTS_OPT,
    _progress,
    _specs,
)
from mvh.errors import UsageError


def _classify_table(results: dict[str, Any]) -> Table:
    from mvh.tasks.classify import classify_table_rows

    s = results["settings"]
    table = Table(title=f"Tile classification: {s['n_tiles']} tiles, {len(results['classes'])} classes, "
                        f"split {s['split']}, seed {s['seed']}")
    for name in ("model", "method", "balanced acc", "weighted F1", "AUROC (macro OvR)"):
        table.add_column(name, justify="left" if name in ("model", "method") else "right")
    for row in classify_table_rows(results):
        table.add_row(row["model"], row["method"],
                      fmt_mean_std(row["balanced_accuracy_mean"], row["balanced_accuracy_std"]),
                      fmt_mean_std(row["weighted_f1_mean"], row["weighted_f1_std"]),
                      fmt_mean_std(row["auroc_mean"], row["auroc_std"]))
    return table


@eval_app.command("classify")
@guarded
def classify_cmd(
    images: Annotated[
        Path | None, typer.Argument(help="Image folder: CLASS/*.png, or train/CLASS and test/CLASS.")
    ] = None,
    labels: Annotated[
        Path | None, typer.Option("--labels", help="CSV: tile_id or path, label[, group][, split].")
    ] = None,
    model: Annotated[list[str] | None, _MODEL_OPT] = None,
    store: Annotated[list[str] | None, _STORE_OPT] = None,
    weights: Annotated[list[str] | None, _WEIGHTS_OPT] = None,
    random_init: Annotated[bool, _RANDOM_OPT] = False,
    store_dir: Annotated[
        Path | None, typer.Option("--store-dir", help="Where --model stores live (default OUT/stores).")
    ] = None,
    method: Annotated[str, typer.Option("--method", help="probe, knn or probe,knn.")] = "probe,knn",
    folds: Annotated[int, typer.Option("--folds", help="Grouped stratified folds (no given split).")] = 5,
    probe_c: Annotated[
        str, typer.Option("--probe-c", help="uni (C = D*classes/100), cv, or a number.")
    ] = "uni",
    knn_k: Annotated[int, typer.Option("--knn-k", help="Neighbours of the kNN classifier.")] = 20,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the folds and the probe.")] = 0,
    out: Annotated[Path, typer.Option("--out", help="Folder for results.json and confusion PNGs.")] = Path(
        "classify_results"
    ),
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:i (embedding).")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")] = 64,
    as_json: Annotated[bool, _JSON_OPT] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Print progress events.")] = False,
) -> None:
    """Tile classification from embeddings: linear probe and kNN (UNI conventions)."""
    from mvh.tasks.classify import METHODS, ClassifyConfig, run_classify

    methods = tuple(m.strip() for m in method.split(",") if m.strip())
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise UsageError(f"--method {method}: use probe, knn or probe,knn")
    if probe_c not in ("uni", "cv"):
        try:
            float(probe_c)
        except ValueError:
            raise UsageError(f"--probe-c {probe_c}: use uni, cv or a positive number") from None
    config = ClassifyConfig(methods=methods, folds=folds, seed=seed, probe_c=probe_c, knn_k=knn_k)
    specs = _specs(model or [], store or [], weights or [], random_init, store_dir or out / "stores")
    results = run_classify(specs, config, out, images=images, labels=labels, device=device,
                           batch_size=batch_size, progress=_progress(verbose))
    if as_json:
        print_json(results)
        return
    console.print(_classify_table(results))
    console.print(f"results: {out / 'results.json'}   confusion matrices: {len(results['figures'])} PNG")
