#!/usr/bin/env bash
# All GPU work of a lease in one command (docs/GPU.md): bash benchmarks/lease.sh [TIER ...]
#   tiers, in the order to run: concurrency beyond speedrun study tf32 profile bench
#   (default: beyond speedrun study tf32; concurrency goes first whenever a tier runs seeds side by side)
# On the GPU machine, with .whl/ from `make gpu-pack` carried beside the tree (run's carry: [".whl"]):
#   bash benchmarks/lease.sh beyond              # timeout_s 540; BUDGET=480 s for the tiers by default
# On the CPU, the same plumbing with tiny settings (not a measurement):
#   DRY=1 bash benchmarks/lease.sh
# Variables: OUT (default: $OUT of the GPU machine, else outputs/lease/<time>/out), WORK (run folders; default
# /tmp/fmnist-lease.XXXX, or beside OUT), WHEELS (.whl), DATA ($WHEELS/fashion-mnist, else the Debian package's),
# BUDGET (seconds), SEEDS ("1 2 3"; DRY: "1"), PYTHON (python3).
set -euo pipefail
export LEASE_START=${LEASE_START:-$(date +%s.%N)}  # the budget counts from here, the wheels' install included
# folders given relative to where the command was typed, made absolute before the cd to the repository
for name in OUT WORK WHEELS DATA; do
  if [ -n "${!name:-}" ]; then export "$name=$(realpath -m "${!name}")"; fi
done
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-.whl}
PYTHON=${PYTHON:-python3}
if [ -z "${OUT:-}" ]; then
  base=outputs/lease/$(date +%Y-%m-%d_%H-%M-%S)
  OUT=$base/out WORK=${WORK:-$base/work}
fi
WORK=${WORK:-$(mktemp -d /tmp/fmnist-lease.XXXXXX)}
mkdir -p "$OUT" "$WORK"
if [ -n "$(ls -A "$OUT")" ]; then
  echo "error: OUT=$OUT is not empty: the lease leaves only its own three files there. Fix: give an empty folder" >&2
  exit 2
fi
log() { echo "$*" | tee -a "$OUT/lease.log"; }
fail() { log "error: $*"; exit 3; }

DATA=${DATA:-$WHEELS/fashion-mnist}
[ -f "$DATA/train-images-idx3-ubyte.gz" ] || DATA=/usr/share/datasets/fashion-mnist
[ -f "$DATA/train-images-idx3-ubyte.gz" ] || fail "no Fashion-MNIST .gz files in $WHEELS/fashion-mnist or $DATA: run make gpu-pack and carry .whl"

# The wheels the GPU machine lacks, as it installs them: no index, no dependency resolution, into a folder.
compgen -G "$WHEELS/*.whl" >/dev/null || fail "no wheels in $WHEELS: run make gpu-pack and carry $WHEELS beside the tree"
SITE=$WORK/site
wheels=("$WHEELS"/*.whl)
version=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
if [ "$version" != 312 ]; then
  # DRY on another Python: the compiled wheels are built for the GPU machine's 3.12 and cannot load here, so
  # this Python keeps its own copy of those; every pure-Python wheel is installed and used as there.
  kept=()
  for w in "${wheels[@]}"; do
    case $(basename "$w") in *-py3-none-any.whl | *-py2.py3-none-any.whl) kept+=("$w") ;; *) log "lease: $(basename "$w") is built for cp312; this Python $version uses its own" ;; esac
  done
  wheels=("${kept[@]}")
fi
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" \
  >>"$OUT/lease.log" 2>&1 || fail "pip could not install the wheels of $WHEELS (lease.log has pip's message)"
export PYTHONPATH=$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
"$PYTHON" -c 'import fmnist, hydra, kornia, omegaconf, torch, lightning
print("lease: hydra", hydra.__version__, "from", hydra.__file__, "| kornia", kornia.__version__, "| torch", torch.__version__, "| lightning", lightning.__version__)' \
  >>"$OUT/lease.log" 2>&1 || fail "import fmnist, hydra, kornia failed with the packed wheels (lease.log has the traceback)"
tail -n 1 "$OUT/lease.log"

args=(--out "$OUT" --work "$WORK" --data "$DATA" --budget "${BUDGET:-480}")
if [ -n "${DRY:-}" ]; then
  args+=(--dry --seeds "${SEEDS:-1}")
else
  args+=(--seeds "${SEEDS:-1 2 3}")
fi
# stderr (a traceback too) also into lease.log, the file that comes back
"$PYTHON" benchmarks/lease.py "${args[@]}" "$@" 2> >(tee -a "$OUT/lease.log" >&2)
