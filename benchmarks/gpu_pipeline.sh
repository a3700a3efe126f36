#!/usr/bin/env bash
# The pipeline benchmark on a GPU, in one go (under 5 minutes on one H100 with 16 cores):
#   bash benchmarks/gpu_pipeline.sh [WORKERS]
# Writes the 20x and 40x benchmark slides (synthetic texture when the sample slide is not on the
# machine), then runs benchmarks/pipeline.py with --device cuda: (a) mvh with the no-op model and with
# mv_hybrid in bf16 (random weights), (b) the decode limit, one repeat each; TRIDENT only when a
# checkout is given in TRIDENT_DIR. JSON lands in $OUT (or /tmp/pipeline-gpu).
set -euo pipefail
WORKERS="${1:-8}"
DEST="${OUT:-/tmp/pipeline-gpu}"
PY="${PYTHON:-python}"
mkdir -p "$DEST/slides"
export PYTHONPATH="${PYTHONPATH:-$(pwd)}"
SAMPLE=()
if [ -f shared/data/CMU-1-Small-Region.svs ]; then SAMPLE=(--sample shared/data/CMU-1-Small-Region.svs); else SAMPLE=(--synthetic); fi
timeout 150 "$PY" benchmarks/make_slides.py --out "$DEST/slides" "${SAMPLE[@]}"
TRIDENT=()
if [ -n "${TRIDENT_DIR:-}" ]; then TRIDENT=(--trident "$TRIDENT_DIR" --trident-deps "${TRIDENT_DEPS:-}"); fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$DEST/gpu.txt"
timeout 140 "$PY" benchmarks/pipeline.py "$DEST/slides/bench_20x.svs" "$DEST/slides/bench_40x.svs" \
  --device cuda --models noop,mv_hybrid --workers "$WORKERS" --batch-size 256 --repeats 1 "${TRIDENT[@]}" \
  --out "$DEST/gpu_pipeline.json"
