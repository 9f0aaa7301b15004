#!/usr/bin/env bash
# Data parallelism on one node of several GPUs, in two parts (PART=scaling|eval-ablate|all):
#   scaling      `stadapt train recipes/k400_vitb.yaml` under torchrun on 1, 2, 4, 8 GPUs (up to
#                the node's count) on a prepared K400-like synthetic set (300 frames, 340x256):
#                32 clips per GPU per step, 16 CPU cores per GPU for the loader (the one-GPU node's
#                share), then `stadapt bench run` for clips/s per GPU and the scaling efficiency
#                against one GPU: RESULTS/scaling-k400_vitb-<N>gpu.json;
#   eval-ablate  `stadapt eval` of the largest run by one process and by all GPUs, which must give
#                the same numbers and confusion matrix (RESULTS/eval-k400_vitb-<N>gpu.json), then
#                `stadapt ablate kernel` with two variants, one per GPU (runs/ablate-kernel/).
# Knobs: GPUS (default: all), STEPS (default 200), VIDEOS_PER_CLASS (default 16), MODEL_RESULT
# (JSON of `stadapt bench model --recipe k400_vitb`: the one-GPU run is also compared to it).
set -euo pipefail
RESULTS=${1:-benchmarks/results}
PART=${PART:-all}
GPUS=${GPUS:-$(nvidia-smi -L | wc -l)}
STEPS=${STEPS:-200}
STADAPT="python3 -m stadapt"
CORES_PER_GPU=$(( $(nproc) / GPUS < 16 ? $(nproc) / GPUS : 16 ))
DATA=(--set model.pretrained=none --set data.root=data/k400like --set data.source=prepared --set model.num_classes=8)
mkdir -p "$RESULTS"
stamp() { echo "[$(date +%T)] $*"; }  # where the time goes, in the log

counts() {  # 1 2 4 8, up to GPUS
    local n=1
    while [ "$n" -le "$GPUS" ]; do echo "$n"; n=$((n * 2)); done
}

if [ "$PART" = all ] || [ "$PART" = scaling ]; then
    stamp prepare
    $STADAPT prepare synthetic data/k400like/videos --out data/k400like --classes 8 \
        --videos-per-class "${VIDEOS_PER_CLASS:-16}" --frames 300 --size 340x256 --decode --workers "$(nproc)"
    for n in $(counts); do
        compare=()  # one GPU: against the model alone (MODEL_RESULT, if given); more: against one GPU
        [ "$n" -eq 1 ] && [ -n "${MODEL_RESULT:-}" ] && compare=(--model-result "$MODEL_RESULT")
        [ "$n" -gt 1 ] && compare=(--baseline "$RESULTS/scaling-k400_vitb-1gpu.json")
        stamp "train on $n GPU(s)"
        CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((n - 1))) taskset -c 0-$((n * CORES_PER_GPU - 1)) \
            python3 -m torch.distributed.run --standalone --nproc_per_node "$n" -m stadapt train recipes/k400_vitb.yaml \
            --out "runs/scale-${n}gpu" "${DATA[@]}" --set train.batch_size=$((32 * n)) \
            --set train.workers=$(( CORES_PER_GPU > 3 ? CORES_PER_GPU - 2 : 1 )) --set train.steps="$STEPS" --set train.log_every=10 \
            --set train.eval_every=1000000 --set train.save_every=1000000
        stamp "bench run on $n GPU(s)"
        $STADAPT bench run "runs/scale-${n}gpu" --skip 3 "${compare[@]}" --out "$RESULTS/scaling-k400_vitb-${n}gpu.json"
    done
fi

if [ "$PART" = all ] || [ "$PART" = eval-ablate ]; then
    run="runs/scale-${GPUS}gpu"
    stamp "eval by one process and by $GPUS"
    CUDA_VISIBLE_DEVICES=0 $STADAPT eval "$run"
    cp "$run/eval-val.json" "$run/eval-val-1process.json"
    cp "$run/confusion-val.csv" "$run/confusion-val-1process.csv"
    python3 -m torch.distributed.run --standalone --nproc_per_node "$GPUS" -m stadapt eval "$run"
    python3 - "$run" "$GPUS" "$RESULTS/eval-k400_vitb-${GPUS}gpu.json" <<'EOF'
import datetime, json, sys, torch
import stadapt
from stadapt.fileio import atomic_write_text
run, gpus, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
one, many = (json.load(open(f"{run}/eval-val{s}.json")) for s in ("-1process", ""))
same_matrix = open(f"{run}/confusion-val-1process.csv").read() == open(f"{run}/confusion-val.csv").read()
keys = ("top1", "top5", "mean_class_acc", "num_videos")
result = {"benchmark": "distributed-eval", "run_dir": run, "world_size": gpus,
          "one_process": {k: one[k] for k in keys}, "all_processes": {k: many[k] for k in keys},
          "equal": all(one[k] == many[k] for k in keys) and same_matrix, "same_confusion_matrix": same_matrix,
          "device": "cuda", "device_name": torch.cuda.get_device_name(0),
          "versions": {"stadapt": stadapt.__version__, "torch": torch.__version__, "cuda": torch.version.cuda},
          "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
atomic_write_text(out, json.dumps(result, indent=2) + "\n")
print(json.dumps(result))
sys.exit(0 if result["equal"] else 1)
EOF
    stamp "ablate on $GPUS GPUs"
    start=$(date +%s)
    $STADAPT ablate kernel --recipe recipes/k400_vitb.yaml --values 1x1x1,3x1x1 --out runs/ablate-kernel \
        "${DATA[@]}" --set train.batch_size=32 --set train.steps=50 --set train.log_every=10 \
        --set train.workers=$(( CORES_PER_GPU > 3 ? CORES_PER_GPU - 2 : 1 )) --set train.eval_every=1000000 --set train.save_every=1000000
    echo "ablate kernel, 2 variants on $GPUS GPUs: $(( $(date +%s) - start )) s wall"
fi
