"""`mvh eval st` (spatial-transcriptomics regression) and `mvh eval classify` (tile classification).

Models come from `--model NAME` / `--models a,b,c` (a store per model under `--store-dir`, created or
reused; `--weights` per model as `name=path`, or one path for one model; `--random-init` for seeded random
weights) and/or `--store PATH` (existing stores, repeatable). Every model is evaluated on the same folds.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from mvh.cli._app import console, err_console, eval_app, guarded, print_json
from mvh.errors import UsageError

if TYPE_CHECKING:
    from mvh.tasks.stores import StoreSpec


def _specs(
    models: list[str], stores: list[str], weights: list[str], random_init: bool, store_dir: Path
) -> list[StoreSpec]:
    from mvh.tasks.stores import StoreSpec

    names = [m.strip() for item in models for m in item.split(",") if m.strip()]
    by_model: dict[str, str] = {}
    for w in weights:
        if "=" in w:
            name, path = w.split("=", 1)
            by_model[name] = path
        elif len(names) == 1:
            by_model[names[0]] = w
        else:
            raise UsageError(f"--weights {w}: with several models write --weights MODEL=PATH")
    unknown = set(by_model) - set(names)
    if unknown:
        raise UsageError(f"--weights given for {sorted(unknown)}, which are not in --model/--models")
    specs = [
        StoreSpec(str(store_dir / f"{n}.lance"), model=n, weights=by_model.get(n),
                  random_init=random_init and n not in by_model)
        for n in names
    ]
    specs += [StoreSpec(s) for s in stores]
    if not specs:
        raise UsageError("no model given: pass --model NAME, --models a,b,c or --store PATH")
    return specs


def _fmt(mean: Any, std: Any = None) -> str:
    if mean is None or mean != mean:
        return "n/a"
    return f"{mean:.3f}" if std is None or std != std else f"{mean:.3f} ± {std:.3f}"


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
            cells += [_fmt(r["pcc_mean"], r["pcc_std"]), _fmt(r["pcc10_mean"], r["pcc10_std"]),
                      _fmt(r["mae_mean"]), _fmt(r["mse_mean"])]
        if compare:
            cells.append(_fmt(row["drop"]))
        table.add_row(*cells)
    return table


def _progress(enabled: bool):
    if not enabled:
        return None

    def report(event: str, n: int) -> None:
        err_console.print(f"[dim]{event}[/]", highlight=False)

    return report


_MODEL_OPT = typer.Option("--model", "--models", help="Backbone(s), repeatable or comma-separated: a,b,c.")
_STORE_OPT = typer.Option("--store", "--stores", help="Existing store(s) to read (repeatable).")
_WEIGHTS_OPT = typer.Option("--weights", help="Checkpoint: PATH (one model) or MODEL=PATH (repeatable).")
_SAMPLES_ARG = typer.Argument(help="Cohort folder(s) in the HEST layout, or .h5ad files.")
_META_OPT = typer.Option("--meta", help="CSV: sample_id, patient, study[, mpp].")
_JSON_OPT = typer.Option("--json", help="Print the results JSON instead of a table.")
_RANDOM_OPT = typer.Option("--random-init", help="Models without --weights use seeded random weights.")


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


def _classify_table(results: dict[str, Any]) -> Table:
    from mvh.tasks.classify import classify_table_rows

    s = results["settings"]
    table = Table(title=f"Tile classification: {s['n_tiles']} tiles, {len(results['classes'])} classes, "
                        f"split {s['split']}, seed {s['seed']}")
    for name in ("model", "method", "balanced acc", "weighted F1", "AUROC (macro OvR)"):
        table.add_column(name, justify="left" if name in ("model", "method") else "right")
    for row in classify_table_rows(results):
        table.add_row(row["model"], row["method"],
                      _fmt(row["balanced_accuracy_mean"], row["balanced_accuracy_std"]),
                      _fmt(row["weighted_f1_mean"], row["weighted_f1_std"]),
                      _fmt(row["auroc_mean"], row["auroc_std"]))
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
