"""HEST-Benchmark task folders as distributed, on a tiny task cut from the real sample slide.

The fixture writes the layout HEST's `benchmark.py` reads (mahmoodlab/HEST, src/hest/bench/benchmark.py,
`predict_folds` / `predict_single_split`): splits/train_i.csv and test_i.csv with sample_id, patches_path,
expr_path; var_50genes.json = {"genes": [...]}; patches/<id>.h5 with img [N, 224, 224, 3] uint8, coords
[N, 2] top-left and barcode [N, 1] bytes (the keys HEST's H5PatchDataset reads); adata/<id>.h5ad.
"""

from __future__ import annotations

import json

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

from mvh.errors import DataError, UsageError
from mvh.progress import FOLDS, SAMPLES, Event, Recorder
from mvh.tasks.hest_bench import is_bench_task, read_bench_task, read_gene_list
from mvh.tasks.st import STConfig, run_st
from mvh.tasks.stores import StoreSpec

MODEL = "vit_dinov2_tiny"
GENES = ["G5", "G1", "G3", "G7", "G2"]  # the task's list, deliberately not sorted
SPLITS = [(["S0", "S1"], ["S2", "S3"]), (["S3", "S2"], ["S1", "S0"])]


def _write_task(slide_path, root):
    import openslide

    slide = openslide.OpenSlide(str(slide_path))
    rng = np.random.default_rng(0)
    (root / "patches").mkdir(parents=True)
    (root / "adata").mkdir()
    (root / "splits").mkdir()
    for s in range(4):
        col0, row0 = 5 * (s % 2), 6 * (s // 2)
        grid = [((col0 + c) * 224, (row0 + r) * 224) for r in range(5) for c in range(4)]
        coords = np.array(grid, np.int64)
        imgs = np.stack([np.asarray(slide.read_region((int(x), int(y)), 0, (224, 224)).convert("RGB"))
                         for x, y in coords])
        barcodes = [f"S{s}-{i:02d}" for i in range(len(coords))]
        with h5py.File(root / "patches" / f"S{s}.h5", "w") as f:
            f.create_dataset("img", data=imgs)
            f.create_dataset("coords", data=coords)
            f.create_dataset("barcode", data=np.array([[b.encode()] for b in barcodes]))
        darkness = 1 - imgs.reshape(len(imgs), -1).mean(axis=1) / 255.0
        weights = np.linspace(-2, 2, 8)
        counts = rng.poisson(np.exp(1.0 + np.outer(darkness - darkness.mean(), weights) * 4))
        # The h5ad holds two extra spots the patches file lacks, in another order, and one patch spot
        # marked out of tissue: HEST looks rows up by the patches' barcodes and filters nothing.
        extra = rng.poisson(3.0, size=(2, 8))
        order = np.arange(len(barcodes))[::-1]
        obs = pd.DataFrame({"in_tissue": [0] + [1] * (len(barcodes) + 1)},
                           index=[barcodes[i] for i in order] + [f"S{s}-x1", f"S{s}-x2"])
        ad = anndata.AnnData(X=sp.csr_matrix(np.vstack([counts[order], extra]).astype(np.float32)), obs=obs,
                             var=pd.DataFrame(index=[f"G{i}" for i in range(8)]))
        ad.obsm["spatial"] = np.vstack([coords[order] + 112, [[0, 0], [0, 0]]]).astype(np.float64)
        ad.write_h5ad(root / "adata" / f"S{s}.h5ad")
    for i, (train, test) in enumerate(SPLITS):
        for name, ids in (("train", train), ("test", test)):
            pd.DataFrame({"sample_id": ids, "patches_path": [f"patches/{x}.h5" for x in ids],
                          "expr_path": [f"adata/{x}.h5ad" for x in ids]}).to_csv(
                root / "splits" / f"{name}_{i}.csv", index=False)
    (root / "var_50genes.json").write_text(json.dumps({"genes": GENES}))
    return root


@pytest.fixture(scope="module")
def task(sample_slide, tmp_path_factory):
    return _write_task(sample_slide, tmp_path_factory.mktemp("bench") / "TOY")


def test_read_task_as_distributed(task):
    assert is_bench_task(task) and not is_bench_task(task / "splits")
    bench = read_bench_task(task)
    assert bench.genes == GENES and bench.genes_file == task / "var_50genes.json"
    assert bench.folds == SPLITS
    assert [s.sample_id for s in bench.samples] == ["S0", "S1", "S2", "S3"]
    assert bench.samples[0].patches == task / "patches" / "S0.h5" and bench.samples[0].wsi is None


def _hest_split(X_by_sample, expr_by_sample, train, test, seed, n_components):
    """HEST's predict_single_split + train_test_reg lines re-typed (see tests/tasks/test_st.py): samples
    concatenated in CSV order, log1p float64, scaler -> PCA -> torch.Tensor -> lsqr ridge; np.mean of r."""
    import torch
    from scipy.stats import pearsonr
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    X_train = np.concatenate([X_by_sample[s] for s in train])
    X_test = np.concatenate([X_by_sample[s] for s in test])
    y_train = np.log1p(np.concatenate([expr_by_sample[s] for s in train]).astype(np.float64))
    y_test = np.log1p(np.concatenate([expr_by_sample[s] for s in test]).astype(np.float64))
    pipe = Pipeline([("scaler", StandardScaler()),
                     ("PCA", PCA(n_components=n_components, random_state=seed))])
    X_train, X_test = torch.Tensor(pipe.fit_transform(X_train)), torch.Tensor(pipe.transform(X_test))
    reg = Ridge(solver="lsqr", alpha=100 / (X_train.shape[1] * y_train.shape[1]), random_state=seed,
                fit_intercept=False, max_iter=1000).fit(X_train, y_train)
    preds = reg.predict(X_test)
    return float(np.mean([pearsonr(y_test[:, g], preds[:, g])[0] for g in range(y_test.shape[1])]))


def test_runs_the_fixed_splits_and_gene_list_as_hest(task, tmp_path):
    from mvh.store import EmbeddingStore

    uri = str(tmp_path / "store.lance")
    cfg = STConfig(inputs=(task,), stores=(StoreSpec(uri, model=MODEL, random_init=True),),
                   out_dir=tmp_path / "o", n_components=16, device="cpu")  # HEST's regressor and seed 1
    recorder = Recorder()
    result = run_st(cfg, progress=recorder)
    assert result.settings.splits == ["hest-bench"] and result.settings.seed == 1
    assert recorder.count(Event.TOTAL, SAMPLES) == recorder.count(Event.ADVANCE, SAMPLES) == 4
    assert recorder.count(Event.TOTAL, FOLDS) == recorder.count(Event.ADVANCE, FOLDS) == 2
    assert [d for e, _, _, d in recorder.calls if e is Event.NOTE] == result.notes
    folds = result.settings.folds_by_split["hest-bench"]
    assert [f.test_samples for f in folds] == [["S2", "S3"], ["S0", "S1"]]
    assert all(f.genes == GENES for f in folds)
    assert [(f.n_train, f.n_test) for f in folds] == [(40, 40), (40, 40)]  # every patch, none filtered
    assert any("HEST-Benchmark task TOY" in n for n in result.notes)
    # Independent reference: HEST's own pipeline on the stored embeddings (patches order) and the
    # h5ad rows looked up by the patches' barcodes.
    store = EmbeddingStore.open(uri)
    X_by, expr_by = {}, {}
    for s in ["S0", "S1", "S2", "S3"]:
        with h5py.File(task / "patches" / f"{s}.h5") as f:
            barcodes = [b[0].decode() for b in f["barcode"][:]]
        rows = store.rows_by_tile_ids(barcodes, with_embeddings=True)
        assert (rows["slide_id"] == s).all()
        X_by[s] = np.stack(rows["embedding"].to_list())
        ad = anndata.read_h5ad(task / "adata" / f"{s}.h5ad")
        expr_by[s] = ad[barcodes][:, GENES].X.toarray()
    expected = [_hest_split(X_by, expr_by, train, test, seed=1, n_components=16) for train, test in SPLITS]
    assert result.models[MODEL].splits["hest-bench"].pcc.folds == expected
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    assert saved == result.to_dict() and saved["job"] == "st"
    assert type(result).from_dict(saved).models[MODEL].splits["hest-bench"].pcc.folds == expected


def test_task_errors(task, tmp_path):
    import shutil

    broken = tmp_path / "T"
    shutil.copytree(task, broken)
    (broken / "splits" / "test_1.csv").unlink()
    with pytest.raises(DataError, match="must pair up"):
        read_bench_task(broken)
    (broken / "splits" / "test_1.csv").write_text(
        "sample_id,patches_path,expr_path\nS0,../../x.h5,adata/S0.h5ad\n")
    with pytest.raises(DataError, match="not a file inside"):
        read_bench_task(broken)
    (tmp_path / "g.json").write_text(json.dumps({"genes": ["A", "A"]}))
    with pytest.raises(DataError, match="twice"):
        read_gene_list(tmp_path / "g.json")
    from mvh.tasks.st import read_inputs

    spec = StoreSpec(str(tmp_path / "s.lance"))
    with pytest.raises(UsageError, match="fixed splits"):
        read_inputs(STConfig(inputs=(task,), stores=(spec,), split="random"))
    with pytest.raises(UsageError, match="drop --folds"):
        read_inputs(STConfig(inputs=(task,), stores=(spec,), folds=3))


def test_cli_runs_a_task_folder(task, tmp_path):
    from mvh.cli import app

    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["eval", "st", str(task), "--model", MODEL, "--random-init", "--device",
                                      "cpu", "--no-pca", "--out", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "hest-bench" in result.output and "note:" in result.output
    res = json.loads((out / "results.json").read_text())
    assert res["settings"]["split"] == "hest-bench" and res["settings"]["genes"] == GENES
