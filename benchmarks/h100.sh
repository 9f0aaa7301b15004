#!/usr/bin/env bash
# The GPU figures of the README, on one GPU node: end-to-end training on a prepared
# K400-like synthetic set (300 frames, 340x256) with the loader benchmark beside it, then
# the model benchmarks of the ViT-L/14 recipe (batch 32 and 64). Results land in RESULTS (default
# benchmarks/results). The ViT-B model benchmarks are `stadapt bench model --recipe
# k400_vitb|ssv2_vitb --device cuda`; this script reads the K400 one for the ratio.
# Knobs for a short device budget: VIDEOS_PER_CLASS (default 8), LOADER=0 skips the loader
# benchmark, VITL_TIMEOUT=0 skips ViT-L.
set -euo pipefail
RESULTS=${1:-benchmarks/results}
MODEL_RESULT=${MODEL_RESULT:-benchmarks/results/model-k400_vitb-cuda-h100-20261125-v6-profile.json}
STADAPT=${STADAPT:-python3 -m stadapt}
CORES=$(nproc)
if [ "${VIDEOS_PER_CLASS:-8}" -lt 6 ]; then  # the train split (80%) must hold one batch of 32
    echo "VIDEOS_PER_CLASS=${VIDEOS_PER_CLASS}: need at least 6 (8 classes, batch 32)" >&2; exit 2
fi
mkdir -p "$RESULTS"

$STADAPT prepare synthetic data/k400like/videos --out data/k400like --classes 8 --videos-per-class "${VIDEOS_PER_CLASS:-8}" \
    --frames 300 --size 340x256 --decode --workers "$CORES"
if [ "${LOADER:-1}" != 0 ]; then
    $STADAPT bench loader --recipe k400_vitb --set data.root=data/k400like --workers 1 \
        --out "$RESULTS/loader-k400_vitb-1worker-cuda-node.json"
fi
$STADAPT train recipes/k400_vitb.yaml --out runs/k400like-e2e \
    --set model.pretrained=none --set data.root=data/k400like --set data.source=prepared \
    --set model.num_classes=8 --set train.steps=100 --set train.batch_size=32 \
    --set train.workers=$((CORES - 2)) --set train.log_every=10 --set train.eval_every=1000 --set train.save_every=1000
$STADAPT bench run runs/k400like-e2e --skip 2 --model-result "$MODEL_RESULT" --out "$RESULTS/run-k400_vitb-e2e-cuda.json"
# ViT-L/14: at batch 32 against the reference path, then at 64, which only the fast path holds.
if [ "${VITL_TIMEOUT:-330}" != 0 ]; then
    timeout "${VITL_TIMEOUT:-330}" $STADAPT bench model --recipe k400_vitl --device cuda --steps 10 --warmup 3 \
        --out "$RESULTS/model-k400_vitl-cuda.json"
    timeout "${VITL_TIMEOUT:-330}" $STADAPT bench model --recipe k400_vitl --device cuda --steps 10 --warmup 2 \
        --batch-size 64 --out "$RESULTS/model-k400_vitl-cuda-b64.json"
fi
