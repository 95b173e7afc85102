#!/usr/bin/env bash
# One prepared script for a machine with a CUDA GPU, within the device tool's 10-minute command.
#   bash benchmarks/gpu.sh recipe   the training-speed benchmark (ours against the reference
#                                   loop), then the full 200-epoch recipe (CE + normalized s=16,
#                                   hard order), each alone on the GPU; COMPILE=reduce-overhead
#                                   trains the recipe with CUDA graphs.
#   bash benchmarks/gpu.sh speed    the training-speed benchmark twice: as the engine runs by
#                                   default, then with train.compile=reduce-overhead (CUDA
#                                   graphs, the remedy for ResNet-32's launch bound), about 5 min.
#   bash benchmarks/gpu.sh tables   (the default) every table's missing 30-epoch runs from one
#                                   queue (benchmarks/fill_all.py), JOBS at a time (default 8)
#                                   under CUDA MPS when it starts, until BUDGET_S seconds after
#                                   the start (default 550). Runs longer than MAX_COST
#                                   Fashion-MNIST-LT epochs are left out (default 40: a 30-epoch
#                                   row costs 31, the ceiling 146, a 200-epoch row 201); with
#                                   few short runs left, MAX_COST=150 lets the ceiling in.
# ResNet-32 at batch 128 is launch-bound on an H100 (about 6,000 images/s for one process, the
# GPU 40% busy), so the tables run several processes at once (8 reached 32,000 images/s). At one
# process's pace the 200-epoch recipe needs about 7 minutes alone (2.5M images; not yet run on a
# GPU), which is why it has its own mode.
# Every finished run is kept in benchmarks/results/*.json (with the card's name). With $OUT set
# (the device tool's return path) it leaves there: results.tgz (the results folder, each run's
# config, metrics and log), checkpoints.tgz (the 200-epoch run's weights), stage1.tgz (the CE
# runs' weights that stage-2 rows start from) and smi.csv (GPU use).
# Prepare first, here: bash benchmarks/gpu_prepare.sh (data and wheels the bare image lacks), then
#   run(command="bash benchmarks/gpu.sh tables 2>&1 | tee $OUT/gpu.log", carry=["data", ".whl"],
#       timeout_s=600)
# On a machine without a GPU it starts, says so, and exits 0 having run nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
MODE=${1:-tables}
BUDGET_S=${BUDGET_S:-550}
JOBS=${JOBS:-8}
MAX_COST=${MAX_COST:-40}
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
case "$MODE" in recipe | speed | tables) ;; *) echo "usage: gpu.sh [recipe|speed|tables]" >&2; exit 2 ;; esac
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "benchmarks/gpu.sh: no CUDA GPU is present on this machine; nothing was run."
  exit 0
fi
if [ -d .whl ] && ! "$PY" -c "import omegaconf" 2>/dev/null; then  # the bare GPU image
  "$PY" -m pip install -q --no-index --no-deps --target /tmp/camlt-site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/camlt-site
fi
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export CUBLAS_WORKSPACE_CONFIG=:4096:8  # deterministic cuBLAS, as train.deterministic asks
CARD=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0), torch.__version__)")
echo "GPU: $CARD; $(nproc) CPU cores; mode $MODE"
left() { echo $(( start + BUDGET_S - $(date +%s) )); }
pack() {
  [ -n "${OUT:-}" ] || return 0
  [ -n "${SMI:-}" ] && kill "$SMI" 2>/dev/null
  find runs -name '*.log' -o -name config.yaml -o -name metrics.jsonl -o -name final_metrics.json \
    2>/dev/null | tar czf "$OUT/results.tgz" benchmarks/results README.md -T -
  find runs -path '*200_epochs*' -name checkpoint.pt 2>/dev/null | tar czf "$OUT/checkpoints.tgz" -T -
  # the CE runs the stage-2 rows start from, so a later stage-2 row can start from them here
  find runs -path '*hard_CE_linear-seed*' -name checkpoint.pt 2>/dev/null |
    tar czf "$OUT/stage1.tgz" -T -
  echo "packed into $OUT after $(( $(date +%s) - start )) s"
}
trap pack EXIT
if [ -n "${OUT:-}" ]; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,power.draw --format=csv -l 5 \
    >"$OUT/smi.csv" 2>/dev/null &
  SMI=$!
fi

if [ "$MODE" = recipe ]; then
  # 3 epochs: the first carries cuDNN's and the allocator's warm-up
  timeout 150 "$PY" benchmarks/train_speed.py --epochs 3 --workers 8 --no-compile \
    --out-name gpu_train_speed || echo "train_speed failed or timed out; going on"
  # COMPILE=reduce-overhead trains it with CUDA graphs, once `gpu.sh speed` has shown they pay
  timeout "$(left)" "$PY" benchmarks/full_recipe.py --rows "200 epochs, hard: CE + normalized s=16" \
    "train.compile=${COMPILE:-off}"
  echo "gpu.sh finished in $(( $(date +%s) - start )) s on $CARD"
  exit 0
fi

if [ "$MODE" = speed ]; then
  timeout 150 "$PY" benchmarks/train_speed.py --epochs 3 --workers 8 --no-compile \
    --out-name gpu_train_speed || echo "train_speed failed or timed out; going on"
  timeout "$(left)" "$PY" benchmarks/train_speed.py --epochs 3 --workers 8 \
    --compile reduce-overhead --out-name gpu_train_speed_compiled
  echo "gpu.sh finished in $(( $(date +%s) - start )) s on $CARD"
  exit 0
fi

# CUDA MPS, kept only if a client can use it: the runs' small kernels then overlap
export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
MPS=off
if command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d 2>/dev/null; then
  if timeout 60 "$PY" -c "import torch; assert torch.ones(2, device='cuda').sum().item() == 2"; then
    MPS=on
  else
    echo quit | nvidia-cuda-mps-control
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  fi
fi
echo "CUDA MPS: $MPS"
# fp32 (TF32 convolutions), like the CPU runs whose seeds these join in the same tables
"$PY" benchmarks/fill_all.py --jobs "$JOBS" --budget-s "$(left)" --amp off --max-cost "$MAX_COST"
[ "$MPS" = on ] && echo quit | nvidia-cuda-mps-control
echo "gpu.sh finished in $(( $(date +%s) - start )) s on $CARD (MPS $MPS, $JOBS jobs)"
