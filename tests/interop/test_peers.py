"""Interop with the peers' own files: TRIDENT, CLAM and Patho-Bench writers and readers, re-implemented.

Each helper re-implements the peer's writer or reader lines with h5py/torch (cited by repository, file,
function and commit read), so these tests read and write files exactly as the peers do. Other interop
test modules import the helpers from here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from mvh.errors import UsageError
from mvh.interop import ExportConfig, ImportConfig, run_export, run_import
from mvh.store import EmbeddingStore
from tests.conftest import synthetic_fingerprint

DIM = 6


# ---------------------------------------------------------------- TRIDENT (mahmoodlab/TRIDENT @ a91fa84)
def trident_save_h5(save_path, assets, attributes=None, mode="w") -> None:
    """trident/IO.py `save_h5`: resizable datasets chunked by row, dict attrs as JSON, None as 'None'."""
    with h5py.File(save_path, mode) as file:
        for key, val in assets.items():
            data_shape = val.shape
            chunk_shape = (1,) + data_shape[1:]
            maxshape = (None,) + data_shape[1:]
            dset = file.create_dataset(
                key, shape=data_shape, maxshape=maxshape, chunks=chunk_shape, dtype=val.dtype
            )
            dset[:] = val
            if attributes is not None and key in attributes:
                for attr_key, attr_val in attributes[key].items():
                    if isinstance(attr_val, dict):
                        attr_val = json.dumps(attr_val)
                    elif attr_val is None:
                        attr_val = "None"
                    dset.attrs[attr_key] = attr_val


def trident_coords_to_h5(
    coords, save_path, patch_size, src_mag, target_mag, save_coords, width, height, name, overlap
):
    """trident/IO.py `coords_to_h5`: the coords file's attributes, patch_size_level0 by floor division."""
    coords_array = np.asarray(coords, dtype=np.int64)
    if coords_array.size == 0:
        coords_array = coords_array.reshape(0, 2)
    attributes = {
        "patch_size": patch_size,
        "patch_size_level0": patch_size * src_mag // target_mag,
        "level0_magnification": src_mag,
        "target_magnification": target_mag,
        "overlap": overlap,
        "name": name,
        "savetodir": save_coords,
        "level0_width": width,
        "level0_height": height,
    }
    trident_save_h5(save_path, assets={"coords": coords_array}, attributes={"coords": attributes}, mode="w")


def trident_read_coords(coords_path):
    """trident/IO.py `read_coords`."""
    with h5py.File(coords_path, "r") as f:
        attrs = dict(f["coords"].attrs)
        coords = f["coords"][:]
    return attrs, coords


def trident_patch_features(coords_path, save_features, name, features, encoder="uni_v1") -> Path:
    """trident/wsi_objects/WSI.py `extract_patch_features`: features + the coords file's coords and attrs.

    A slide without tiles gets `features` of shape (0,) when the encoder has no `embedding_dim`.
    """
    coords_attrs, coords = trident_read_coords(coords_path)
    if len(coords) == 0:
        coords = np.empty((0, 2), dtype=np.int64)
        features = np.empty((0,), dtype=np.float32)
    os.makedirs(save_features, exist_ok=True)
    path = Path(save_features) / f"{name}.h5"
    trident_save_h5(
        path,
        assets={"features": features, "coords": coords},
        attributes={
            "features": {"name": name, "savetodir": save_features, "encoder": encoder},
            "coords": coords_attrs,
        },
        mode="w",
    )
    return path


