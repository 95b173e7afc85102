#!/usr/bin/env bash
# One prepared script for a machine with a CUDA GPU: the training-speed benchmark and the full
# 200-epoch Fashion-MNIST-LT recipe (CE + normalized s=16, hard order, seed 0), within about
# 10 minutes on an H100. Results land in benchmarks/results/gpu_*.{json,md} with the card's name.
# On a machine without a GPU it starts, says so, and exits 0 having run nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "benchmarks/gpu.sh: no CUDA GPU is present on this machine; nothing was run."
  exit 0
fi
CARD=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0))")
echo "GPU: $CARD"
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)
"$PY" benchmarks/train_speed.py --epochs 1 --workers 8 --out-name gpu_train_speed
"$PY" benchmarks/foundation_table.py --seeds 0 --rows "hard: CE + normalized s=16" \
  --runs-dir runs/gpu train.epochs=200 train.warmup_epochs=5 'train.milestones=[160,180]'
echo "gpu.sh finished in $(( $(date +%s) - start )) s on $CARD"
