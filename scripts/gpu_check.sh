#!/usr/bin/env bash
# The CUDA checks in one run on one GPU (about 8 minutes on an A100-class GPU), every output
# under one folder: the CUDA tests, bench throughput for davidnet and fast, 3 seeds of fast on
# CIFAR-10, and fast once each in bf16 and fp16. Without a CUDA device it says so and exits 0.
#
#   bash scripts/gpu_check.sh [OUT_DIR]       # default benchmarks/results/gpu-<timestamp>
#   DATA=path/to/cifar-10-python.tar.gz bash scripts/gpu_check.sh
#
# DATA defaults to the official archive in $DAWNTRAIN_DATA (`--data cifar10`); the record
# figures (94% in seconds) are for that lossless set, not for a JPEG copy.
set -euo pipefail
out=${1:-benchmarks/results/gpu-$(date +%Y%m%d-%H%M%S)}
data=${DATA:-cifar10}
py=${PYTHON:-python}
mkdir -p "$out"

if ! "$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device visible to PyTorch; nothing to check" | tee "$out/skipped.txt"
    exit 0
fi
step() { echo "== $1 ($(date +%T))" | tee -a "$out/log.txt"; }
started=$(date +%s)
"$py" -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())" \
    | tee "$out/device.txt"
command -v nvidia-smi >/dev/null && nvidia-smi > "$out/nvidia-smi.txt" || true

step "CUDA tests"
"$py" -m pytest -q -p no:cacheprovider -m cuda tests 2>&1 | tee "$out/tests.txt"

for preset in davidnet fast; do
    step "bench throughput $preset"
    "$py" -m dawntrain bench throughput --preset "$preset" --device cuda --steps 50 --warmup 10 \
        --results "$out" 2>&1 | tee -a "$out/throughput.txt"
done

step "fast, 3 seeds on $data"
"$py" -m dawntrain bench accuracy --preset fast --data "$data" --runs 3 --device cuda \
    --out "$out/runs/fast" --results "$out" 2>&1 | tee "$out/accuracy.txt"

for precision in bf16 fp16; do
    step "fast, seed 0, $precision"
    "$py" -m dawntrain bench accuracy --preset fast --data "$data" --runs 1 --device cuda \
        --precision "$precision" --out "$out/runs/fast-$precision" --results "$out" 2>&1 \
        | tee "$out/accuracy-$precision.txt"
done
step "done in $(( $(date +%s) - started )) s; results in $out"
