#!/usr/bin/env bash
# The speedrun's GPU measurements of docs/SPEEDRUN.md in one script (sized for under 10 minutes on one H100/H200):
#   1. each tier for many seeds through benchmarks/speedrun.py on trainer=gpu_fast (the first seed's time,
#      which pays cuDNN's autotuning, is reported apart; each seed pays its own graph capture), and the
#      93% tier's recipe in a plain eager PyTorch loop (the framework's share);
#   2. the study's CNN recipe (150 epochs) on the fast path with tf32=true.
# Setup as benchmarks/gpu.sh: hydra-core, omegaconf, antlr4, kornia and kornia-rs from WHEELS (cp312 wheels:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl \
#     hydra-core omegaconf kornia kornia-rs; pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3),
# the .gz files from DATA; JSON and logs under OUT.
#   WHEELS=.whl DATA=.whl/fashion-mnist OUT=/tmp/gpu bash benchmarks/speedrun_gpu.sh
# A dry run of the plumbing on a CPU (tiny, not a measurement):
#   TRAINER=cpu_fast SEEDS_93=2 SEEDS_94=1 SEEDS_95=1 RUN_ARGS="-o trainer.max_epochs=1 -o trainer.limit_train_batches=1
#   -o data.batches_per_step=2 -o trainer.limit_val_batches=1" CNN_ARGS="trainer.accelerator=cpu trainer.max_epochs=1
#   data.batches_per_step=2 trainer.limit_train_batches=1 trainer.limit_val_batches=1 trainer.limit_test_batches=1"
#   bash benchmarks/speedrun_gpu.sh
set -u
OUT=${OUT:-outputs/speedrun_gpu}
TRAINER=${TRAINER:-gpu_fast}
. "$(dirname "$0")/gpu_env.sh"
DATA_ARGS=(-o "data.search_dirs=[$DATA]" -o data.root=/tmp/fmnist-data)

tier() {  # tier EXPERIMENT SEEDS TIMEOUT [extra speedrun.py arguments]
  local experiment=$1 seeds=$2 limit=$3 name=$1
  shift 3
  timeout -k 20 "$limit" python3 benchmarks/speedrun.py --experiment "$experiment" --trainer "$TRAINER" --seeds "$seeds" \
    "${DATA_ARGS[@]}" ${RUN_ARGS:-} "$@" --json "$OUT/$name.json" > "$OUT/$name.log" 2>&1
  echo "$name exit $?: $(tail -n 3 "$OUT/$name.log" | tr '\n' ' ')" | tee -a "$OUT/gpu.txt"
}
tier speedrun "${SEEDS_93:-20}" 150 --plain
tier speedrun_94 "${SEEDS_94:-10}" 120
tier speedrun_95 "${SEEDS_95:-3}" 100

# The study's CNN recipe with TF32 convolutions and matmuls (TF32_RUNS="true false": also in full float32;
# torch's default, which docs/BENCHMARKS.md's 105.6 s ran with, is TF32 convolutions and float32 matmuls).
for tf32 in ${TF32_RUNS:-true}; do
  timeout -k 20 130 python3 -m fmnist.train model=cnn trainer=gpu_fast tf32=$tf32 "data.search_dirs=[$DATA]" \
    data.root=/tmp/fmnist-data trainer.enable_progress_bar=false hydra.run.dir=outputs/speedrun_gpu/cnn_tf32_$tf32 overwrite=true \
    ${CNN_ARGS:-} > "$OUT/cnn_tf32_$tf32.log" 2>&1
  echo "cnn tf32=$tf32 exit $?" | tee -a "$OUT/gpu.txt"
  cp outputs/speedrun_gpu/cnn_tf32_$tf32/metrics.json "$OUT/cnn_tf32_$tf32.json" 2>/dev/null
done
