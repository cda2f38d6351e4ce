#!/usr/bin/env bash
# Every GPU measurement of docs/BENCHMARKS.md in one script (about 4 minutes on one H100, 6 with BENCH=1):
#   1. the study's full recipes on the fast path (trainer=gpu_fast): CNN 150 epochs, RNN 25, BiLSTM 20;
#   2. benchmarks/gpu_profile.py: one step's time eager, graphed, and in GPU kernels;
#   3. with BENCH=1, benchmarks/bench.py on the GPU: default Lightning path vs plain eager loop vs fast path.
# Needs torch, torchvision, lightning, torchmetrics, tensorboard, matplotlib, scikit-learn; hydra-core,
# omegaconf and antlr4-python3-runtime are installed from WHEELS when that folder holds them, and the
# four Fashion-MNIST .gz files are read from DATA. Results: JSON and logs under OUT.
#   WHEELS=.whl DATA=.whl/fashion-mnist OUT=/tmp/gpu bash benchmarks/gpu.sh
# A dry run of the script's plumbing on a CPU (tiny, not a measurement):
#   TRAIN_ARGS="trainer.accelerator=cpu trainer.max_epochs=1 trainer.limit_train_batches=2 trainer.limit_val_batches=2
#   trainer.limit_test_batches=2" BENCH_ARGS="--accelerator cpu --images 650 --epochs 2" bash benchmarks/gpu.sh
set -u
OUT=${OUT:-outputs/gpu}
. "$(dirname "$0")/gpu_env.sh"

# Full recipes: one run folder each under outputs/gpu_fast/<model>.
for model in cnn rnn bilstm; do
  start=$(date +%s.%N)
  timeout 200 python3 -m fmnist.train model=$model trainer=gpu_fast "data.search_dirs=[$DATA]" data.root=/tmp/fmnist-data \
    trainer.enable_progress_bar=false hydra.run.dir=outputs/gpu_fast/$model ${TRAIN_ARGS:-} > "$OUT/$model.log" 2>&1
  echo "$model exit $? wall $(python3 -c "import time; print(round(time.time() - $start, 1))") s" | tee -a "$OUT/gpu.txt"
done
python3 - "$OUT" <<'EOF'
import json, pathlib, sys
keep = ("model", "device", "epochs", "steps", "batch_size", "train/loss", "val/acc_best", "test/acc",
        "test/macro_f1", "train_seconds", "epoch_seconds", "diverged_epoch")
runs = {}
for model in ("cnn", "rnn", "bilstm"):
    path = pathlib.Path("outputs/gpu_fast") / model / "metrics.json"
    if path.exists():
        metrics = json.loads(path.read_text())
        runs[model] = {k: metrics[k] for k in keep if k in metrics}
pathlib.Path(sys.argv[1], "full_recipes.json").write_text(json.dumps(runs, indent=2) + "\n")
print(json.dumps({m: {k: r.get(k) for k in ("test/acc", "train_seconds")} for m, r in runs.items()}))
EOF

# Where a step's time goes (no Lightning): eager vs graphed step vs GPU kernel time; the CNN also in NCHW.
timeout 120 python3 benchmarks/gpu_profile.py --json "$OUT/profile.json" ${PROFILE_ARGS:-} > "$OUT/profile.log" 2>&1
timeout 60 python3 benchmarks/gpu_profile.py --models cnn --override model.channels_last=false \
  --json "$OUT/profile_nchw.json" ${PROFILE_ARGS:-} >> "$OUT/profile.log" 2>&1
echo "profile exit $?" | tee -a "$OUT/gpu.txt"

# Side by side on the full training set (3 epochs, first left out): default Lightning path, plain eager
# loop, fast path. Set BENCH=1 (about 2 more minutes).
if [ -n "${BENCH:-}" ]; then
  timeout 200 python3 benchmarks/bench.py --accelerator gpu --paths lightning plain fast --images 54000 --reps 1 \
    --epochs 3 --root /tmp/fmnist-data --out "$OUT/BENCHMARKS.md" --json "$OUT/bench.json" > "$OUT/bench.log" 2>&1
  echo "bench exit $?" | tee -a "$OUT/gpu.txt"
fi
