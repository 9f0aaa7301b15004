#!/usr/bin/env bash
# The H200 figures of the README in one call of at most ~9 minutes, every result under OUT
# (default benchmarks/results). Each part runs under its own time limit and the whole under
# BUDGET_S (default 530 s); a part that fails or runs out of time is logged and the next one
# starts. PARTS picks and orders the parts (default: model eval stages tests loader autotune gputests):
#   model     `stadapt bench model --recipe k400_vitb --device cuda --steps 10 --warmup 3`, batch 32:
#             latency at batch 1 on CUDA graphs, training/inference against the reference path,
#             adapter overhead, with --profile
#   eval      `stadapt eval` end to end, 3 temporal views, on `prepare synthetic --frames 300
#             --size 340x256 --decode` data, at most 4 loader workers: GPU JPEG decoding, then CPU
#             decoding, each against `stadapt bench model` inference at the same batch (eval_vs_model);
#             EVAL_DECODES picks the decodings (default: gpu cpu)
#   stages    benchmarks/gpu_decode_stages.py: each stage of eval's GPU decoding timed alone (loader
#             workers, nvJPEG from 1, 2 and 4 threads, decode + views, workers + decode thread)
#   decoders  benchmarks/jpeg_decoders.py: eval's GPU decoding with torchvision's nvJPEG, nvImageCodec on the
#             hardware JPEG engines, and both sharing each batch: alone, with the model, and fed by the real
#             loader, against the model alone (DECODERS_ARGS: the script's --decoders)
#   views     benchmarks/gpu_decode_views.py: eval's loop with the model on all SMs (CUDA graphs) or on a green
#             context that leaves SMs to the decoder, from memory and from the real loader; the decoder call
#             alone and the kernels it launches
#   overlap   benchmarks/gpu_decode_overlap.py: whether nvJPEG waits for work queued elsewhere on the
#             device, and eval's consumer loop fed by the decode thread in several arrangements
#   train-e2e `stadapt train` of the K400 recipe for 60 steps on a prepared 8-class K400-like set,
#             CPU decoding in nproc-2 workers, then `stadapt bench run` against bench model (training
#             end to end vs model only: whether training would gain from GPU decoding)
#   tests     tests/test_gpu.py: CUDA graphs against eager, nvJPEG against the CPU path (TESTS_K: pytest's -k)
#   loader    `stadapt bench loader --workers 1` on the node's CPU (store size, PSNR, against the reference);
#             STORE=h264 prepares the H.264 store instead of the JPEG one (it needs more than 90 s)
#   autotune  bench model with --compile-mode max-autotune-no-cudagraphs (candidate against the default mode),
#             then benchmarks/autotune_choices.py: cuBLAS against the best Triton template per product
#   gputests  the rest of tests/test_gpu.py (fast path against fp32, side-stream copies)
#   freezing  (not in the default PARTS) bench model with TORCHINDUCTOR_FREEZING=1: inductor folds the
#             frozen weights into the inference graphs (candidate for inference and latency only)
#   coordesc  (not in the default PARTS) bench model with TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1: inductor
#             tunes the block sizes of its own (element-wise and reduction) kernels (candidate)
# At most 8 files come back from the GPU machine: h200.log plus at most 7 JSON files.
# Missing packages (open_clip, av, decord; nvImageCodec and libnvjpeg for the decoders part) travel as
# wheels in .whl/: benchmarks/fetch_wheels.sh fetches them within the 64 MiB a call carries.
set -u
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
LOG="$OUT/h200.log"
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1
DEADLINE=$(( $(date +%s) + ${BUDGET_S:-530} ))
PY=${PYTHON:-python3}
DAY=$(date -u +%Y%m%d)
# The card in the result files' names: the machine may be lent as an H100 or an H200.
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | grep -oiE 'h100|h200|a100' | tr A-Z a-z)
GPU=${GPU:-gpu}
DATA=data/k400like
RUN=runs/k400like-untrained
EVAL_SPLIT=evalrepeat  # the prepared videos listed REPEAT times, so eval runs long enough to time
STORE=${STORE:-jpeg}  # the frame store prepare writes (prepare --store): jpeg or h264
REPEAT=${REPEAT:-120}
EVAL_DECODES=${EVAL_DECODES:-gpu cpu}
PARTS=${PARTS:-model eval stages tests loader autotune gputests}

