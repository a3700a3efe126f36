"""`mvh eval st`: spatial-transcriptomics regression (HEST protocol)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from mvh.cli._app import console, eval_app, guarded, print_json
from mvh.cli._progress import progress_reporter
from mvh.cli._render import fmt_mean_std, store_access
from mvh.cli.eval._models import (
    _JSON_OPT,
    _MODEL_OPT,
    _RANDOM_OPT,
    _STORE_OPT,
    _WEIGHTS_OPT,
    _specs,
)

if TYPE_CHECKING:
    from mvh.tasks.st import STResult

def _st_table(result: STResult) -> Table:
    from mvh.tasks.st_eval import table_rows

    s = result.settings
    splits = s.splits
    solver = "HEST's PCA + ridge" if s.regressor == "ridge" else s.regressor
    solver += "" if s.pca else " (no PCA)"
    table = Table(title=f"ST regression: {s.n_spots} spots, {s.n_samples} samples, {s.n_patients} "
                        f"patients, {solver}, seed {s.seed}; mean ± std over folds (ddof 0)")
    table.add_column("model")
    for split in splits:
        name = "random (spot-level)" if split == "random" else split
        table.add_column(f"PCC {name}", justify="right")
        table.add_column(f"PCC-10 {split}", justify="right")
        table.add_column(f"MAE {split}", justify="right")
        table.add_column(f"MSE {split}", justify="right")
        table.add_column(f"NaN genes {split}", justify="right")
    compare = "random" in splits and "loso" in splits
    if compare:
        table.add_column("drop (1 - loso/random)", justify="right")
    for row in table_rows(result.models):
        cells = [row["model"]]
        for split in splits:
            r = row[split]
            cells += [
                fmt_mean_std(r["pcc_mean"], r["pcc_std"]),
                fmt_mean_std(r["pcc10_mean"], r["pcc10_std"]),
                fmt_mean_std(r["mae_mean"]),
                fmt_mean_std(r["mse_mean"]),
                str(r["n_nan_genes"]),
            ]
        if compare:
            cells.append(fmt_mean_std(row["drop"]))
        table.add_row(*cells)
    return table


@eval_app.command("st")
@guarded
@store_access
def st_cmd(
    samples: Annotated[
        list[Path],
        typer.Argument(help="HEST-layout cohort folder(s), .h5ad files, or one HEST-Benchmark task folder."),
    ],
    meta: Annotated[
        Path | None,
        typer.Option("--meta", help="CSV: sample_id|id, patient, study|dataset_title[, mpp] (HEST's CSV)."),
    ] = None,
    model: Annotated[list[str] | None, _MODEL_OPT] = None,
    store: Annotated[list[str] | None, _STORE_OPT] = None,
    weights: Annotated[list[str] | None, _WEIGHTS_OPT] = None,
    random_init: Annotated[bool, _RANDOM_OPT] = False,
    store_dir: Annotated[
        Path | None, typer.Option("--store-dir", help="Where --model stores live (default OUT/stores).")
    ] = None,
    genes: Annotated[
        Path | None, typer.Option("--genes", help="Gene list: HEST's var_*genes.json or one gene per line.")
    ] = None,
    top_genes: Annotated[
        int, typer.Option("--top-genes", help="Else the top-k HVGs of each fold's training spots.")
    ] = 50,
    regressor: Annotated[
        str,
        typer.Option("--regressor", help="ridge: HEST-Benchmark's predict_folds exactly (its PCA, lsqr "
                                          "ridge, seed, NaN rule) | ridge-exact: exact PCA and ridge solve "
                                          "| ridge-cv | knn"),
    ] = "ridge",
    no_pca: Annotated[bool, typer.Option("--no-pca", help="Skip PCA(256) before the regressor.")] = False,
    split: Annotated[
        str | None,
        typer.Option("--split", help="patient (default, HEST) | random (spot-level) | loso (study)."),
    ] = None,
    folds: Annotated[
        int | None,
        typer.Option("--folds", help="Folds of patient/random splits (default min(5, patients) / 5)."),
    ] = None,
    group_by_sample: Annotated[
        bool, typer.Option("--group-by-sample", help="Random split: keep each sample's spots in one fold.")
    ] = False,
    compare: Annotated[
        str | None, typer.Option("--compare", help="Several splits, e.g. random,loso (reports the drop).")
    ] = None,
    drop_bad_spots: Annotated[
        bool, typer.Option("--drop-bad-spots", help="Drop spots with NaN/off-slide centres (recorded).")
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the folds and PCA (HEST's default).")] = 1,
    out: Annotated[Path, typer.Option("--out", help="Folder for results.json and the PNG figures.")] = Path(
        "st_results"
    ),
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:i (embedding).")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Tiles per forward pass.")] = 64,
    workers: Annotated[int, typer.Option("--workers", help="DataLoader processes decoding tiles.")] = 0,
    as_json: Annotated[bool, _JSON_OPT] = False,
) -> None:
    """Spatial-transcriptomics gene-expression regression from spot embeddings (HEST protocol)."""
    from mvh.tasks.st import STConfig, run_st

    specs = _specs(model or [], store or [], weights or [], random_init, store_dir or out / "stores")
    config = STConfig(
        inputs=tuple(samples), stores=tuple(specs), out_dir=out, meta=meta, split=split, folds=folds,
        seed=seed, compare=tuple(s.strip() for s in compare.split(",") if s.strip()) if compare else None,
        genes_file=genes, top_genes=top_genes, regressor=regressor, pca=not no_pca,
        group_by_sample=group_by_sample, drop_bad_spots=drop_bad_spots, device=device,
        batch_size=batch_size, workers=workers,
    )
    with progress_reporter(enabled=not as_json) as progress:
        result = run_st(config, progress=progress)
    if as_json:
        print_json(result.to_dict())
        return
    console.print(_st_table(result))
    console.print(f"results: {out / 'results.json'}   figures: {len(result.figures)} PNG in {out}")
