#!/usr/bin/env bash
# Verify and measure the GPU path (cache, train, evaluate) on the tiny model and the default model;
# writes results/benchmarks/gpu.json. Without a GPU it runs on the CPU and says so (degraded).
#   bash scripts/gpu_check.sh [--models tiny,smollm2-135m] [--train-steps 20]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/gpu_check.py "$@"
