"""HEST-Benchmark task folders, read as distributed (Hugging Face dataset MahmoodLab/hest-bench).

Layout of one task (e.g. `IDC/`), as HEST's `benchmark.py` reads it:

    TASK/
      splits/train_<i>.csv, test_<i>.csv   columns sample_id, patches_path, expr_path (relative to TASK);
                                           HEST runs i = 0 .. len(os.listdir(splits)) // 2 - 1
      var_50genes.json                     {"genes": [...]}: the target genes (HEST's default list)
      patches/<id>.h5                      img [N, 224, 224, 3], barcode [N, 1], coords [N, 2] (top-left)
      adata/<id>.h5ad                      raw counts; rows looked up by the patches file's barcodes

HEST embeds every patch of a sample's patches file (no in_tissue filter), takes `adata[barcodes][:, genes]`
with `log1p` (no library-size normalisation), and concatenates the samples of a split in the CSV's row
order. `read_bench_task` returns exactly that: the samples, their spot order, the gene list and, per fold,
the training and test sample ids in CSV order.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mvh.errors import DataError
from mvh.store.slide_ids import check_slide_id
from mvh.tasks.splits import Fold
from mvh.tasks.st_data import STSample

DEFAULT_GENES = "var_50genes.json"
_SPLIT = re.compile(r"^(train|test)_(\d+)\.csv$")


@dataclass(frozen=True)
class BenchTask:
    """One HEST-Benchmark task: its samples, gene list and fixed folds (sample ids in CSV row order)."""

    root: Path
    samples: list[STSample]
    genes: list[str]
    genes_file: Path
    folds: list[tuple[list[str], list[str]]]


def is_bench_task(path: Path) -> bool:
    """True when `path` is a folder with HEST-Benchmark's `splits/train_0.csv`."""
    return Path(path).is_dir() and (Path(path) / "splits" / "train_0.csv").is_file()


def read_gene_list(path: Path) -> list[str]:
    """Genes of a HEST gene-list JSON (`{"genes": [...]}`) or a text file with one gene per line."""
    if not path.is_file():
        raise DataError(f"{path}: gene list not found; pass --genes with a var_*genes.json or a text file")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not valid JSON ({exc}); HEST gene lists are {{\"genes\": [...]}}") \
                from None
        genes = data.get("genes") if isinstance(data, dict) else None
        if not isinstance(genes, list) or not all(isinstance(g, str) for g in genes):
            raise DataError(f"{path}: no 'genes' list of names; HEST gene lists are {{\"genes\": [...]}}")
    else:
        genes = [g.strip() for g in path.read_text().splitlines() if g.strip()]
    if not genes:
        raise DataError(f"{path}: the gene list is empty; give at least one gene")
    if len(set(genes)) != len(genes):
        dup = next(g for g in genes if genes.count(g) > 1)
        raise DataError(f"{path}: gene {dup!r} is listed twice; list each gene once")
    return list(genes)


def _split_files(root: Path) -> list[tuple[Path, Path]]:
    split_dir = root / "splits"
    found: dict[str, set[int]] = {"train": set(), "test": set()}
    for path in split_dir.iterdir():
        match = _SPLIT.match(path.name)
        if match:
            found[match.group(1)].add(int(match.group(2)))
    n = len(found["train"])
    if found["train"] != found["test"] or found["train"] != set(range(n)):
        raise DataError(f"{split_dir}: train_i.csv / test_i.csv must pair up for i = 0..k-1, found train "
                        f"{sorted(found['train'])} and test {sorted(found['test'])}; restore the splits")
    return [(split_dir / f"train_{i}.csv", split_dir / f"test_{i}.csv") for i in range(n)]


def _read_split(path: Path, root: Path, samples: dict[str, STSample]) -> list[str]:
    try:
        df = pd.read_csv(path, dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable split CSV ({exc}); restore it from HEST-Benchmark") from None
    missing = [c for c in ("sample_id", "patches_path", "expr_path") if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing columns {missing}; HEST splits: sample_id, patches_path, expr_path")
    ids = []
    for row in df.itertuples(index=False):
        sid = check_slide_id(str(row.sample_id), str(path))
        patches, h5ad = root / str(row.patches_path), root / str(row.expr_path)
        for file, column in ((patches, "patches_path"), (h5ad, "expr_path")):
            if not file.resolve().is_relative_to(root.resolve()) or not file.is_file():
                raise DataError(f"{path}: {column} {file} of sample {sid} is not a file inside {root}; "
                                "restore the task folder")
        sample = STSample(sid, h5ad, None, patches, f"own:{sid}", "unknown", None, "own", None)
        if samples.setdefault(sid, sample) != sample:
            raise DataError(f"{path}: sample {sid} points at other files than in another split; fix the CSVs")
        ids.append(sid)
    if not ids:
        raise DataError(f"{path}: the split lists no sample; restore it from HEST-Benchmark")
    return ids


def read_bench_task(root: Path, genes_file: Path | None = None) -> BenchTask:
    """Read a HEST-Benchmark task folder: samples (patches + adata), gene list and fixed folds."""
    root = Path(root)
    genes_file = Path(genes_file) if genes_file is not None else root / DEFAULT_GENES
    genes = read_gene_list(genes_file)
    samples: dict[str, STSample] = {}
    folds = []
    for train, test in _split_files(root):
        train_ids, test_ids = _read_split(train, root, samples), _read_split(test, root, samples)
        overlap = sorted(set(train_ids) & set(test_ids))
        if overlap:
            raise DataError(f"{test}: samples {overlap} are also in {train.name}; restore the task's splits")
        folds.append((train_ids, test_ids))
    return BenchTask(root, [samples[k] for k in sorted(samples)], genes, genes_file, folds)


def bench_folds(task: BenchTask, spots: pd.DataFrame) -> list[Fold]:
    """The task's folds over `spots` rows (column sample_id): samples in CSV order, spots in file order."""
    rows = spots.groupby("sample_id", sort=False).indices
    folds = []
    for i, (train_ids, test_ids) in enumerate(task.folds):
        train = np.concatenate([rows[s] for s in train_ids]).astype(np.int64)
        test = np.concatenate([rows[s] for s in test_ids]).astype(np.int64)
        folds.append(Fold(i, f"split{i}", train, test))
    return folds
