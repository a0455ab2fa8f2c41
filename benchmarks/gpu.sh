#!/usr/bin/env bash
# GPU embedding benchmark: run on a machine with CUDA (e.g. the lent H200), from the repo root.
# Prints encoder-only and end-to-end tiles/s (and their ratio) for CLAM's truncated
# ResNet-50 and a ViT-L/16-sized timm model (random weights: no hub needed).
# Record the figures and the hardware (nvidia-smi line) in the README.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
workers=${WORKERS:-8}
for enc in resnet50_trunc timm:vit_large_patch16_224; do
  echo "== $enc"
  python benchmarks/embedding.py --encoder "$enc" --weights random --device cuda \
    --batch-size "${BATCH:-256}" --workers "$workers" --slides 4 --tiles-side 24 \
    --repeats 2 --skip-rss
done
