#!/usr/bin/env bash
# GPU embedding benchmark: run on a machine with CUDA (e.g. the lent H200), from the repo root.
# Prints encoder-only and end-to-end tiles/s (and their ratio) for CLAM's truncated
# ResNet-50 and a ViT-L/16-sized timm model (random weights: no hub needed), on generated
# 40x slides read at 20x (4 slides of ~460 tissue tiles each).
# Record the figures and the hardware (nvidia-smi line) as a dated entry in benchmarks/RESULTS.md.
# Knobs (environment): WORKERS reader processes (8), BATCH (256), TILES_SIDE (24),
# REPEATS (2), DEVICE (cuda), EXTRA (more embedding.py flags). On a CPU machine
# `DEVICE=cpu WORKERS=0 TILES_SIDE=3 REPEATS=1 BATCH=8 EXTRA=--skip-bf16` smoke-tests it.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available())"
for enc in resnet50_trunc timm:vit_large_patch16_224; do
  echo "== $enc"
  python benchmarks/embedding.py --encoder "$enc" --weights random --device "${DEVICE:-cuda}" \
    --batch-size "${BATCH:-256}" --workers "${WORKERS:-8}" --slides 4 \
    --tiles-side "${TILES_SIDE:-24}" --small-slides 0 --repeats "${REPEATS:-2}" --skip-rss ${EXTRA:-}
done
