"""Evidence that `mvh pretrain` learns: proxy-task accuracy of the pretrained tiny MV_Hybrid vs random init.

    python benchmarks/pretrain_evidence.py                      # trains the demo run if absent, then scores
    python benchmarks/pretrain_evidence.py --run demo_out/pretrain --json

The demo run is the `make demo` pretraining stage (tiny MV_Hybrid on the sample slide's tiles, a few
minutes on CPU). Scores (see mvh/pretrain/evidence.py): 4-region kNN and linear-probe accuracy, and top-1
retrieval of a tile's other augmented view, on the slide's non-overlapping 128 px tiles at 0.5 um/px.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mvh.pretrain.checkpoint import TEACHER_CHECKPOINT
from mvh.pretrain.config import load_config
from mvh.pretrain.evidence import evidence_for_run
from mvh.pretrain.train import run_pretrain

# The demo's pretraining stage; the same as
#   mvh pretrain SLIDE --out RUN --model mv_hybrid_tiny --epochs 12 --batch-size 32 --lr 0.02
#     --global-size 128 --local-size 64 --local-crops 4 --prototypes 4096 --tile-px 256 --overlap 128
#     --workers 0 --set head_hidden_dim=512
DEMO_SETTINGS = dict(
    model="mv_hybrid_tiny",
    epochs=12,
    batch_size=32,
    lr=0.02,
    global_size=128,
    local_size=64,
    local_crops=4,
    prototypes=4096,
    tile_px=256,
    overlap=128,
    workers=0,
    head_hidden_dim=512,
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--run", type=Path, default=Path("pretrain_evidence_run"), help="mvh pretrain run dir"
    )
    parser.add_argument("--slide", type=Path, default=None, help="slide (default: the sample slide)")
    parser.add_argument("--tile-px", type=int, default=128, help="evaluation tile side at 0.5 um/px")
    parser.add_argument("--json", action="store_true", help="print the evidence as JSON")
    args = parser.parse_args()
    if args.slide is None:
        from mvh.extractor.sample import sample_slide_path

        args.slide = sample_slide_path()
    train_seconds = None
    if not (args.run / TEACHER_CHECKPOINT).exists():
        start = time.perf_counter()
        run_pretrain(load_config(None, {**DEMO_SETTINGS, "inputs": [str(args.slide)], "out": str(args.run)}))
        train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    evidence = evidence_for_run(args.run, args.slide, tile_px=args.tile_px)
    result = {
        **evidence.to_dict(),
        "train_seconds": train_seconds,
        "eval_seconds": time.perf_counter() - start,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{evidence.n_tiles} tiles of {args.slide.name}; run {args.run}")
    print(f"{'task':<22}{'trained':>10}{'random':>10}{'chance':>10}")
    for key, chance in (("region_knn", "region"), ("region_linear", "region"), ("view_top1", "view_top1")):
        trained, random_init = getattr(evidence.trained, key), getattr(evidence.random_init, key)
        print(f"{key:<22}{trained:>10.3f}{random_init:>10.3f}{evidence.chance[chance]:>10.3f}")
    if train_seconds is not None:
        print(f"pretraining took {train_seconds:.0f} s")


if __name__ == "__main__":
    main()
