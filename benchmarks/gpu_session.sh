#!/usr/bin/env bash
# What featbench's CUDA paths do, in one sitting on a GPU machine: the gpu-marked tests, the
# training and extraction speed of featbench against plain PyTorch loops, and what ImageNet
# pretraining does for fine-tuning (frozen codes + SVM, fine-tuned network, SVM on the
# fine-tuned codes; from ImageNet weights and from random:0) on the embedded synthetic data.
#
# usage: benchmarks/gpu_session.sh OUTDIR
# env:   WEIGHTS=DIR   a folder holding torchvision's mobilenet_v2-b0353104.pth (IMAGENET1K_V1);
#                      without it the ImageNet half is skipped and says so
#        FRAMES=N (240) SUBJECTS=N (27) EPOCHS=N (10) INPUT=S (224) DEVICE=cuda|cpu (cuda)
#        SKIP_TESTS=1 SKIP_BENCH=1 SKIP_PRETRAIN=1 leave a part out
#        FB="python -m featbench" (how to call featbench)
# Every step has its own time limit and log (OUTDIR/<step>.log); a failed step does not stop
# the others. Results: OUTDIR/pretraining.csv and the logs.
set -u
OUT=${1:?usage: benchmarks/gpu_session.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1
FRAMES=${FRAMES:-240} SUBJECTS=${SUBJECTS:-27} EPOCHS=${EPOCHS:-10} INPUT=${INPUT:-224}
DEVICE=${DEVICE:-cuda} FB=${FB:-python -m featbench}
WS=${WS:-$(mktemp -d)}
export TORCH_HOME=$WS/torch
FBW="$FB --workspace $WS"  # (a workspace path without spaces)

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $(( $(date +%s) - t0 )) s"
  grep -v '%|' "$OUT/$name.log" | tail -n 6
}

step env 60 bash -c 'nvidia-smi -L; python -c "import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else \"\")"'
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  step gpu_tests 240 python -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py tests/test_transfer.py -rs
fi
for m in $( [ "${SKIP_BENCH:-0}" = 1 ] || echo cnn_f resnet50 tv:mobilenet_v2 ); do
  step "bench_finetune_${m//:/-}" 120 $FB bench finetune --model "$m" --batch-size 64 --steps 8 --repeat 3 --device "$DEVICE" --json
done

step data 300 $FBW data synth --subjects "$SUBJECTS" --frames "$FRAMES"
step align 300 $FBW align --dataset synth
for m in $( [ "${SKIP_BENCH:-0}" = 1 ] || echo alexnet resnet50 ); do
  step "bench_extract_${m}" 180 $FBW bench extract --model "$m" --frames 2048 --batch-size 256 --repeat 2 --device "$DEVICE" --json
done

# --- what pretraining does: tv:mobilenet_v2 from ImageNet and from random:0 ------------------
mkdir -p "$TORCH_HOME/hub/checkpoints"
SOURCES="random:0"
if [ -n "${WEIGHTS:-}" ] && [ -f "$WEIGHTS/mobilenet_v2-b0353104.pth" ]; then
  cp "$WEIGHTS/mobilenet_v2-b0353104.pth" "$TORCH_HOME/hub/checkpoints/"
  SOURCES="IMAGENET1K_V1 random:0"
else
  echo "== no mobilenet_v2-b0353104.pth in WEIGHTS: the ImageNet half is skipped"
fi
[ "${SKIP_PRETRAIN:-0}" = 1 ] && SOURCES=""
for w in $SOURCES; do
  tag=$( [ "$w" = random:0 ] && echo rand || echo inet )
  step "frozen_$tag" 300 bash -c "$FBW extract --model tv:mobilenet_v2 --weights $w --name mnv2-$tag --device $DEVICE --quiet && $FBW classify --model mnv2-$tag --clf svm --quiet"
  step "finetune_$tag" 240 $FBW finetune --model tv:mobilenet_v2 --weights "$w" --head multilabel --epochs "$EPOCHS" --input-size "$INPUT" --batch-size 64 --device "$DEVICE" --tag "$tag" --quiet
  model=$(ls -d "$WS"/results/synth/models/tv-mobilenet_v2__full__ft*"$tag"*/ 2>/dev/null | head -n 1)
  step "ftcodes_$tag" 300 bash -c "$FBW extract --model tv:mobilenet_v2 --weights '${model}model.safetensors' --name mnv2-ft-$tag --device $DEVICE --quiet && $FBW classify --model mnv2-ft-$tag --clf svm --quiet"
done
[ -f "$WS/results/synth/summary.csv" ] && python - "$WS" "$OUT" <<'EOF'
import sys, pandas as pd
ws, out = sys.argv[1:]
s = pd.read_csv(f"{ws}/results/synth/summary.csv")
cols = [c for c in ("run", "clf", "weights", "mean_f1", "seconds") if c in s.columns]
s[cols].to_csv(f"{out}/pretraining.csv", index=False)
print(s[cols].to_string(index=False))
EOF
cp -r "$WS"/results/synth/models/*/*.log.csv "$OUT"/ 2>/dev/null
echo "== workspace $WS"
