"""`mvh eval classify`: tile classification (UNI's linear probe and kNN)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from mvh.cli._app import console, eval_app, guarded, print_json
from mvh.cli._render import fmt_mean_std, print_notes, store_access
from mvh.cli.eval._models import (
    _JSON_OPT,
    _MODEL_OPT,
    _RANDOM_OPT,
    _STORE_OPT,
    _WEIGHTS_OPT,
    _specs,
)

if TYPE_CHECKING:
    from mvh.tasks.classify import ClassifyResult


def _classify_table(result: ClassifyResult) -> Table:
    probe = "UNI objective" if result.probe == "uni" else "sklearn, standardised"
    title = (f"Tile classification: {result.n_tiles} tiles, {len(result.classes)} classes, split "
             f"{result.split} by {result.grouping}, seed {result.seed}; probe: {probe}, C {result.probe_c}; "
             "mean ± std over folds (ddof 0)")
    table = Table(title=Text(title))
    for name in ("model", "method", "balanced acc", "weighted F1", "AUROC (macro OvO)"):
        table.add_column(name, justify="left" if name in ("model", "method") else "right")
    for row in result.results:
        table.add_row(Text(row.model), row.method,
                      fmt_mean_std(row.balanced_accuracy.mean, row.balanced_accuracy.std),
                      fmt_mean_std(row.weighted_f1.mean, row.weighted_f1.std),
                      fmt_mean_std(row.auroc.mean, row.auroc.std))
    return table


@eval_app.command("classify")
@guarded
@store_access
def classify_cmd(
    images: Annotated[
        Path | None,
        typer.Argument(help="Image folder: CLASS/*.png, CLASS/SLIDE/*.png, or train/CLASS and test/CLASS."),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option("--labels", help="CSV: tile_id or path, label[, group][, patient][, split]."),
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
    probe: Annotated[
        str,
        typer.Option("--probe", help="uni (UNI's objective on raw features, L-BFGS) or sklearn "
                                     "(standardised features, sklearn's LogisticRegression)."),
    ] = "uni",
    probe_c: Annotated[
        str, typer.Option("--probe-c", help="uni (C = D*classes/100), cv (grouped inner CV) or a number.")
    ] = "uni",
    knn_k: Annotated[int, typer.Option("--knn-k", help="Neighbours of the kNN classifier (a count).")] = 20,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the folds and the probe.")] = 0,
    out: Annotated[Path, typer.Option("--out", help="Folder for results.json and confusion PNGs.")] = Path(
        "classify_results"
    ),
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:i (embedding).")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")] = 64,
    as_json: Annotated[bool, _JSON_OPT] = False,
) -> None:
    """Tile classification from embeddings: UNI's linear probe and kNN, folds grouped by slide/patient."""
    from mvh.cli._progress import progress_reporter
    from mvh.tasks.classify import ClassifierSettings, ClassifyConfig, run_classify

    settings = ClassifierSettings(
        methods=tuple(m.strip() for m in method.split(",") if m.strip()), probe=probe, probe_c=probe_c,
        knn_k=knn_k, folds=folds, seed=seed,
    )
    specs = _specs(model or [], store or [], weights or [], random_init, store_dir or out / "stores")
    cfg = ClassifyConfig(stores=tuple(specs), out=out, images=images, labels=labels, settings=settings,
                         device=device, batch_size=batch_size)
    with progress_reporter(enabled=not as_json) as progress:
        result = run_classify(cfg, progress=progress)
    if as_json:
        print_json(result.to_dict())
        return
    console.print(_classify_table(result))
    print_notes(result.notes)
    console.print(Text(f"results: {out / 'results.json'}   confusion matrices: {len(result.figures)} PNG"))
