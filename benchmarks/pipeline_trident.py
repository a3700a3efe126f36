"""TRIDENT's own extraction pipeline on one slide, timed; run by `benchmarks/pipeline.py` in a subprocess.

    PYTHONPATH=DEPS:TRIDENT python benchmarks/pipeline_trident.py SLIDE --workers 2 [--encoder noop|vit_s16]

Runs TRIDENT's source (a checkout on PYTHONPATH, never vendored) the way its `run_batch_of_slides.py`
does for one slide: `load_wsi` (OpenSlide), `segment_tissue` with its Otsu segmenter at the segmenter's
own magnification (1.25x), `extract_tissue_coords` at 20x / 224 px, and `extract_patch_features` with a
custom encoder: `noop` (zeros, the pipeline alone) or `vit_s16` (timm's ViT-S/16, random weights, the
same size as mvh's `vit_s12_dinov2`). Both encoders use TRIDENT's `get_eval_transforms` (ToTensor +
Normalize), as its own encoders do. TRIDENT sizes its DataLoader from the core count
(`int(0.75 * cores)`: one worker on 2 cores); `get_num_workers` is replaced so it uses `--workers`,
the count mvh gets. Prints one JSON line: stage seconds and the tile count.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
import trident.wsi_objects.WSI as trident_wsi
from trident import load_wsi
from trident.patch_encoder_models.utils.transform_utils import get_eval_transforms
from trident.segmentation_models import segmentation_model_factory

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class NoOpEncoder(torch.nn.Module):
    """A patch encoder that returns zeros [B, 384]: TRIDENT's pipeline without a model."""

    def __init__(self) -> None:
        super().__init__()
        self.enc_name = "noop"
        self.precision = torch.float32
        self.eval_transforms = get_eval_transforms(*IMAGENET)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Zeros [B, 384] for images x [B, 3, H, W]."""
        return x.new_zeros(x.shape[0], 384)


def vit_s16() -> torch.nn.Module:
    """timm's ViT-S/16 (random weights) with TRIDENT's transforms."""
    import timm

    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
    model.enc_name = "vit_s16"
    model.precision = torch.float32
    model.eval_transforms = get_eval_transforms(*IMAGENET)
    return model


def main() -> None:
    """Run TRIDENT on one slide and print its timings as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slide")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--encoder", choices=("noop", "vit_s16"), default="noop")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--mag", type=float, default=20.0)
    parser.add_argument("--patch-size", type=int, default=224)
    parser.add_argument("--min-tissue", type=float, default=0.25)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    trident_wsi.get_num_workers = lambda *_, **__: args.workers
    encoder = NoOpEncoder() if args.encoder == "noop" else vit_s16()
    with tempfile.TemporaryDirectory() as job:
        start = time.perf_counter()
        wsi = load_wsi(args.slide, lazy_init=False)
        segmenter = segmentation_model_factory("otsu")
        wsi.segment_tissue(
            segmenter,
            target_mag=segmenter.target_mag,
            job_dir=job,
            batch_size=args.batch_size,
            device=args.device,
            num_workers=args.workers,
        )
        segmented = time.perf_counter()
        coords = wsi.extract_tissue_coords(
            target_mag=args.mag,
            patch_size=args.patch_size,
            save_coords=job,
            min_tissue_proportion=args.min_tissue,
        )
        tiled = time.perf_counter()
        wsi.extract_patch_features(
            encoder, coords, save_features=f"{job}/features", device=args.device, batch_limit=args.batch_size
        )
        done = time.perf_counter()
        import h5py

        with h5py.File(f"{job}/features/{wsi.name}.h5") as f:
            n = int(f["features"].shape[0])
    print(
        json.dumps(
            {
                "tiles": n,
                "segment_s": segmented - start,
                "coords_s": tiled - segmented,
                "features_s": done - tiled,
                "seconds": done - start,
            }
        )
    )


if __name__ == "__main__":
    main()
