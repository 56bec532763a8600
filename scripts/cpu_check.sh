#!/usr/bin/env bash
# The CPU figures of the speed goals in one run, every output under one folder named for the
# machine kind (the widest bf16 or vector path, and the CPU's vendor, family and model): bench
# throughput for davidnet and fast (each beside the same run's matmul peak), bench profile of
# davidnet, fast and fast-budget's 32x32 step, and fast-budget's 3 seeds timed as whole processes;
# with AIRBENCH set, the public airbench94_muon timed between them with the same allocator
# setting, in bf16 where dawntrain's `auto` precision is bf16 and in fp32 (BF16=0) where the CPU
# only emulates bf16 (Zen 3: a matmul at 0.3 GFLOP/s), so both sides run the same precision.
# 34 minutes whole, airbench94_muon included, on 2 Zen 5 cores (2026-12-06).
#
#   DATA=../shared/data/cifar10-jpeg.tar.gz bash scripts/cpu_check.sh [OUT_DIR]
#   AIRBENCH=path/to/folder bash scripts/cpu_check.sh   # airbench94_muon.py patched and its cifar10/
#                                                       # (benchmarks/reference/airbench94_muon-cpu)
#
# Run it alone on the machine: every figure is a time, and two processes share the cores.
# QUICK=1 takes one step of each bench and one 1-epoch run on the sample data (a smoke test).
set -euo pipefail
[ -x /usr/bin/time ] || { echo "cpu_check: needs /usr/bin/time (GNU time) for the wall times" >&2; exit 2; }
py=${PYTHON:-python}
# The widest bf16 path and the CPU's vendor, family and model: "avx512bf16-amd-f26m2",
# "amx-intel-f6m143". The family and model tell generations apart that share the flags (Zen 4 and
# Zen 5 both have AVX-512 bf16; Zen 5's bf16 matmul is 2.0-2.4x Zen 4's).
read -r kind bf16 cpu < <("$py" -c 'import torch
from dawntrain.runtime.device import cpu_has_bf16, cpu_kind_slug, describe
print(cpu_kind_slug(), int(cpu_has_bf16()), describe(torch.device("cpu")))')
[ -n "$kind" ] || { echo "cpu_check: $py cannot import dawntrain; install it first (README)" >&2; exit 2; }
bf16=${BF16:-$bf16}  # BF16 set by hand wins
out=${1:-benchmarks/results/$kind-$(date +%Y%m%d-%H%M%S)}
data=${DATA:-cifar10}
steps=10 warmup=2 seeds="0 1 2" train=()
if [ -n "${QUICK:-}" ]; then steps=1 warmup=0 seeds=0 train=(--epochs 1) data=${DATA:-sample}; fi
mkdir -p "$out"
step() { echo "== $1 ($(date +%T))" | tee -a "$out/log.txt"; }
timed() {  # name, then the command: its output and /usr/bin/time -v's under $out/name.txt
    local name=$1; shift
    /usr/bin/time -v "$@" > "$out/$name.txt" 2>&1
}
started=$(date +%s)
{ lscpu; "$py" -c "import torch; print('torch', torch.__version__)"; } > "$out/machine.txt"
echo "kind: $kind, $cpu, $(nproc) cores" | tee -a "$out/log.txt"

for preset in davidnet fast; do
    step "bench throughput $preset"
    "$py" -m dawntrain bench throughput --preset "$preset" --steps "$steps" --warmup "$warmup" \
        --results "$out" 2>&1 | tee -a "$out/throughput.txt"
done
for preset in davidnet fast fast-budget; do
    step "bench profile $preset"
    "$py" -m dawntrain bench profile --preset "$preset" --set 'train_sizes=[]' \
        --steps "$steps" --warmup "$warmup" --results "$out" 2>&1 | tee -a "$out/profile.txt"
done

for seed in $seeds; do
    step "fast-budget seed $seed on $data"
    timed "fast-budget-s$seed" "$py" -m dawntrain train --preset fast-budget --seed "$seed" \
        --data "$data" --out "$out/runs/fast-budget-s$seed" "${train[@]}"
    if [ "$seed" = 0 ] && [ -n "${AIRBENCH:-}" ]; then
        step "airbench94_muon in $AIRBENCH (BF16=$bf16)"
        (cd "$AIRBENCH" && BF16=$bf16 MALLOC_MMAP_THRESHOLD_=1073741824 \
            MALLOC_TRIM_THRESHOLD_=2147483647 THREADS=$(nproc) /usr/bin/time -v "$py" airbench94_muon.py) \
            > "$out/airbench94_muon.txt" 2>&1
    fi
done
grep -h "with TTA" "$out"/fast-budget-s*.txt | tee -a "$out/log.txt" || true
grep -h "Elapsed (wall" "$out"/*.txt | tee -a "$out/log.txt" || true
step "done in $(( $(date +%s) - started )) s; results in $out"
