#!/usr/bin/env bash
# The main job on the real sample slide, as plain `mvh` commands a user can run by hand:
#   sample -> tile (+ preview) -> short DINOv2 pretraining of a tiny MV_Hybrid -> extract -> index -> search.
# Called by `make demo`. Usage: scripts/demo.sh [OUT_DIR]
set -euo pipefail
MVH=${MVH:-.venv/bin/mvh}
OUT=${1:-demo_out}
EPOCHS=${DEMO_EPOCHS:-12}
mkdir -p "$OUT"
start=$(date +%s)
step() { printf '\n== [%4ss] %s\n' "$(( $(date +%s) - start ))" "$*"; }

step "sample slide (../shared/data, the user cache, or a verified download)"
SLIDE=$("$MVH" sample --dest "$OUT")
echo "$SLIDE"

step "tissue detection and the tile grid at 0.5 um/px, 224 px (112 um), with a preview PNG"
"$MVH" tile "$SLIDE" --out "$OUT/tiles" --preview

step "DINOv2 pretraining of mv_hybrid_tiny on the slide's tiles ($EPOCHS epochs, CPU: about a minute)"
# The authors' recipe (see `mvh pretrain --print-config`) with explicit short settings: 12 of its 200 epochs
# (warm-ups keep their share), smaller crops, heads and batch, so that `make demo` stays under 3 minutes.
"$MVH" pretrain "$SLIDE" --out "$OUT/pretrain" --model mv_hybrid_tiny --epochs "$EPOCHS" --batch-size 32 \
  --lr 0.02 --global-size 128 --local-size 64 --local-crops 4 --prototypes 4096 --tile-px 256 --overlap 128 \
  --workers 0 --precision fp32 --set head_hidden_dim=512

step "extract tile embeddings with the pretrained teacher into a LanceDB store"
"$MVH" extract "$SLIDE" --model mv_hybrid_tiny --weights "$OUT/pretrain/teacher_checkpoint.pth" \
  --store "$OUT/embeddings.lance" --workers 1
"$MVH" info --store "$OUT/embeddings.lance"

step "FAISS index over the store"
"$MVH" index build --store "$OUT/embeddings.lance"

QUERY=${DEMO_QUERY:-../shared/data/he_tile_1000px.png}
if [ -f "$QUERY" ]; then
  step "search: the real 1000 px H&E tile against the store (top 5, montage PNG)"
  "$MVH" search --query "$QUERY" --store "$OUT/embeddings.lance" -k 5 --montage "$OUT/search_montage.png"
else
  step "search: a stored tile against the store (he_tile_1000px.png not found beside the slide)"
  TILE=$(.venv/bin/python -c "
import pyarrow.parquet as pq
t = pq.read_table('$OUT/tiles/$(basename "${SLIDE%.*}").tiles.parquet').to_pandas().iloc[0]
print(f'{t.slide_id}:{t.x}:{t.y}')")
  "$MVH" search --query-tile "$TILE" --store "$OUT/embeddings.lance" -k 5 --montage "$OUT/search_montage.png"
fi

step "done: outputs in $OUT/ (tiles/*.preview.png, pretrain/loss_curve.png, embeddings.lance, search_montage.png)"
