#!/usr/bin/env bash
# Runs on the GPU host (copied into the bundle as run.sh): every GPU test with
# PRRNET_REQUIRE_GPU=1, the parity tests under compute-sanitizer (memcheck, racecheck), the
# prrnet benchmark and, when PyTorch is there, the PyTorch reference benchmark (W30, 299×299,
# batch 64, inference and training). Logs go to the folder given as the first argument; a
# summary table is printed last.
#
# Time: every step runs under `timeout` (its own cap, and never past the whole run's budget,
# PRRNET_GPU_BUDGET_S, default 280 s); a step that would start with less than 15 s left is
# SKIPped, one that runs out of time is reported as TIMEOUT. Expected on an H100: about 3 min.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
logs="${1:-$here/logs}"
mkdir -p "$logs"
export PRRNET_REQUIRE_GPU=1 RUST_BACKTRACE=1
budget="${PRRNET_GPU_BUDGET_S:-280}"
declare -a rows
step() { # name, cap in seconds, command...
    local name="$1" cap="$2"; shift 2
    local left=$((budget - SECONDS)) t0=$SECONDS status rc
    if [ "$left" -lt 15 ]; then
        rows+=("$(printf '%-34s %-7s %4ds' "$name" SKIP 0)")
        echo "skipped: out of time budget (${budget}s)" >"$logs/$name.log"
        return
    fi
    [ "$cap" -gt "$left" ] && cap=$left
    timeout --kill-after=10 "$cap" "$@" >"$logs/$name.log" 2>&1
    rc=$?
    if [ "$rc" -eq 0 ]; then
        status=ok
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        status=TIMEOUT
        echo "TIMEOUT after ${cap}s" >>"$logs/$name.log"
    else
        status=FAIL
    fi
    rows+=("$(printf '%-34s %-7s %4ds' "$name" "$status" $((SECONDS - t0)))")
}
timeout 30 nvidia-smi >"$logs/nvidia-smi.log" 2>&1
timeout 30 "$here/bin/prrnet" info >"$logs/info.log" 2>&1
step gpu_parity 120 "$here/bin/gpu_parity" --test-threads 1
step gpu_model_parity 150 "$here/bin/gpu_model_parity" --test-threads 1
if command -v compute-sanitizer >/dev/null; then
    # `--report-api-errors no`: failed API calls would count as sanitizer errors, and
    # allocation_and_errors makes one on purpose (an impossible allocation); a real API failure
    # already fails the test itself. Kernel memory errors and races stay fatal.
    san=(compute-sanitizer --report-api-errors no --error-exitcode 1)
    step sanitizer_memcheck 90 "${san[@]}" --tool memcheck "$here/bin/gpu_parity" \
        --test-threads 1 --skip allocation_and_errors
    # racecheck only sees shared memory: the tests whose kernels use it (reductions, relation
    # tiles), not the purely elementwise ones nor the large cuBLAS-only convolutions.
    step sanitizer_racecheck 90 "${san[@]}" --tool racecheck "$here/bin/gpu_parity" \
        --test-threads 1 --skip allocation_and_errors --skip elementwise --skip resample \
        --skip concat --skip adam --skip conv2d_w30_sizes
    step sanitizer_memcheck_tiny 60 "${san[@]}" --tool memcheck "$here/bin/gpu_model_parity" \
        tiny --test-threads 1
fi
for mode in infer train; do
    flag=""; [ "$mode" = train ] && flag="--train"
    step "prrnet_bench_w30_$mode" 90 "$here/bin/prrnet" bench --device cuda --preset w30 --batch 64 --iters 10 --warmup 2 $flag --json --breakdown
done
if command -v nsys >/dev/null; then
    # A 3-iteration window of W30 training (NVTX ranges per stage and module), and its summary.
    step nsys_w30_train 75 nsys profile --capture-range=cudaProfilerApi --capture-range-end=stop \
        --force-overwrite true -o "$logs/prrnet-w30-train" \
        "$here/bin/prrnet" bench --device cuda --preset w30 --batch 64 --train --iters 4 --warmup 1 \
        --profile-window 2:3
    step nsys_stats 45 nsys stats --report cuda_gpu_kern_sum --report nvtx_sum \
        "$logs/prrnet-w30-train.nsys-rep"
fi
if timeout 60 python3 -c "import torch, timm" 2>/dev/null; then
    for mode in infer train; do
        step "pytorch_eager_w30_$mode" 90 python3 "$here/reference/bench.py" --device cuda --preset w30 --size 299 --batch 64 --mode "$mode" --precision fp32 --iters 10 --warmup 2 --json
    done
fi
echo
echo "== results (logs in $logs) =="
cat "$logs"/prrnet_bench_*.log "$logs"/pytorch_eager_*.log 2>/dev/null | grep '^{' || true
echo
printf '%-34s %-7s %5s\n' step status time
for r in "${rows[@]}"; do echo "$r"; done
echo "total ${SECONDS}s (budget ${budget}s)"
