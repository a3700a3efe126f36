"""Training data: folders of tile images or slides tiled on the fly, multi-crop views, resumable batching.

Randomness is keyed, not streamed: batch b of epoch e holds a fixed permutation slice, and a tile's crops
are drawn from a generator seeded by (seed, epoch, tile). A run resumed at step s therefore sees exactly
the batches the uninterrupted run would have seen, whatever the number of loader workers or ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from mvh.errors import DataError, UsageError
from mvh.progress import SLIDES, Event, Progress, report

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


def _mix(*keys: int) -> int:
    """A 63-bit seed from non-negative integer keys (stable across processes, unlike `hash`)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)
    return int(state[0]) >> 1


def keyed_generator(*keys: int) -> torch.Generator:
    """A CPU torch.Generator seeded from integer keys (seed, epoch, index, ...)."""
    return torch.Generator().manual_seed(_mix(*keys))


class TileImageFolder(Dataset):
    """Image files (png/jpg/tif...) found under folders, sorted: item i = uint8 [H, W, 3]."""

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = list(files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> np.ndarray:
        with Image.open(self.files[i]) as image:
            return np.asarray(image.convert("RGB"))


class SlideTiles(Dataset):
    """Tissue tiles of slides read on the fly (the extractor's tiler at `mpp`): item i = uint8 [H, W, 3]."""

    def __init__(
        self,
        slides: Sequence[Path],
        mpp: float,
        tile_px: int,
        min_tissue: float = 0.25,
        overlap: int = 0,
        progress: Progress | None = None,
        slide_mpp: float | None = None,
    ) -> None:
        from mvh.extractor.dataset import TileDataset
        from mvh.extractor.slide import open_slide
        from mvh.extractor.tiling import make_tile_grid

        grids = []
        report(progress, Event.TOTAL, SLIDES, len(slides))
        for path in slides:
            with open_slide(path, mpp=slide_mpp) as slide:
                grids.append(
                    make_tile_grid(slide, mpp=mpp, tile_px=tile_px, overlap=overlap, min_tissue=min_tissue)
                )
            report(progress, Event.ADVANCE, SLIDES, 1, f"tiled {path.name}")
        self.grids = grids
        self.tiles = TileDataset(grids)

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, i: int) -> np.ndarray:
        item = self.tiles[i]
        image = item[0] if isinstance(item, tuple) else item
        return np.asarray(image)


class Subset(Dataset):
    """The items of `base` at `indices`."""

    def __init__(self, base: Dataset, indices: Sequence[int]) -> None:
        self.base, self.indices = base, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.base[self.indices[i]]


class ConcatTiles(Dataset):
    """Several tile sources one after the other."""

    def __init__(self, parts: Sequence[Dataset]) -> None:
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])  # type: ignore[arg-type]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        part = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.parts[part][i - int(self.offsets[part])]


def build_tile_source(
    inputs: Sequence[Path],
    mpp: float = 0.5,
    tile_px: int = 256,
    min_tissue: float = 0.25,
    max_tiles: int | None = None,
    overlap: int = 0,
    progress: Progress | None = None,
    slide_mpp: float | None = None,
) -> Dataset:
    """Tiles from inputs: a folder = its tile images (recursive); a file = a slide tiled at `mpp`, `tile_px`.

    `slide_mpp` is the scan um/px of slides whose metadata lacks it (as `mvh extract --slide-mpp`).

    `overlap` (px at `mpp`) gives more, overlapping tiles from small slides. `max_tiles` keeps that many
    tiles evenly spread over the whole set (so a small run still covers every slide and region).
    """
    parts: list[Dataset] = []
    slides: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not files:
                raise DataError(
                    f"{path}: no tile images ({', '.join(IMAGE_SUFFIXES)}) found; pass a folder of tiles"
                )
            parts.append(TileImageFolder(files))
        elif path.is_file():
            slides.append(path)
        else:
            raise UsageError(f"{path}: no such file or folder; pass folders of tiles or slide files")
    if slides:
        parts.append(
            SlideTiles(
                slides, mpp=mpp, tile_px=tile_px, min_tissue=min_tissue, overlap=overlap, progress=progress,
                slide_mpp=slide_mpp,
            )
        )
    source: Dataset = parts[0] if len(parts) == 1 else ConcatTiles(parts)
    n = len(source)  # type: ignore[arg-type]
    if n == 0:
        raise DataError(f"{', '.join(map(str, inputs))}: no tiles; lower --min-tissue or check the inputs")
    if max_tiles is not None and max_tiles < n:
        source = Subset(source, np.linspace(0, n - 1, max_tiles).round().astype(int).tolist())
    return source


class MultiCropDataset(Dataset):
    """Keyed item (epoch, index) -> multi-crop views of tile `index`, drawn from (seed, epoch, index)."""

    def __init__(
        self, tiles: Dataset, augmentation: Callable[[np.ndarray, torch.Generator], dict], seed: int
    ) -> None:
        self.tiles, self.augmentation, self.seed = tiles, augmentation, seed

    def __len__(self) -> int:
        return len(self.tiles)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        return self.augmentation(self.tiles[index], keyed_generator(self.seed, epoch, index))


class StepBatchSampler(Sampler):
    """Batches of (epoch, index) keys for global steps [start, stop): this rank's share of each batch.

    Step s is batch s % steps_per_epoch of epoch s // steps_per_epoch; the global batch (`batch_size` x
    `world_size`) is a slice of a permutation seeded by (seed, epoch); an epoch's last incomplete batch
    is dropped. One sampler spans the whole run, so loader workers start once.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        start: int,
        stop: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.stop, self.rank, self.world_size = start, stop, rank, world_size
        self.steps_per_epoch = n // (batch_size * world_size)

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        global_batch = self.batch_size * self.world_size
        epoch, order = -1, []
        for step in range(self.start, self.stop):
            if step // self.steps_per_epoch != epoch:
                epoch = step // self.steps_per_epoch
                order = torch.randperm(self.n, generator=keyed_generator(self.seed, epoch)).tolist()
            b = step % self.steps_per_epoch
            chunk = order[b * global_batch : (b + 1) * global_batch]
            yield [(epoch, i) for i in chunk[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]]


def collate_multicrop(samples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack crops crop-major: global [2*B, 3, G, G] (all first crops, then all second), local [n*B, ...]."""
    n_global = len(samples[0]["global_crops"])
    n_local = len(samples[0]["local_crops"])
    out = {"global_crops": torch.stack([s["global_crops"][c] for c in range(n_global) for s in samples])}
    if n_local:
        out["local_crops"] = torch.stack([s["local_crops"][c] for c in range(n_local) for s in samples])
    else:
        out["local_crops"] = torch.empty(0)
    return out
