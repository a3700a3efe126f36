"""`mvh eval survival`: attention-MIL survival from a cohort CSV, against a CoxPH baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from mvh.cli._app import console, err_console, eval_app, guarded, print_json


def _fmt(stats: dict[str, Any]) -> str:
    if stats["mean"] is None:
        return "n/a"
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def _results_table(results: dict[str, Any]) -> Table:
    from mvh.tasks.survival import MODELS

    table = Table(title=f"Survival: {results['settings']['n_patients']} patients, "
                        f"{results['settings']['n_events']} events, {results['settings']['folds']}-fold CV")
    table.add_column("model")
    table.add_column("C-index (mean ± std)", justify="right")
    table.add_column("Uno's C", justify="right")
    table.add_column("log-rank p", justify="right")
    table.add_column("folds")
    for m in MODELS:
        res = results[m]
        folds = " ".join("n/a" if c is None else f"{c:.3f}" for c in res["c_index"]["folds"])
        p = "n/a" if res["logrank_p"] is None else f"{res['logrank_p']:.3g}"
        table.add_row(m, _fmt(res["c_index"]), _fmt(res["uno_c"]), p, folds)
    return table


@eval_app.command("survival")
@guarded
def survival_cmd(
    cohort: Annotated[Path, typer.Option("--cohort", help="CSV: slide_id, patient_id, time, event[, site].")],
    store: Annotated[str, typer.Option("--store", help="Embedding store (`mvh extract` or `mvh import`).")],
    loss: Annotated[str, typer.Option("--loss", help="cox (partial likelihood) or nll (time bins).")] = "cox",
    bins: Annotated[int, typer.Option("--bins", help="Time bins for --loss nll.")] = 4,
    folds: Annotated[int, typer.Option("--folds", help="Patient-level cross-validation folds.")] = 5,
    epochs: Annotated[int, typer.Option("--epochs", help="Maximum ABMIL epochs per fold.")] = 20,
    lr: Annotated[float, typer.Option("--lr", help="AdamW learning rate.")] = 2e-4,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay.")] = 1e-4,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Patients per optimiser step.")] = 16,
    seed: Annotated[int, typer.Option("--seed", help="Seed of folds, sampling and initialisation.")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:i.")] = "auto",
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
    as_json: Annotated[bool, typer.Option("--json", help="Print results.json on stdout.")] = False,
) -> None:
    """Cross-validate gated-attention MIL and a CoxPH baseline; C-index, Kaplan-Meier and heatmap figures."""
    from mvh.tasks.survival import SurvivalConfig, run_survival

    config = SurvivalConfig(
        loss=loss, n_bins=bins, folds=folds, epochs=epochs, lr=lr, weight_decay=weight_decay,
        batch_size=batch_size, max_tiles=max_tiles or None, seed=seed, device=device,
    )
    with err_console.status("survival: reading the cohort") as status:
        results = run_survival(
            cohort, store, config, out, skip_missing=skip_missing, heatmap=heatmap,
            progress=lambda message, _step: status.update(f"survival: {message}"),
        )
    if as_json:
        print_json(results)
        return
    console.print(_results_table(results))
    skipped = results["settings"]["skipped_slides"]
    if skipped:
        console.print(f"skipped {len(skipped)} slide(s) absent from the store: {', '.join(skipped)}")
    dropped = results["settings"]["dropped_patients"]
    if dropped:
        console.print(f"dropped {len(dropped)} patient(s) left without slides: {', '.join(dropped)}")
    console.print(f"results: {results['results_path']}")
    for name, path in results["figures"].items():
        console.print(f"{name}: {path}")
