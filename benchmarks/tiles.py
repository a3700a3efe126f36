"""Tiles/s for reading + resizing tiles from the real sample slide: one process vs DataLoader workers.

    python benchmarks/tiles.py [--slide PATH] [--repeats 5] [--workers 2] [--batch-size 8]

Every tile of the slide's grid (min_tissue 0, so the whole slide) is decoded per pass; figures are medians
over passes (the first DataLoader pass, which starts the workers, is not counted).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from torch.utils.data import DataLoader

from mvh.extractor.dataset import TileDataset
from mvh.extractor.sample import sample_slide_path
from mvh.extractor.slide import open_slide
from mvh.extractor.tiling import TileGrid, make_tile_grid, read_tile


def single_process(grid: TileGrid, repeats: int) -> float:
    """Median tiles/s reading the grid in this process."""
    rates = []
    with open_slide(grid.slide_path) as slide:
        for _ in range(repeats):
            start = time.perf_counter()
            for i in range(len(grid)):
                read_tile(slide, grid, i)
            rates.append(len(grid) / (time.perf_counter() - start))
    return statistics.median(rates)


def data_loader(grid: TileGrid, repeats: int, workers: int, batch_size: int) -> float:
    """Median tiles/s through a DataLoader with `workers` processes (workers kept alive across passes)."""
    loader = DataLoader(
        TileDataset(grid), batch_size=batch_size, num_workers=workers, persistent_workers=True
    )
    rates = []
    for r in range(repeats + 1):
        start = time.perf_counter()
        n = sum(len(index) for _, index in loader)
        if r:
            rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    path = args.slide or sample_slide_path()
    print(f"slide: {path}")
    workers = f"{args.workers} workers"
    print(f"{'target':>16} {'tiles':>6} {'read px':>8} {'1 process':>12} {workers:>12} {'ratio':>6}")
    for mpp in (0.5, 1.0):
        with open_slide(path) as slide:
            grid = make_tile_grid(slide, mpp=mpp, tile_px=224, min_tissue=0.0)
        single = single_process(grid, args.repeats)
        multi = data_loader(grid, args.repeats, args.workers, args.batch_size)
        label = f"{mpp} um/px, 224 px"
        rates = f"{single:>10.0f}/s {multi:>10.0f}/s {multi / single:>5.2f}x"
        print(f"{label:>16} {len(grid):>6} {grid.read_px:>8} {rates}")


if __name__ == "__main__":
    main()
