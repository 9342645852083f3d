#!/usr/bin/env bash
# One small run of every kind, then `featbench predict` of each on one synthetic video, so that
# two code trees can be compared file by file (issue 32: behaviour unchanged by the one driver).
#
#   benchmarks/kinds_check.sh CODE_DIR WORKSPACE
#
# CODE_DIR: the featbench checkout to run (put first on PYTHONPATH); WORKSPACE: a fresh folder.
# Writes results/<ds>/... as the runs do and WORKSPACE/predict/<run>.csv per run. Compare two
# workspaces with benchmarks/kinds_compare.py. Pipeline check on synthetic data, not detectors.
set -euo pipefail
CODE=$(cd "$1" && pwd); WS=$2
export PYTHONPATH=$CODE
# torch's thread count otherwise follows the machine's load (featbench.core.threads), and a sum
# split over another number of threads differs in its last bits: a toy network whose scores are
# nearly constant then ranks its frames differently (its AUC moves, its decisions do not)
export FEATBENCH_THREADS=${FEATBENCH_THREADS:-1}
fb() { echo "+ featbench $*" >&2; python -m featbench --workspace "$WS" "$@"; }
fb data synth --subjects 27 --frames 40 >/dev/null
fb extract --model hog --region all --quiet >/dev/null
fb classify --clf lda --model hog --quiet
fb classify --clf svm --model hog --region auto --tune-threshold --quiet
fb classify --clf svm --model hog --protocol kfold:3 --quiet
fb classify --clf lstm --model hog --epochs 3 --quiet
fb classify --task intensity --clf ridge --model hog --quiet
fb classify --task intensity --clf svr --model hog --calibrate median --quiet
fb classify --task intensity --clf lstm --model hog --epochs 3 --quiet
fb finetune --model tv:mobilenet_v3_small --weights random:0 --input-size 48 --epochs 2 \
   --aus AU01,AU02,AU12 --quiet
fb ensemble --members hog__full__lda,hog__auto__svm__thr,hog__full__svm__kfold3 --name voteab
fb data synth --layout expression --subjects 6 --frames 1 >/dev/null
fb data synth --layout affwild2 --subjects 8 --frames 24 >/dev/null
fb transfer --backbone tv:mobilenet_v3_small --weights random:0 --input-size 48 --folds 3 \
   --epochs 1,1 --hidden 32,16 --quiet
mkdir -p "$WS/predict"
VIDEO=$WS/data/synth/Videos_LeftCamera/LeftVideoSN001_comp.avi
for run in $(python -c "import csv,sys; print(' '.join(r['run'] for r in csv.DictReader(open(sys.argv[1]))))" \
             "$WS/results/synth/summary.csv"); do
  fb predict "$VIDEO" --run "$run" --out "$WS/predict/$run.csv" --device cpu --quiet
done
fb predict "$VIDEO" --run tv-mobilenet_v3_small__full__transfer --dataset synth-affwild2 \
   --out "$WS/predict/transfer.csv" --device cpu --quiet