def trident_slide(
    job: Path,
    name: str,
    n: int,
    *,
    patch_size: int = 256,
    src_mag: int = 40,
    target_mag: int = 20,
    order: str = "row-major",
    dtype=np.float32,
    seed: int = 0,
) -> Path:
    """A TRIDENT features file of `n` tiles: coords job then patch-feature job, as TRIDENT runs them."""
    step = patch_size * src_mag // target_mag
    cols = 3
    grid = [(c * step, r * step) for r in range(-(-n // cols)) for c in range(cols)][:n]
    if order == "col-major":
        grid = sorted(grid)
    coords_dir = job / "20x_256px_0px_overlap"
    (coords_dir / "patches").mkdir(parents=True, exist_ok=True)
    coords_path = coords_dir / "patches" / f"{name}_patches.h5"
    trident_coords_to_h5(
        grid, coords_path, patch_size, src_mag, target_mag, str(coords_dir), 5000, 4000, name, 0
    )
    feats = np.random.default_rng(seed).normal(size=(n, DIM)).astype(dtype)
    return trident_patch_features(coords_path, str(coords_dir / "features_uni_v1"), name, feats)


def trident_reader_attrs(path: Path) -> dict:
    """What TRIDENT reads of a features file (WSI.extract_patch_features, extract_slide_features)."""
    coords_attrs, coords = trident_read_coords(path)
    patch_size = coords_attrs.get("patch_size", None)
    level0_magnification = coords_attrs.get("level0_magnification", None)
    target_magnification = coords_attrs.get("target_magnification", None)
    if None in (patch_size, level0_magnification, target_magnification):
        raise KeyError("Missing attributes in coords_attrs.")
    with h5py.File(path, "r") as f:
        features = f["features"][:]
    # slide_encoder_models/load.py: coords // int(batch['attributes']['patch_size_level0'])
    grid = coords // int(coords_attrs["patch_size_level0"])
    return {"attrs": coords_attrs, "coords": coords, "features": features, "grid": grid}


# ---------------------------------------------------------------- CLAM (mahmoodlab/CLAM @ 53e2409)
def clam_save_hdf5(output_path, asset_dict, attr_dict=None, mode="a", chunk_size=32) -> None:
    """utils/file_utils.py `save_hdf5`."""
    with h5py.File(output_path, mode) as file:
        for key, val in asset_dict.items():
            data_shape = val.shape
            if key not in file:
                chunk_shape = (chunk_size,) + data_shape[1:]
                maxshape = (None,) + data_shape[1:]
                dset = file.create_dataset(
                    key, shape=data_shape, maxshape=maxshape, chunks=chunk_shape, dtype=val.dtype
                )
                dset[:] = val
                if attr_dict is not None and key in attr_dict:
                    for attr_key, attr_val in attr_dict[key].items():
                        dset.attrs[attr_key] = attr_val
            else:
                dset = file[key]
                dset.resize(len(dset) + data_shape[0], axis=0)
                dset[-data_shape[0] :] = val


def clam_extract(
    feat_dir: Path, slide_id: str, features: np.ndarray, coords: np.ndarray, batch: int = 4
) -> None:
    """extract_features_fp.py: batches appended to h5_files/<id>.h5 (coords int32), then pt_files/<id>.pt."""
    (feat_dir / "pt_files").mkdir(parents=True, exist_ok=True)
    (feat_dir / "h5_files").mkdir(parents=True, exist_ok=True)
    output_path = feat_dir / "h5_files" / f"{slide_id}.h5"
    mode = "w"
    for start in range(0, len(features), batch):
        asset_dict = {
            "features": features[start : start + batch].astype(np.float32),
            "coords": coords[start : start + batch].astype(np.int32),
        }
        clam_save_hdf5(output_path, asset_dict, attr_dict=None, mode=mode)
        mode = "a"
    with h5py.File(output_path, "r") as file:
        feats = file["features"][:]
    torch.save(torch.from_numpy(feats), feat_dir / "pt_files" / f"{slide_id}.pt")


def clam_dataset_item(data_dir: Path, slide_id: str, use_h5: bool):
    """dataset_modules/dataset_generic.py `Generic_MIL_Dataset.__getitem__` (the feature part)."""
    if not use_h5:
        full_path = os.path.join(data_dir, "pt_files", f"{slide_id}.pt")
        return torch.load(full_path)
    full_path = os.path.join(data_dir, "h5_files", f"{slide_id}.h5")
    with h5py.File(full_path, "r") as hdf5_file:
        features = hdf5_file["features"][:]
        coords = hdf5_file["coords"][:]
    return torch.from_numpy(features), coords


# ---------------------------------------------------- Patho-Bench (mahmoodlab/Patho-Bench @ 660e770)
def patho_bench_load(load_from: Path) -> dict:
    """datasets/PatchEmbeddingsDataset.py (slide id = file stem), BaseDataset.load_h5(features, coords)."""
    out = {}
    for file in os.listdir(load_from):
        if file.endswith(".h5"):
            slide_id = os.path.splitext(file)[0]
            with h5py.File(os.path.join(load_from, file), "r") as f:
                keys = ["features", "coords"]
                assets = {key: f[key][:] for key in keys}
                attributes = {key: dict(f[key].attrs) for key in keys}
            patch_size_level0 = (
                attributes["coords"]["patch_size_level0"]
                if "patch_size_level0" in attributes["coords"]
                else None
            )
            out[slide_id] = (assets, patch_size_level0)
    return out


# ---------------------------------------------------------------- helpers
def h5_content(path: Path) -> dict:
    """dtype, shape, values and attributes (type, dtype, value) of the `features` and `coords` datasets."""
    out = {}
    with h5py.File(path, "r") as f:
        for key in ("features", "coords"):
            ds = f[key]
            attrs = {
                k: (type(v).__name__, np.asarray(v).dtype.str, np.asarray(v).tolist())
                for k, v in ds.attrs.items()
            }
            out[key] = (ds.dtype.str, ds.shape, ds[()].tolist(), attrs)
    return out


def make_mvh_store(uri: Path) -> EmbeddingStore:
    """A store as `mvh extract` fills it: slides a (7 tiles), b (4), 224 px at 0.5 um/px, 0.25 um/px scans."""
    fp = synthetic_fingerprint(DIM, model="tiny", model_config={"depth": 2}, mean=(0.5,) * 3, std=(0.2,) * 3)
    store = EmbeddingStore.create(uri, fp)
    rng = np.random.default_rng(0)
    for sid, n in (("a", 7), ("b", 4)):
        x, y = (np.arange(n) % 3) * 448, (np.arange(n) // 3) * 448
        tiles = pd.DataFrame(
            {
                "tile_id": [f"{sid}:{a}:{b}:448" for a, b in zip(x, y, strict=True)],
                "x": x,
                "y": y,
                "tile_px": 224,
                "mpp": 0.5,
                "tissue_fraction": np.linspace(0.3, 1.0, n, dtype=np.float32),
            }
        )
        record = {
            "slide_id": sid,
            "path": f"/data/{sid}.svs",
            "size": 123,
            "width": 4000,
            "height": 3000,
            "mpp": 0.25,
            "mpp_source": "openslide",
            "seconds": 1.0,
        }
        store.add_slide(record, tiles, rng.normal(size=(n, DIM)).astype(np.float32))
    store.add_failed_slide({"slide_id": "c", "path": "/data/c.svs"}, "no tissue")
    return store


@pytest.fixture()
def mvh_store(tmp_path) -> EmbeddingStore:
    """An mvh-made store (see `make_mvh_store`)."""
    return make_mvh_store(tmp_path / "mvh.lance")


def do_import(folder: Path, store: Path, model: str | None = "uni_v1", **flags):
    """`mvh import` of `folder` into `store`, by default with --model uni_v1 (what `trident_slide` names)."""
    return run_import(ImportConfig(folder, str(store), model, **flags))


# ---------------------------------------------------------------- tests
@pytest.fixture()
def trident_dir(tmp_path) -> Path:
    job = tmp_path / "job"
    trident_slide(job, "s1", 7, seed=1)
    trident_slide(job, "s2", 5, seed=2, order="col-major")
    trident_slide(job, "s0_empty", 0)
    return job / "20x_256px_0px_overlap" / "features_uni_v1"


def test_trident_round_trip_is_attribute_and_value_identical(trident_dir, tmp_path) -> None:
    result = do_import(trident_dir, tmp_path / "s.lance")
    assert result.exit_code == 0 and not result.failed
    assert result.empty == ["s0_empty"]
    out = run_export(ExportConfig(str(tmp_path / "s.lance"), tmp_path / "out", "h5"))
    assert sorted(Path(p).name for p in out.files) == ["s0_empty.h5", "s1.h5", "s2.h5"]
    for name in ("s0_empty", "s1", "s2"):
        assert h5_content(tmp_path / "out" / f"{name}.h5") == h5_content(trident_dir / f"{name}.h5"), name


def test_float16_features_and_their_dtype_survive(tmp_path) -> None:
    folder = trident_slide(tmp_path / "job", "half", 4, dtype=np.float16).parent
    do_import(folder, tmp_path / "s.lance")
    run_export(ExportConfig(str(tmp_path / "s.lance"), tmp_path / "out"))
    assert h5_content(tmp_path / "out" / "half.h5") == h5_content(folder / "half.h5")


def test_trident_geometry_is_kept_not_replaced_by_the_tile_size(trident_dir, tmp_path) -> None:
    # The case: 40x slide, 256 px at 20x -> patch_size_level0 512 must survive (it became 256).
    do_import(trident_dir, tmp_path / "s.lance")
    store = EmbeddingStore.open(tmp_path / "s.lance")
    fp = store.fingerprint
    assert (fp.tile_px, fp.mpp, fp.model) == (256, 0.5, "external:uni_v1")  # 10 / 20x
    row = store.slides().set_index("slide_id").loc["s1"]
    assert row["mpp"] == 0.25 and row["width"] == 5000 and row["height"] == 4000  # 10 / 40x
    assert all(t.endswith(":512") for t in store.slide_tiles("s1")["tile_id"])
    assert store.slide_attrs("s1")["geometry"]["patch_size_level0"] == 512
    run_export(ExportConfig(str(tmp_path / "s.lance"), tmp_path / "out"))
    assert trident_reader_attrs(tmp_path / "out" / "s1.h5")["attrs"]["patch_size_level0"] == 512


def test_mvh_export_reads_as_trident_patho_bench_and_clam(tmp_path, mvh_store) -> None:
    run_export(ExportConfig(str(mvh_store.uri), tmp_path / "h5"))
    read = trident_reader_attrs(tmp_path / "h5" / "a.h5")
    attrs = read["attrs"]
    emb, coords = mvh_store.slide_embeddings("a")
    np.testing.assert_array_equal(read["features"], emb)
    np.testing.assert_array_equal(read["coords"], coords)
    assert attrs["patch_size"] == 224 and attrs["patch_size_level0"] == 448
    assert attrs["level0_magnification"] == 40 and attrs["target_magnification"] == 20  # 10/0.25, 10/0.5
    assert attrs["patch_size"] * attrs["level0_magnification"] // attrs["target_magnification"] == 448
    assert attrs["overlap"] == 0 and attrs["name"] == "a" and attrs["savetodir"] == "h5"
    assert attrs["level0_width"] == 4000 and attrs["level0_height"] == 3000
    np.testing.assert_array_equal(read["grid"], coords // 448)
    with h5py.File(tmp_path / "h5" / "a.h5", "r") as f:
        assert dict(f["features"].attrs) == {
            "name": "a",
            "savetodir": "h5",  # the folder's name: no local path is shared
            "encoder": "tiny",
        }
    bench = patho_bench_load(tmp_path / "h5")
    assert sorted(bench) == ["a", "b"] and bench["a"][1] == 448
    np.testing.assert_array_equal(bench["b"][0]["features"], mvh_store.slide_embeddings("b")[0])


def test_clam_export_layout_reads_in_clam_training_code(tmp_path, mvh_store) -> None:
    result = run_export(ExportConfig(str(mvh_store.uri), tmp_path / "clam", "clam"))
    assert sorted(Path(p).relative_to(tmp_path / "clam").as_posix() for p in result.files) == [
        "h5_files/a.h5",
        "h5_files/b.h5",
        "pt_files/a.pt",
        "pt_files/b.pt",
    ]
    for sid in ("a", "b"):
        emb, coords = mvh_store.slide_embeddings(sid)
        pt = clam_dataset_item(tmp_path / "clam", sid, use_h5=False)
        assert pt.dtype == torch.float32 and torch.equal(pt, torch.from_numpy(emb.copy()))
        feats, got_coords = clam_dataset_item(tmp_path / "clam", sid, use_h5=True)
        assert torch.equal(feats, torch.from_numpy(emb.copy()))
        np.testing.assert_array_equal(got_coords, coords)


def test_clam_files_need_all_three_flags_then_import(tmp_path) -> None:
    feats = np.random.default_rng(3).normal(size=(9, DIM)).astype(np.float32)
    coords = np.array([[x * 512, y * 512] for y in range(3) for x in range(3)])
    clam_extract(tmp_path / "feats", "slide1", feats, coords)
    folder = tmp_path / "feats" / "h5_files"
    # Before: one missing attribute per run, so a CLAM folder took three failed runs to import.
    with pytest.raises(UsageError) as err:
        do_import(folder, tmp_path / "x.lance")
    assert str(err.value) == (
        f"{folder / 'slide1.h5'}: attributes `patch_size` and `target_magnification` (or mvh's `mpp`) and "
        "`patch_size_level0` (or `level0_magnification`) are missing; pass --tile-px (tile px of these "
        "features) and --mpp (um/px the tiles were embedded at) and --slide-mpp (level-0 um/px of the slides)"
    )
    with pytest.raises(UsageError, match=r"`target_magnification` \(or mvh's `mpp`\) and `patch_size_le"):
        do_import(folder, tmp_path / "x.lance", tile_px=256)
    with pytest.raises(UsageError, match=r"attribute `patch_size_level0` \(or `level0_magnification`\) is "):
        do_import(folder, tmp_path / "x.lance", tile_px=256, mpp=0.5)
    assert not EmbeddingStore.exists(tmp_path / "x.lance")
    do_import(folder, tmp_path / "x.lance", tile_px=256, mpp=0.5, slide_mpp=0.25)
    store = EmbeddingStore.open(tmp_path / "x.lance")
    rows = store.slide_tiles("slide1")
    assert list(rows["tile_id"][:2]) == ["slide1:0:0:512", "slide1:512:0:512"]
    np.testing.assert_array_equal(store.slide_embeddings("slide1")[0], feats)
    result = run_export(ExportConfig(str(tmp_path / "x.lance"), tmp_path / "back", "clam"))
    with h5py.File(tmp_path / "back" / "h5_files" / "slide1.h5", "r") as f:
        assert f["coords"].dtype == np.int32  # as CLAM wrote it
    # What CLAM's file lacked is completed from the flags, so TRIDENT's readers take it too.
    attrs = trident_reader_attrs(tmp_path / "back" / "h5_files" / "slide1.h5")["attrs"]
    assert (attrs["patch_size"], attrs["patch_size_level0"]) == (256, 512)
    assert (attrs["level0_magnification"], attrs["target_magnification"]) == (40, 20)
    assert "mpp" not in attrs and any("lacked were added" in n for n in result.notes)
    # CLAM's files carry no slide size: left out, not the string "None" nor -1.
    with h5py.File(tmp_path / "back" / "h5_files" / "slide1.h5", "r") as f:
        assert not {"level0_width", "level0_height"} & set(f["coords"].attrs)
        assert not {"width", "height"} & set(f.attrs)
    assert store.slides()[["width", "height"]].isna().all().all()
    assert torch.equal(clam_dataset_item(tmp_path / "back", "slide1", False), torch.from_numpy(feats))


@pytest.mark.parametrize(
    ("drop", "attribute", "flag"),
    [
        (("target_magnification",), "target_magnification", "--mpp"),
        (("patch_size",), "patch_size", "--tile-px"),
        (("patch_size_level0", "level0_magnification"), "patch_size_level0", "--slide-mpp"),
    ],
)
def test_missing_trident_attribute_names_itself_and_its_flag(tmp_path, drop, attribute, flag) -> None:
    path = trident_slide(tmp_path / "job", "s", 3)
    with h5py.File(path, "a") as f:
        for key in drop:
            del f["coords"].attrs[key]
    with pytest.raises(UsageError) as err:
        do_import(path.parent, tmp_path / "x.lance")
    message = str(err.value)
    assert f"`{attribute}`" in message and flag in message
    other = {"patch_size", "target_magnification", "patch_size_level0"} - {attribute}
    assert not any(f"`{name}` is missing" in message for name in other)


def test_trident_file_without_mvh_mpp_attribute_imports(tmp_path) -> None:
    # Before: "no patch_size/mpp attributes" for every TRIDENT file (it has patch_size, not mvh's mpp).
    path = trident_slide(tmp_path / "job", "s", 3)
    assert do_import(path.parent, tmp_path / "x.lance").imported[0].n_tiles == 3


def test_flag_contradicting_the_file_is_refused(tmp_path) -> None:
    path = trident_slide(tmp_path / "job", "s", 3)
    with pytest.raises(UsageError, match="patch_size = 256 but --tile-px is 224"):
        do_import(path.parent, tmp_path / "x.lance", tile_px=224)
    assert do_import(path.parent, tmp_path / "x.lance", tile_px=256, mpp=0.5).exit_code == 0


def test_unknown_level0_resolution_is_said_not_guessed(tmp_path) -> None:
    path = trident_slide(tmp_path / "job", "s", 3)
    with h5py.File(path, "a") as f:
        del f["coords"].attrs["level0_magnification"]
    result = do_import(path.parent, tmp_path / "s.lance")
    store = EmbeddingStore.open(tmp_path / "s.lance")
    assert result.exit_code == 0 and np.isnan(store.slides()["mpp"].iloc[0])
    assert all(t.endswith(":512") for t in store.slide_tiles("s")["tile_id"])  # patch_size_level0 kept
    out = run_export(ExportConfig(str(tmp_path / "s.lance"), tmp_path / "out"))
    assert any("level0_magnification is not written" in n for n in out.notes)
    assert h5_content(tmp_path / "out" / "s.h5") == h5_content(path)


def test_scanner_resolution_gives_a_float_magnification(tmp_path) -> None:
    store = make_mvh_store(tmp_path / "s.lance")
    row = store.slides().set_index("slide_id").loc["a"].to_dict()
    tiles = store.slide_tiles("a")
    emb, _ = store.slide_embeddings("a")
    record = dict(row, slide_id="scan", mpp=0.2527)
    store.add_slide(record, tiles.assign(tile_id=[f"scan:{i}:0:443" for i in range(len(tiles))]), emb)
    run_export(ExportConfig(store.uri, tmp_path / "out"))
    attrs = trident_reader_attrs(tmp_path / "out" / "scan.h5")["attrs"]
    assert attrs["target_magnification"] == 20 and isinstance(attrs["target_magnification"], np.int64)
    assert isinstance(attrs["level0_magnification"], np.float64)
    assert attrs["level0_magnification"] == pytest.approx(10 / 0.2527)
    assert attrs["patch_size_level0"] == 443  # round(224 * 0.5 / 0.2527), the footprint the tiles used
    back = do_import(tmp_path / "out", tmp_path / "back.lance", model=None)
    assert back.exit_code == 0
    assert (
        EmbeddingStore.open(tmp_path / "back.lance").slides().set_index("slide_id").loc["scan", "mpp"]
        == 0.2527
    )


def test_trident_slide_features_are_not_taken_for_tiles(tmp_path) -> None:
    # WSI.extract_slide_features saves `features` squeezed to [D] beside the patch coords.
    folder = tmp_path / "slide_features_titan"
    folder.mkdir()
    trident_save_h5(
        folder / "s.h5",
        assets={"features": np.ones(DIM, np.float32), "coords": np.zeros((3, 2), np.int64)},
        attributes={"features": {"name": "s", "savetodir": str(folder)}},
    )
    result = do_import(folder, tmp_path / "x.lance", tile_px=256, mpp=0.5, slide_mpp=0.25)
    assert result.exit_code == 1 and "slide embedding, not tiles" in result.failed[0].error


def test_a_file_that_crashes_the_hdf5_library_fails_alone(tmp_path, monkeypatch):
    """A corrupt h5 can segfault HDF5 itself; the header probe runs in a child, so only that file fails."""
    import mvh.interop.trident as trident

    folder = tmp_path / "h5"
    folder.mkdir()
    made = trident_slide(tmp_path / "job", "good", 8)
    for name in ("a.h5", "crash.h5", "z.h5"):
        (folder / name).write_bytes(made.read_bytes())
    # The child probe: the same reads, plus a real segfault when it reaches crash.h5 (as HDF5 does).
    segfault = "    if path.endswith('crash.h5'):\n        import ctypes; ctypes.string_at(0)\n"
    crashing = trident._PROBE.replace("    try:\n", segfault + "    try:\n", 1)
    monkeypatch.setattr(trident, "_PROBE", crashing)
    crashed = trident.files_that_crash_hdf5(sorted(folder.glob("*.h5")))
    assert list(crashed) == [folder / "crash.h5"]
    assert "crashed the HDF5 library" in crashed[folder / "crash.h5"]
