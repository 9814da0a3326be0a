#!/usr/bin/env bash
# GPU figures for benchmarks/README.md, on a CUDA machine with the project's dependencies installed:
#   bash benchmarks/gpu.sh [OUT_DIR]        (default: $OUT if set, else outputs/bench/gpu)
# TAT on ViT-B-32 and ViT-L-14 (random init, batch 256, bf16-mixed): samples/s, Trainer / bare-loop
# ratio and peak GPU memory; evaluation encoding throughput (ViT-L-14) vs a plain loop.
# About 6-8 minutes on one H100; `python benchmarks/bench_gpu.py --smoke` checks the script on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-outputs/bench/gpu}}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export CIR_BENCH_DIR="${CIR_BENCH_DIR:-$PWD/outputs/bench}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia-smi.csv"
python benchmarks/bench_gpu.py --json "$out/gpu.json" 2>&1 | tee "$out/gpu.log"
