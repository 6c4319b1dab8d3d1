#!/usr/bin/env bash
# The GPU benchmarks, in parts that each fit one 10-minute call on a lent GPU machine.
#
# The device image has torch, torchvision, numpy, scikit-learn and tqdm but not
# mlflow, optuna or opacus; these scripts need only the first ones (the `mia`
# core runs without the others: tests/test_core_without_extras.py). Each part
# rewrites its CUDA sections of benchmarks/RESULTS.md and, where $OUT is set,
# copies the file there; take its CUDA sections back into the checkout before
# the next part, which starts from the checkout's copy.
#
#   bash benchmarks/gpu.sh 0   # smoke: every CUDA path at a tiny size, nothing written (about a minute)
#   bash benchmarks/gpu.sh 1   # the training loop: ResNet-18, 50k images, bf16, eager and compiled; one bare step by mode
#   bash benchmarks/gpu.sh 2   # reference-model pools, many at a time; WRN-28-2 at full size (the 64-model goal)
#   bash benchmarks/gpu.sh 3   # SELENA Split-AI K=25; one FedAvg round of 100 ResNet-18 (GN) clients
#   bash benchmarks/gpu.sh 4   # a check: --compile (CUDA graphs) through every training defense, not run yet
#   bash benchmarks/gpu.sh 15  # a lease of 15 minutes in all: one call (timeout_s 560) of what decides defaults
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: these are the GPU benchmarks')"

case "${1:-}" in
  0) $PY benchmarks/train_throughput.py --device cuda --images 1024 --epochs 2 --workers 2 --no-compile --no-write || echo 'SMOKE FAILED'
     $PY benchmarks/pool_throughput.py --device cuda --cases fc,mlp,cnn-digits --models 2 --no-write || echo 'SMOKE FAILED'
     $PY benchmarks/split_ai_throughput.py --device cuda --cases mlp --no-write || echo 'SMOKE FAILED'
     $PY benchmarks/fl_round.py --device cuda --cases digits --rounds 1 --no-write || echo 'SMOKE FAILED'
     $PY -m pytest -q -p no:cacheprovider tests/test_core_without_extras.py || echo 'SMOKE FAILED'  # the audit core on CUDA
     exit 0 ;;
  1) $PY benchmarks/train_throughput.py --device cuda
     $PY benchmarks/cuda_step.py ;;
  2) $PY benchmarks/pool_throughput.py --device cuda
     $PY benchmarks/wrn_pool.py ;;
  3) $PY benchmarks/split_ai_throughput.py --device cuda
     $PY benchmarks/fl_round.py --device cuda ;;
  4) $PY benchmarks/cuda_compile_smoke.py
     exit 0 ;;
  15) # each step bounded, so that a slow one leaves the others their time; RESULTS.md as far as it got
     timeout 150 bash "$0" 0 || echo 'SMOKE TIMED OUT'
     timeout 290 $PY benchmarks/wrn_pool.py || echo 'WRN POOL TIMED OUT (its rows print as they finish)'
     # the goal's row alone (compile, then 4 rounds of ~3.5 s): the full table takes 16 rounds and 2 compiles
     timeout 110 $PY benchmarks/fl_round.py --device cuda --cases resnet --rounds 1 --compile --loop-recorded-only \
       --no-write || echo 'FL ROUND TIMED OUT' ;;
  *) echo "usage: bash benchmarks/gpu.sh 0|1|2|3|4|15" >&2; exit 2 ;;
esac
if [ -n "${OUT:-}" ]; then cp benchmarks/RESULTS.md "$OUT/"; fi
