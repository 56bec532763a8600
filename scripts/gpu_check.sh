#!/usr/bin/env bash
# The CUDA checks in one run on one GPU (sized for 8 minutes; not yet run on a GPU), every output
# under one folder: the data decoded once, the CUDA tests, bench throughput for davidnet and
# fast (fast also with cuDNN's algorithm search), 3 seeds of fast on CIFAR-10, and fast once each
# in bf16 and fp16. Without a CUDA device it says so and exits 0.
#
#   bash scripts/gpu_check.sh [OUT_DIR]       # default benchmarks/results/gpu-<timestamp>
#   DATA=path/to/cifar-10-python.tar.gz bash scripts/gpu_check.sh
#
# DATA defaults to the official archive in $DAWNTRAIN_DATA (`--data cifar10`); the record
# figures (94% in seconds) are for that lossless set, not for a JPEG copy.
# A step that fails is noted and the next one runs (a GPU's minutes are often lent, not owned);
# the script then ends with exit status 1 and the failed steps listed in log.txt. Where the data
# cannot be read, the steps that train on it are skipped and the rest still run.
# DEVICE=cpu QUICK=1 runs every step on the CPU at width 8: one step of two rows of each bench,
# one epoch of the sample data without a report, fp32 in place of bf16 and fp16; the script's
# own smoke test (the default tests run it).
set -uo pipefail
out=${1:-benchmarks/results/gpu-$(date +%Y%m%d-%H%M%S)}
data=${DATA:-cifar10}
py=${PYTHON:-python}
device=${DEVICE:-cuda}
bench=(--steps 50 --warmup 10) seeds=3 precisions="bf16 fp16" small=()
if [ -n "${QUICK:-}" ]; then
    bench=(--steps 1 --warmup 0 --peak-size 512 --rows reference,engine) seeds=1
    data=${DATA:-sample} small=(--set width=8 --set report=false --epochs 1)
fi
[ "$device" = cpu ] && precisions=fp32
mkdir -p "$out"

if [ "$device" = cuda ] &&
    ! "$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device visible to PyTorch; nothing to check" | tee "$out/skipped.txt"
    exit 0
fi
failed=()
# step NAME FILE COMMAND...: COMMAND's output shown and kept in $out/FILE; a failure is noted
# in log.txt and in the final list, and the script goes on.
step() {
    local name=$1 file=$2 rc
    shift 2
    echo "== $name ($(date +%T))" | tee -a "$out/log.txt"
    "$@" 2>&1 | tee -a "$out/$file"
    rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ]; then
        failed+=("$name (exit $rc)")
        echo "!! $name: failed, exit $rc (its output: $out/$file)" | tee -a "$out/log.txt"
    fi
    return "$rc"
}
started=$(date +%s)
"$py" -c "import sys, torch; d = torch.device(sys.argv[1])
print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name() if d.type == 'cuda' else 'cpu')" \
    "$device" | tee "$out/device.txt"
command -v nvidia-smi >/dev/null && nvidia-smi > "$out/nvidia-smi.txt" 2>&1

# Decoded and cached once here, so that no timed run below pays for it, and a missing archive
# is known in seconds rather than after the tests.
have_data=1
step "data: $data" data.txt "$py" -c 'import sys, time
from dawntrain.data.loading import load
from dawntrain.errors import DawntrainError
t = time.perf_counter()
try:
    d = load(sys.argv[1])
except DawntrainError as e:
    sys.exit(f"error: {e}")
print(f"{d.source}: {len(d.train_labels):,} training and {len(d.test_labels):,} test images "
      f"of {len(d.class_names)} classes, ready in {time.perf_counter() - t:.1f} s")' "$data" ||
    have_data=0

step "CUDA tests" tests.txt "$py" -m pytest -q -p no:cacheprovider -m cuda tests

for preset in davidnet fast; do
    step "bench throughput $preset" throughput.txt "$py" -m dawntrain bench throughput \
        --preset "$preset" --device "$device" "${bench[@]}" "${small[@]}" \
        --results "$out"
done
# cuDNN's algorithm search (off in every preset until measured): the same bench with it on.
[ "$device" = cuda ] && step "bench throughput fast, cudnn_benchmark=true" throughput.txt \
    "$py" -m dawntrain bench throughput --preset fast --device cuda "${bench[@]}" "${small[@]}" \
    --set cudnn_benchmark=true --results "$out"

if [ "$have_data" = 1 ]; then
    step "fast, $seeds run(s) from seed 0 on $data" accuracy.txt "$py" -m dawntrain bench accuracy \
        --preset fast --data "$data" --runs "$seeds" --device "$device" "${small[@]}" \
        --out "$out/runs/fast" --results "$out"
    for precision in $precisions; do
        step "fast, seed 0, $precision" "accuracy-$precision.txt" "$py" -m dawntrain bench \
            accuracy --preset fast --data "$data" --runs 1 --device "$device" \
            --precision "$precision" "${small[@]}" --out "$out/runs/fast-$precision" \
            --results "$out"
    done
else
    echo "!! skipped the runs of fast: the data ($data) could not be read (data.txt says why)" |
        tee -a "$out/log.txt"
fi

echo "== done in $(($(date +%s) - started)) s; results in $out" | tee -a "$out/log.txt"
if [ ${#failed[@]} -gt 0 ]; then
    printf '!! failed: %s\n' "${failed[@]}" | tee -a "$out/log.txt"
    exit 1
fi
