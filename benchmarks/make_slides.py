"""Write the pipeline benchmark's slides: Aperio-style pyramidal SVS at 20x and 40x from real H&E tissue.

    python benchmarks/make_slides.py [--out /tmp/pipeline-scratch/slides] [--sample SLIDE] [--scale 1.0]

Both slides cover the same 11.0 x 8.3 mm (22,080 x 16,560 px at 0.5 um/px; 44,160 x 33,120 px at
0.25 um/px): about 5,400 tissue tiles of 224 px at 0.5 um/px inside a rounded rectangle with glass
margins. The tissue is the densest 1,024 px crop of the sample slide (CMU-1-Small-Region.svs, 0.5 um/px),
tiled with mirroring; the 40x slide uses the same crop upsampled 2x (bicubic), so both show the same
tissue at their own resolution. Without the sample slide (a machine without network or ../shared),
`--synthetic` uses mvh's synthetic H&E texture instead. `--scale` shrinks both sides (a quick try).
The layout is `mvh.extractor.aperio_writer`, the module the extraction tests use for their small slides.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mvh.core.synthetic_slides import synthetic_he_rgb
from mvh.extractor.aperio_writer import texture_from_slide, write_aperio_slide
from mvh.extractor.sample import sample_slide_path

SLIDES = {"bench_20x": (22_080, 16_560, 0.5, 20, 1), "bench_40x": (44_160, 33_120, 0.25, 40, 2)}


def _synthetic(scale: int) -> np.ndarray:
    """mvh's synthetic H&E texture, 1,024 px rendered once and upsampled like the sample's crop."""
    texture = Image.fromarray(synthetic_he_rgb(1024, 1024, seed=0))
    return np.asarray(texture.resize((1024 * scale,) * 2, Image.Resampling.BICUBIC))


def main() -> None:
    """Write the slides and print their paths and sizes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/pipeline-scratch/slides"))
    parser.add_argument("--sample", type=Path, default=None, help="the real slide (default: mvh sample)")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--only", choices=sorted(SLIDES), default=None)
    parser.add_argument("--synthetic", action="store_true", help="synthetic texture, not the sample's tissue")
    args = parser.parse_args()
    sample = None if args.synthetic else (args.sample or sample_slide_path())
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (width, height, mpp, mag, up) in SLIDES.items():
        if args.only not in (None, name):
            continue
        step = 16 * up  # sides stay multiples of the deepest downsample
        w, h = (max(step, round(v * args.scale / step) * step) for v in (width, height))
        start = time.perf_counter()
        texture = texture_from_slide(sample, scale=up) if sample else _synthetic(up)
        path = write_aperio_slide(args.out / f"{name}.svs", texture, w, h, mpp, mag)
        size = path.stat().st_size / 2**20
        print(f"{path}: {w} x {h} px at {mpp} um/px, {size:.0f} MiB, {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
