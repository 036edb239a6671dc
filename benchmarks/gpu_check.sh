#!/usr/bin/env bash
# The GPU check (issue 18, item 6): one table of train throughput (ours vs timm, eager and compiled),
# PGD-7 / clean step, MAE vs mask tokens, DDP over every visible GPU and peak memory. Under 8 minutes on one
# CUDA machine; benchmarks/gpu_check.py says what each row measures.
#   bash benchmarks/gpu_check.sh          # a CUDA GPU
#   bash benchmarks/gpu_check.sh --tiny   # no GPU: tiny models on the CPU (what tests/test_gpu_check.py runs)
set -euo pipefail
cd "$(dirname "$0")"
if [[ " $* " != *" --tiny "* ]] && command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv
fi
exec python gpu_check.py "$@"
