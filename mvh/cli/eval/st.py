"""`mvh eval st`: spatial-transcriptomics regression (HEST protocol)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from mvh.cli._app import console, eval_app, guarded, print_json
from mvh.cli._render import fmt_mean_std
from mvh.cli.eval._models import (
    _JSON_OPT,
    _META_OPT,
    _MODEL_OPT,
    _RANDOM_OPT,
    _SAMPLES_ARG,
    _STORE_OPT,
    _WEIGHTS_OPT,
    _progress,
    _specs,
)
from mvh.errors import UsageError


def _st_table(results: dict[str, Any]) -> Table:
    from mvh.tasks.st import table_rows

    s = results["settings"]
    splits = s["splits"]
    table = Table(title=f"ST regression: {s['n_spots']} spots, {s['n_samples']} samples, "
                        f"{s['regressor']}{'' if s['pca'] else ' (no PCA)'}, seed {s['seed']}")
    table.add_column("model")
    for split in splits:
        table.add_column(f"PCC {split}", justify="right")
        table.add_column(f"PCC-10 {split}", justify="right")
        table.add_column(f"MAE {split}", justify="right")
        table.add_column(f"MSE {split}", justify="right")
    compare = "random" in splits and "loso" in splits
    if compare:
        table.add_column("drop (1 - loso/random)", justify="right")
    for row in table_rows(results):
        cells = [row["model"]]
        for split in splits:
            r = row[split]
            cells += [
                fmt_mean_std(r["pcc_mean"], r["pcc_std"]),
                fmt_mean_std(r["pcc10_mean"], r["pcc10_std"]),
                fmt_mean_std(r["mae_mean"]),
                fmt_mean_std(r["mse_mean"]),
            ]
        if compare:
            cells.append(fmt_mean_std(row["drop"]))
        table.add_row(*cells)
    return table


@eval_app.command("st")
@guarded
def st_cmd(
    samples: Annotated[list[Path], _SAMPLES_ARG],
    meta: Annotated[Path | None, _META_OPT] = None,
    model: Annotated[list[str] | None, _MODEL_OPT] = None,
    store: Annotated[list[str] | None, _STORE_OPT] = None,
    weights: Annotated[list[str] | None, _WEIGHTS_OPT] = None,
    random_init: Annotated[bool, _RANDOM_OPT] = False,
    store_dir: Annotated[
        Path | None, typer.Option("--store-dir", help="Where --model stores live (default OUT/stores).")
    ] = None,
    genes: Annotated[Path | None, typer.Option("--genes", help="Text file: one gene name per line.")] = None,
    top_genes: Annotated[
        int, typer.Option("--top-genes", help="Else the top-k HVGs of each fold's training spots.")
    ] = 50,
    regressor: Annotated[str, typer.Option("--regressor", help="ridge (HEST) | ridge-cv | knn")] = "ridge",
    no_pca: Annotated[bool, typer.Option("--no-pca", help="Skip PCA(256) before the regressor.")] = False,
    split: Annotated[str, typer.Option("--split", help="random | patient | loso")] = "random",
    folds: Annotated[int, typer.Option("--folds", help="Folds of random/patient splits.")] = 10,
    group_by_sample: Annotated[
        bool, typer.Option("--group-by-sample", help="Random split: keep each sample's spots in one fold.")
    ] = False,
    compare: Annotated[
        str | None, typer.Option("--compare", help="Several splits, e.g. random,loso (reports the drop).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the folds and PCA.")] = 0,
    out: Annotated[Path, typer.Option("--out", help="Folder for results.json and the PNG figures.")] = Path(
        "st_results"
    ),
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:i (embedding).")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Tiles per forward pass.")] = 64,
    workers: Annotated[int, typer.Option("--workers", help="DataLoader processes decoding tiles.")] = 0,
    as_json: Annotated[bool, _JSON_OPT] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Print progress events.")] = False,
) -> None:
    """Spatial-transcriptomics gene-expression regression from spot embeddings (HEST protocol)."""
    gene_list = None
    if genes is not None:
        if not genes.is_file():
            raise UsageError(f"{genes}: genes file not found; pass a text file with one gene per line")
        gene_list = [g.strip() for g in genes.read_text().splitlines() if g.strip()]
    splits = [s.strip() for s in compare.split(",")] if compare else [split]
    from mvh.tasks.st import STConfig, run_st

    config = STConfig(split=splits[0], folds=folds, seed=seed, genes=gene_list, top_genes=top_genes,
                      regressor=regressor, pca=not no_pca, group_by_sample=group_by_sample)
    specs = _specs(model or [], store or [], weights or [], random_init, store_dir or out / "stores")
    results = run_st(samples, specs, config, out, meta=meta, splits=splits, device=device,
                     batch_size=batch_size, workers=workers, progress=_progress(verbose))
    if as_json:
        print_json(results)
        return
    console.print(_st_table(results))
    console.print(f"results: {out / 'results.json'}   figures: {len(results['figures'])} PNG in {out}")
