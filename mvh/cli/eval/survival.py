"""`mvh eval survival`: attention-MIL survival from a cohort CSV, against a CoxPH baseline."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from mvh.cli._app import console, eval_app, guarded, print_json
from mvh.cli._progress import progress_reporter
from mvh.cli._render import JsonOption, StoreOption, fmt_mean_std, print_notes, store_access
from mvh.errors import FigureError

if TYPE_CHECKING:
    from mvh.tasks.survival import SurvivalResult


def _results_table(result: SurvivalResult) -> Table:
    from mvh.tasks.survival import MODELS

    cohort = result.cohort
    table = Table(title=f"Survival: {cohort.n_patients} patients, {cohort.n_events} events, "
                        f"{result.settings.folds}-fold CV; mean ± std over folds (ddof 0, not the standard "
                        "error)")
    table.add_column("model")
    table.add_column("C-index (mean ± std)", justify="right")
    table.add_column("Uno's C", justify="right")
    table.add_column("log-rank p (high/low)", justify="right")
    table.add_column("folds")
    for m in MODELS:
        res = result.model(m)
        folds = " ".join("n/a" if c is None else f"{c:.3f}" for c in res.c_index.folds)
        p = "n/a" if res.logrank_p is None else f"{res.logrank_p:.3g}"
        table.add_row(m, fmt_mean_std(res.c_index.mean, res.c_index.std),
                      fmt_mean_std(res.uno_c.mean, res.uno_c.std), f"{p} ({res.n_high}/{res.n_low})", folds)
    return table


@eval_app.command("survival")
@guarded
@store_access
def survival_cmd(
    cohort: Annotated[Path, typer.Option("--cohort", help="CSV: slide_id, patient_id, time, event[, site].")],
    store: StoreOption = "embeddings.lance",
    loss: Annotated[str, typer.Option("--loss", help="cox (partial likelihood) or nll (time bins).")] = "cox",
    bins: Annotated[int, typer.Option("--bins", help="Time bins for --loss nll.")] = 4,
    folds: Annotated[int, typer.Option("--folds", help="Patient-level cross-validation folds.")] = 5,
    epochs: Annotated[int, typer.Option("--epochs", help="Maximum ABMIL epochs per fold.")] = 20,
    lr: Annotated[float, typer.Option("--lr", help="AdamW learning rate.")] = 2e-4,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay.")] = 1e-4,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Patients per optimiser step.")] = 16,
    coxph_folds: Annotated[
        int, typer.Option("--coxph-folds", help="Inner CV folds choosing the CoxPH penalty.")
    ] = 5,
    l1_ratio: Annotated[float, typer.Option("--l1-ratio", help="CoxPH elastic-net L1 share.")] = 0.5,
    seed: Annotated[int, typer.Option("--seed", help="Seed of folds, sampling and initialisation.")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:i.")] = "auto",
    threads: Annotated[int, typer.Option("--threads", help="CPU threads of ABMIL training.")] = 1,
    max_tiles: Annotated[
        int, typer.Option("--max-tiles", help="Tiles sampled per training bag (0 = all); test bags whole.")
    ] = 4096,
    skip_missing: Annotated[
        bool, typer.Option("--skip-missing", help="Skip cohort slides absent from the store (reported).")
    ] = False,
    heatmap: Annotated[
        str | None, typer.Option("--heatmap", help="Draw out-of-fold attention over this slide's thumbnail.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for results.json and the PNG figures.")] = Path(
        "results"
    ),
    as_json: JsonOption = False,
) -> None:
    """Cross-validate gated-attention MIL and a CoxPH baseline; C-index, Kaplan-Meier and heatmap figures."""
    from mvh.tasks.survival import SurvivalConfig, SurvivalSettings, run_survival
    from mvh.tasks.survival.job import RESULTS_NAME

    settings = SurvivalSettings(
        loss=loss, n_bins=bins, folds=folds, epochs=epochs, lr=lr, weight_decay=weight_decay,
        batch_size=batch_size, max_tiles=max_tiles or None, coxph_folds=coxph_folds, l1_ratio=l1_ratio,
        seed=seed, device=device, threads=threads,
    )
    config = SurvivalConfig(cohort, store, out, settings, skip_missing=skip_missing, heatmap=heatmap)
    with progress_reporter(enabled=not as_json) as progress:
        result = run_survival(config, progress=progress)
    if as_json:
        print_json(result.to_dict())
        print_notes(result.notes)
    else:
        console.print(_results_table(result))
        console.print(f"results: {config.out / RESULTS_NAME}")
        for name, path in result.figures.items():
            console.print(f"{name}: {path}")
    if result.figure_errors:
        failed = ", ".join(f"{name} ({error})" for name, error in result.figure_errors.items())
        raise FigureError(f"figure(s) failed: {failed}; results.json is complete in {config.out}")
