#!/usr/bin/env bash
# One prepared script for a machine with a CUDA GPU, within the device tool's 10-minute command:
#   1. the training-speed benchmark (ours against the reference loop);
#   2. the full 200-epoch Fashion-MNIST-LT recipe (CE + normalized s=16, hard order, seed 0);
#   3. until BUDGET_S seconds after the start (default 540), the missing rows of the 30-epoch
#      foundation, ablation and baselines tables, JOBS runs at a time (default 6) on the one GPU.
# Every finished run is kept in benchmarks/results/*.json (with the card's name); the whole
# results folder is packed into $OUT/results.tgz when $OUT is set (the device tool's return path).
# Prepare first, here: bash benchmarks/gpu_prepare.sh (data and wheels the bare image lacks), then
#   run(command="bash benchmarks/gpu.sh", carry=["data", ".whl"], timeout_s=600)
# On a machine without a GPU it starts, says so, and exits 0 having run nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
BUDGET_S=${BUDGET_S:-540}
JOBS=${JOBS:-6}
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "benchmarks/gpu.sh: no CUDA GPU is present on this machine; nothing was run."
  exit 0
fi
if [ -d .whl ] && ! "$PY" -c "import omegaconf" 2>/dev/null; then  # the bare GPU image
  "$PY" -m pip install -q --no-index --no-deps --target /tmp/camlt-site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/camlt-site
fi
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
CARD=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0))")
echo "GPU: $CARD"
pack() { [ -n "${OUT:-}" ] && tar czf "$OUT/results.tgz" benchmarks/results && echo "packed into $OUT"; }
trap pack EXIT
left() { echo $(( start + BUDGET_S - $(date +%s) )); }

"$PY" benchmarks/train_speed.py --epochs 1 --workers 8 --out-name gpu_train_speed
timeout "$(left)" "$PY" benchmarks/foundation_table.py --seeds 0 --rows "hard: CE + normalized s=16" \
  --runs-dir runs/gpu train.epochs=200 train.warmup_epochs=5 'train.milestones=[160,180]'
for table in foundation_table ablation baselines; do
  [ "$(left)" -gt 60 ] || break
  timeout "$(left)" "$PY" benchmarks/$table.py --jobs "$JOBS"
done
echo "gpu.sh finished in $(( $(date +%s) - start )) s on $CARD"
