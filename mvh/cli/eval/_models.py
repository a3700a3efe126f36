"""Options shared by `mvh eval st` and `mvh eval classify`: which models/stores to evaluate.

Models come from `--model NAME` / `--models a,b,c` (a store per model under `--store-dir`, created or
reused; `--weights` per model as `name=path`, or one path for one model; `--random-init` for seeded random
weights) and/or `--store PATH` (existing stores, repeatable). Every model is evaluated on the same folds.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

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


_MODEL_OPT = typer.Option("--model", "--models", help="Backbone(s), repeatable or comma-separated: a,b,c.")
_STORE_OPT = typer.Option("--store", "--stores", help="Existing store(s) to read (repeatable).")
_WEIGHTS_OPT = typer.Option("--weights", help="Checkpoint: PATH (one model) or MODEL=PATH (repeatable).")
_SAMPLES_ARG = typer.Argument(help="Cohort folder(s) in the HEST layout, or .h5ad files.")
_META_OPT = typer.Option("--meta", help="CSV: sample_id, patient, study[, mpp].")
_JSON_OPT = typer.Option("--json", help="Print the results JSON instead of a table.")
_RANDOM_OPT = typer.Option("--random-init", help="Models without --weights use seeded random weights.")