# part NAME SECONDS COMMAND...: COMMAND under min(SECONDS, time left); its exit status is logged.
part() {
    local name=$1 want=$2 left limit rc
    shift 2
    left=$(( DEADLINE - $(date +%s) ))
    if [ "$left" -lt 25 ]; then echo "== $name: skipped (${left}s left)"; return 0; fi
    limit=$(( want < left ? want : left ))
    echo "== $name: start $(date -u +%T), limit ${limit}s"
    timeout --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@"
    rc=$?
    echo "== $name: exit $rc$( [ $rc = 124 ] && echo ' (out of time)') at $(date -u +%T)"
    return 0
}

echo "== h200.sh $(date -u +%FT%TZ) parts: $PARTS"
nvidia-smi -L || true
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=${PYTHONPATH:-}
$PY -c "import torch, torchvision, open_clip, av, decord, typer; print('torch', torch.__version__, 'torchvision',
torchvision.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" || echo "== imports failed"
$PY -c "from nvidia import nvimgcodec; print('nvimgcodec', nvimgcodec.__version__)" 2>/dev/null \
    || echo "== no nvImageCodec: the decoders part measures torchvision's nvJPEG alone"
STADAPT="$PY -m stadapt"

model_part() {
    $STADAPT bench model --recipe k400_vitb --device cuda --steps 10 --warmup 3 --profile \
        --out "$OUT/model-k400_vitb-cuda-$GPU-$DAY.json"
}

prepare_data() {
    [ -f "$DATA/store/info.json" ] || $STADAPT prepare synthetic "$DATA/videos" --out "$DATA" --classes 4 \
        --videos-per-class 3 --frames 300 --size 340x256 --decode --store "$STORE" --workers "$(nproc)" || return 1
    $PY - "$DATA" "$EVAL_SPLIT" "$REPEAT" <<'EOF'
import sys
from pathlib import Path
root, split, repeat = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
lines = [(root / f"{s}.csv").read_text().splitlines() for s in ("train", "val")]
rows = lines[0][1:] + lines[1][1:]
(root / f"{split}.csv").write_text("\n".join([lines[0][0]] + rows * repeat) + "\n")
print(f"{root / split}.csv: {len(rows)} videos x {repeat}")
EOF
}

untrained_run() {  # a K400-recipe run directory with random adapters: eval's speed does not depend on them
    $PY - "$DATA" "$RUN" <<'EOF'
import sys
from pathlib import Path
import stadapt
from stadapt.data.manifest import PreparedDataset
from stadapt.model.artifact import save_adapter
data, run = sys.argv[1], Path(sys.argv[2])
names = PreparedDataset.open(data).classes("label")
recipe = stadapt.load_recipe("k400_vitb", ["model.pretrained=none", f"data.root={data}", "data.source=prepared",
                                           f"model.num_classes={len(names)}", "train.batch_size=48", "train.workers=4"])
run.mkdir(parents=True, exist_ok=True)
(run / "recipe.yaml").write_text(recipe.to_yaml())
print(save_adapter(stadapt.build_model(recipe), run / "adapter.safetensors", recipe, {"label": names}))
EOF
}

eval_with() {  # eval_with cpu|gpu: the eval report, copied to OUT
    $STADAPT eval "$RUN" --split "$EVAL_SPLIT" --decode "$1" \
        && cp "$RUN/eval-$EVAL_SPLIT.json" "$OUT/eval-k400like-$1-cuda-$GPU-$DAY.json"
}

eval_vs_model() {  # eval clips/s over bench model's inference clips/s at eval's batch, written into the eval JSONs
    # with the device, versions and date of the same run
    $PY - "$OUT/model-k400_vitb-cuda-$GPU-$DAY-b96.json" "$OUT"/eval-k400like-*-cuda-$GPU-"$DAY".json <<'EOF'
import json, sys
model = json.load(open(sys.argv[1]))
for path in sys.argv[2:]:
    report = json.load(open(path))
    report["model_only_clips_s"] = model["throughput_clips_s"]
    report["model_only_batch"] = model["batch_size"]
    report.update({key: model[key] for key in ("device_name", "versions", "date")})
    report["eval_vs_model"] = round(report["clips_per_s"] / model["throughput_clips_s"], 4) if report["clips_per_s"] else None
    json.dump(report, open(path, "w"), indent=2)
    print(f"{path}: decode {report['decode']}, {report['clips_per_s']} clips/s, eval_vs_model {report['eval_vs_model']}")
EOF
}

