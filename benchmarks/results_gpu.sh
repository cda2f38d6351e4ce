#!/usr/bin/env bash
# The GPU rows of docs/RESULTS.md in one command of under 10 minutes on one H100/H200: the study's three recipes
# and the four networks beyond it (lstm, gru, attention, resnet), SEEDS each, at their full recipes where the
# time allows. Not yet run on a GPU: the budget below is an estimate from docs/BENCHMARKS.md's H200 times
# (cnn 106 s, rnn 10 s, bilstm 29 s alone), not a measurement.
#   1. resnet (trainer=gpu_bf16: bf16, Lightning's loop, EMA) x SEEDS starts first and runs alongside the rest;
#   2. meanwhile, on the fast path (trainer=gpu_fast), each wave's runs at once (small networks leave most of the
#      GPU idle): rnn, bilstm, lstm, gru x SEEDS; then attention x SEEDS; then cnn x SEEDS (the longest);
#   3. every run has a time guard (trainer.max_time, under its wave's limit): a run that would outlast its
#      share stops, tests its best checkpoint, and its row says "reduced" with the epochs it trained;
#   4. `python -m fmnist.reproduce --collect` writes the rows into $OUT/docs (copies of docs/RESULTS.md and
#      results.json, the earlier rows kept), $OUT/metrics/ gets each run's metrics.json, and
#      $OUT/results_gpu.json each model's mean, its runs' fit times and the GPU-seconds per run (a wave's
#      wall time shared among the runs that ran in it).
# Setup as benchmarks/gpu.sh (cp312 wheels of hydra-core, omegaconf, antlr4 4.9.3, kornia, kornia-rs in WHEELS;
# the four .gz files in DATA):
#   WHEELS=.whl DATA=.whl/fashion-mnist OUT=/tmp/gpu bash benchmarks/results_gpu.sh
# A dry run of the plumbing on a CPU (tiny, not a measurement; the time guards need not be met there):
#   FAST=cpu_fast BF16=cpu SEEDS="1 2" ARGS="trainer.max_epochs=1 trainer.limit_train_batches=2
#   trainer.limit_val_batches=2 trainer.limit_test_batches=2" bash benchmarks/results_gpu.sh
set -u
OUT=${OUT:-outputs/results_gpu}
SEEDS=${SEEDS:-1 2 3}
FAST=${FAST:-gpu_fast}
BF16=${BF16:-gpu_bf16}
RUNS=outputs/results_gpu/runs
. "$(dirname "$0")/gpu_env.sh"
rm -rf "$RUNS" && mkdir -p "$RUNS" "$OUT/docs" "$OUT/logs"
cp docs/RESULTS.md docs/results.json "$OUT/docs/"
: > "$OUT/waves.txt"

guard() {  # guard SECONDS: Lightning's trainer.max_time, DD:HH:MM:SS
  printf "trainer.max_time=00:00:%02d:%02d" $(($1 / 60)) $(($1 % 60))
}

launch() {  # launch MODEL TRAINER LIMIT: one run per seed in the background (their pids in PIDS), its fit guarded
  local model=$1 trainer=$2 limit=$3 seed run  # to end 70 s before the limit; exit status and end time: <run>.ended
  for seed in $SEEDS; do
    run="$RUNS/$model/$seed"
    mkdir -p "$RUNS/$model"
    {
      timeout -k 20 "$limit" python3 -m fmnist.train model="$model" trainer="$trainer" seed="$seed" \
        "data.search_dirs=[$DATA]" data.root=/tmp/fmnist-data trainer.enable_progress_bar=false \
        hydra.run.dir="$run" "$(guard $((limit - 70)))" ${ARGS:-} > "$OUT/logs/$model-$seed.log" 2>&1
      echo "$? $(date +%s.%N)" > "$run.ended"
    } &
    PIDS+=($!)
  done
}

wave() {  # wave NAME LIMIT MODEL...: the models x SEEDS at once on the fast path, waited for
  local name=$1 limit=$2 model
  shift 2
  echo "$name $(date +%s.%N) $*" >> "$OUT/waves.txt"
  PIDS=()
  for model in "$@"; do launch "$model" "$FAST" "$limit"; done
  wait "${PIDS[@]}"
  echo "$name done: $(grep -l '^test accuracy' "$OUT"/logs/*.log 2>/dev/null | wc -l) runs tested so far" | tee -a "$OUT/gpu.txt"
}

echo "resnet $(date +%s.%N) resnet" >> "$OUT/waves.txt"
PIDS=()
launch resnet "$BF16" 520
RESNET=("${PIDS[@]}")
wave small 150 rnn bilstm lstm gru
wave attention 120 attention
wave cnn 240 cnn
wait "${RESNET[@]}"

mkdir -p "$OUT/metrics"
for file in "$RUNS"/*/*/metrics.json; do
  [ -e "$file" ] && cp "$file" "$OUT/metrics/$(basename "$(dirname "$(dirname "$file")")")-$(basename "$(dirname "$file")").json"
done
python3 -m fmnist.reproduce --collect "$RUNS" --docs "$OUT/docs" > "$OUT/reproduce.log" 2>&1
echo "reproduce exit $?" | tee -a "$OUT/gpu.txt"
python3 benchmarks/results_gpu.py "$RUNS" "$OUT/waves.txt" "$OUT/results_gpu.json" | tee -a "$OUT/gpu.txt"
