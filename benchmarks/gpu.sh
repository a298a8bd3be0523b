#!/usr/bin/env bash
# The GPU numbers in one short command, for the device tool's `run` (a lent H100 or H200):
#
#   bash benchmarks/gpu.sh [--smoke] [gpu_train.py options]
#
# Full-mode ResNet50 training at 224 px with the job's --precision auto against a plain
# torchvision AMP loop, and featurizing against a plain eval loop, side by side on the same card
# (benchmarks/gpu_train.py says how). Sized to end well inside 6 minutes on an H100, generated
# data included (an estimate from the sizes: 6,000 images, 5 epochs; not yet timed on a GPU).
# Writes gpu.json, gpu.log (what it printed), job.log (the job's output) and job.json (its side of (a))
# under $OUT, or ./gpu-results when OUT is unset. No CUDA device: one line, exit 1.
# --smoke (or GPU_SMOKE=1): tiny sizes on the CPU, to check the script where there is no GPU.
# Python: $PYTHON, else .venv/bin/python where it exists, else python3 (the GPU machine's, with torch).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-}
if [ -z "$python" ]; then
    if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
out=${OUT:-gpu-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
"$python" benchmarks/gpu_train.py --out "$out" "$@" 2>&1 | tee "$out/gpu.log"