train_e2e() {  # needs the model part's JSON of this run for the ratio
    local data=data/k400like8 cores
    cores=$(nproc)
    $STADAPT prepare synthetic "$data/videos" --out "$data" --classes 8 --videos-per-class 6 --frames 300 \
        --size 340x256 --decode --workers "$cores" >/dev/null || return 1
    $STADAPT train recipes/k400_vitb.yaml --out runs/k400like-e2e --set model.pretrained=none \
        --set "data.root=$data" --set data.source=prepared --set model.num_classes=8 --set train.steps=60 \
        --set train.batch_size=32 --set "train.workers=$((cores - 2))" --set train.log_every=10 \
        --set train.eval_every=1000 --set train.save_every=1000 || return 1
    $STADAPT bench run runs/k400like-e2e --skip 2 --model-result "$OUT/model-k400_vitb-cuda-$GPU-$DAY.json" \
        --out "$OUT/run-k400_vitb-e2e-cuda-$GPU-$DAY.json"
}

export OUT DAY GPU DATA RUN EVAL_SPLIT REPEAT STORE PY STADAPT PYTHONPATH
export -f model_part prepare_data untrained_run eval_with eval_vs_model train_e2e
for p in $PARTS; do
    case $p in
        model) part model 240 model_part ;;
        eval)
            part prepare 120 prepare_data
            part untrained-run 60 untrained_run
            case " $EVAL_DECODES " in *" gpu "*) part eval-gpu 120 eval_with gpu ;; esac
            # eval's batch: 2 x train.batch_size 48 // 3 views = 32 videos = 96 clips
            part model-b96 200 $STADAPT bench model --recipe k400_vitb --device cuda --steps 10 --warmup 3 \
                --batch-size 96 --out "$OUT/model-k400_vitb-cuda-$GPU-$DAY-b96.json"
            case " $EVAL_DECODES " in *" cpu "*) part eval-cpu 100 eval_with cpu ;; esac
            part eval-vs-model 20 eval_vs_model ;;
        views)
            part prepare 120 prepare_data
            part views 240 $PY -m benchmarks.gpu_decode_views "$DATA" "$EVAL_SPLIT" \
                --out "$OUT/gpu-decode-views-$GPU-$DAY.json" ;;
        overlap)
            part prepare 120 prepare_data
            part overlap 240 $PY -m benchmarks.gpu_decode_overlap "$DATA" "$EVAL_SPLIT" ${OVERLAP_ARGS:-} \
                --out "$OUT/gpu-decode-overlap-$GPU-$DAY.json" ;;
        decoders)
            part prepare 120 prepare_data
            part decoders 300 $PY -m benchmarks.jpeg_decoders "$DATA" "$EVAL_SPLIT" ${DECODERS_ARGS:-} \
                --out "$OUT/jpeg-decoders-$GPU-$DAY.json" ;;
        stages)
            part prepare 120 prepare_data
            part stages 120 $PY -m benchmarks.gpu_decode_stages "$DATA" "$EVAL_SPLIT" \
                --out "$OUT/gpu-decode-stages-$GPU-$DAY.json" ;;
        train-e2e)
            part train-e2e 300 train_e2e ;;
        tests) part tests 150 $PY -m pytest tests/test_gpu.py -q -o addopts="" -p no:cacheprovider -rA -s \
                   -k "${TESTS_K:-graph_captured or jpeg_decoding}" ;;
        loader)
            part prepare 90 prepare_data
            part loader 150 $STADAPT bench loader --recipe k400_vitb --set "data.root=$DATA" --workers 1 \
                --out "$OUT/loader-k400_vitb-1worker-${GPU}node-$DAY$( [ "$STORE" = jpeg ] || echo "-$STORE").json" ;;
        autotune)
            part autotune 400 $STADAPT bench model --recipe k400_vitb --device cuda --steps 10 --warmup 3 \
                --compile-mode max-autotune-no-cudagraphs --out "$OUT/model-k400_vitb-cuda-$GPU-$DAY-autotune.json"
            part autotune-choices 20 $PY -m benchmarks.autotune_choices "$LOG" \
                --out "$OUT/autotune-choices-k400_vitb-$GPU-$DAY.json" ;;
        gputests) part gputests 240 $PY -m pytest tests/test_gpu.py -q -o addopts="" -p no:cacheprovider -rA -s \
                      -k "not graph_captured and not jpeg_decoding" ;;
        freezing) part freezing 300 env TORCHINDUCTOR_FREEZING=1 $STADAPT bench model --recipe k400_vitb --device cuda \
                      --steps 10 --warmup 3 --out "$OUT/model-k400_vitb-cuda-$GPU-$DAY-freezing.json" ;;
        coordesc) part coordesc 300 env TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1 $STADAPT bench model \
                      --recipe k400_vitb --device cuda --steps 10 --warmup 3 --profile \
                      --out "$OUT/model-k400_vitb-cuda-$GPU-$DAY-coordesc.json" ;;
        *) echo "== unknown part $p" ;;
    esac
done
echo "== done $(date -u +%T); files in $OUT:"
ls -la "$OUT"
sleep 1  # let tee write the end of the log
