# Sourced by benchmarks/gpu.sh and speedrun_gpu.sh (set OUT first): the wheels the GPU machine lacks from
# WHEELS, unbuffered quiet Python, and the GPU, torch and lightning versions in $OUT/gpu.txt.
WHEELS=${WHEELS:-.whl}
DATA=${DATA:-/usr/share/datasets/fashion-mnist}
mkdir -p "$OUT"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1
python3 -c "import torch, lightning; print(torch.__version__, lightning.__version__)" >> "$OUT/gpu.txt"
