#!/usr/bin/env bash
# Runs on the GPU host (copied into the bundle as run.sh): every GPU test with
# PRRNET_REQUIRE_GPU=1, the parity tests under compute-sanitizer (memcheck, racecheck), the
# prrnet benchmark and, when PyTorch is there, the PyTorch reference benchmark (W30, 299×299,
# batch 64, inference and training). Logs go to the folder given as the first argument; a
# summary table is printed last.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
logs="${1:-$here/logs}"
mkdir -p "$logs"
export PRRNET_REQUIRE_GPU=1 RUST_BACKTRACE=1
declare -a rows
step() { # name, command...
    local name="$1"; shift
    local t0=$SECONDS
    if "$@" >"$logs/$name.log" 2>&1; then status=ok; else status=FAIL; fi
    rows+=("$(printf '%-34s %-5s %4ds' "$name" "$status" $((SECONDS - t0)))")
}
nvidia-smi >"$logs/nvidia-smi.log" 2>&1
"$here/bin/prrnet" info >"$logs/info.log" 2>&1
step gpu_parity "$here/bin/gpu_parity" --test-threads 1
step gpu_model_parity "$here/bin/gpu_model_parity" --test-threads 1
if command -v compute-sanitizer >/dev/null; then
    step sanitizer_memcheck compute-sanitizer --tool memcheck --error-exitcode 1 "$here/bin/gpu_parity" --test-threads 1
    step sanitizer_racecheck compute-sanitizer --tool racecheck --error-exitcode 1 "$here/bin/gpu_parity" --test-threads 1
    step sanitizer_memcheck_tiny compute-sanitizer --tool memcheck --error-exitcode 1 "$here/bin/gpu_model_parity" tiny --test-threads 1
fi
for mode in infer train; do
    flag=""; [ "$mode" = train ] && flag="--train"
    step "prrnet_bench_w30_$mode" "$here/bin/prrnet" bench --device cuda --preset w30 --batch 64 --iters 10 --warmup 2 $flag --json --breakdown
done
if python3 -c "import torch, timm" 2>/dev/null; then
    for mode in infer train; do
        step "pytorch_eager_w30_$mode" python3 "$here/reference/bench.py" --device cuda --preset w30 --size 299 --batch 64 --mode "$mode" --precision fp32 --iters 10 --warmup 2 --json
    done
fi
echo
echo "== results (logs in $logs) =="
cat "$logs"/prrnet_bench_*.log "$logs"/pytorch_eager_*.log 2>/dev/null | grep '^{' || true
echo
printf '%-34s %-5s %5s\n' step status time
for r in "${rows[@]}"; do echo "$r"; done
