"""TileDataset: global indexing over several grids, lazy per-process handles, DataLoader workers."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mvh.core.synthetic_slides import write_synthetic_slide
from mvh.extractor.dataset import TileDataset
from mvh.extractor.slide import open_slide
from mvh.extractor.tiling import make_tile_grid, read_tile


@pytest.fixture(scope="module")
def grids(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("dataset")
    a = write_synthetic_slide(folder / "a.tiff", 448, 448, 0.5, [(0, 0, 448, 448)], levels=2, seed=1)
    b = write_synthetic_slide(folder / "b.tiff", 672, 448, 0.25, [(0, 0, 448, 448)], levels=2, seed=2)
    out = []
    for path in (a, b):
        with open_slide(path) as slide:
            out.append(make_tile_grid(slide, mpp=0.5, tile_px=32))
    return out


def _expected(grids) -> list[np.ndarray]:
    tiles = []
    for grid in grids:
        with open_slide(grid.slide_path) as slide:
            tiles += [read_tile(slide, grid, i) for i in range(len(grid))]
    return tiles


def test_items_follow_the_grids_in_order(grids) -> None:
    ds = TileDataset(grids)
    assert (
        len(ds) == len(grids[0]) + len(grids[1]) == 196 + 49
    )  # 14 x 14 tiles of 32 px; 7 x 7 of the 64-px tiles on tissue
    assert ds.locate(0) == (0, 0) and ds.locate(196) == (1, 0) and ds.locate(len(ds) - 1) == (1, 48)
    expected = _expected(grids)
    for index in (0, 195, 196, len(ds) - 1):
        tile, i = ds[index]
        assert i == index and tile.dtype == np.uint8 and tile.shape == (32, 32, 3)
        np.testing.assert_array_equal(tile, expected[index])
    with pytest.raises(IndexError):
        ds[len(ds)]
    ds.close()


def test_transform_and_pickling(grids) -> None:
    ds = TileDataset(grids[0], transform=lambda t: torch.from_numpy(t).permute(2, 0, 1).float() / 255)
    x, _ = ds[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    clone = pickle.loads(pickle.dumps(TileDataset(grids)))  # handles already opened are not pickled
    np.testing.assert_array_equal(clone[5][0], TileDataset(grids)[5][0])


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_workers_read_every_tile_once(grids, workers: int) -> None:
    ds = TileDataset(grids)
    ds[0]  # a handle opened in the parent must not be reused by forked workers
    loader = DataLoader(ds, batch_size=64, num_workers=workers, shuffle=False)
    seen, batches = [], []
    for tiles, index in loader:
        assert tiles.dtype == torch.uint8 and tiles.shape[1:] == (32, 32, 3)
        seen.append(index)
        batches.append(tiles)
    index = torch.cat(seen).numpy()
    assert index.tolist() == list(range(len(ds)))
    np.testing.assert_array_equal(torch.cat(batches).numpy(), np.stack(_expected(grids)))
    ds.close()


def test_open_handles_are_bounded_and_reopened_on_demand(grids) -> None:
    ds = TileDataset([grids[0], grids[1], grids[0]], max_open_slides=1)
    expected = _expected([grids[0], grids[1], grids[0]])
    for index in (0, 196, 245, 5, 200):  # alternate between slides so handles are evicted and reopened
        tile, _ = ds[index]
        np.testing.assert_array_equal(tile, expected[index])
        assert len(ds._slides) == 1
    ds.close()
    with pytest.raises(ValueError, match="max_open_slides"):
        TileDataset(grids, max_open_slides=0)
