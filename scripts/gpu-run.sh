#!/usr/bin/env bash
# Runs on the GPU host (copied into the bundle as run.sh). Usage:
#
#   bash run.sh LOGDIR [tests|perf|compile|detail|all]      (default: all)
#
# tests  every GPU test executable with PRRNET_REQUIRE_GPU=1 (gpu_parity, gpu_model_parity,
#        gpu_relation when bundled, then any other bin/gpu_*), then compute-sanitizer
#        (memcheck, racecheck) on the parity tests (gpu_parity, the tiny network, the relation
#        and, on their small shapes, the convolution kernels). A test executable whose
#        process dies (a crash, a hang) runs the tests it had not started once more, as
#        <name>_rest; the test in flight is named there.
# perf   the measured peaks (`prrnet bench --peaks`), `prrnet bench --breakdown` for W30 at
#        299×299, batch 64 (inference and training; fp32 and bf16 first, then tf32), PyTorch
#        eager with the same stage breakdown, the relation-map benchmarks when bundled, an nsys
#        capture of a 3-iteration training window with its kernel summary, `prrnet bench-conv`
#        (every W30 convolution shape per algorithm, bf16 and fp32), W30 inference and training
#        with PRRNET_CONV_ALGO=halo (the fixed rule the measured default falls back to) and
#        with the previous relation versions, torch.compile where time is left, and finally
#        scripts/perf-report.py writing LOGDIR/PERFORMANCE-tables.md.
# compile  PyTorch's torch.compile matrix (and eager TF32 training), which perf rarely has time
#        for: a third call into the same LOGDIR, whose report then covers all three.
# detail Nsight Compute's detailed sections (throughput, memory, occupancy, warp stalls) for the
#        kernels being tuned, one launch each: the relation v3 forward and backward (W30 size,
#        BF16), and the BF16 halo and implicit convolutions and weight gradient in one training
#        step.
#        Plain-text reports in LOGDIR/nsight_detail_*.log, for reading, not for perf-report.
# all    tests and perf within one budget, for a single device call (the usual case: 15 minutes
#        of device time a session, machine start included), most wanted first: the GPU
#        tests; the headline numbers (peaks; prrnet fp32 and bf16, inference and training;
#        PyTorch eager); the relation map against PyTorch's; the sanitizers on the kernels
#        never checked by one; the top-kernel tables; TF32; torch.compile in BF16; the measured
#        kernel choices against fixed ones; the sanitizers on the rest; the remaining
#        torch.compile configurations. Suggested: PRRNET_GPU_BUDGET_S=540 in one call with
#        timeout_s=600.
#
# Every whole-network `prrnet bench` keeps its kernel measurements in one tuning journal,
# LOGDIR/tune-journal.tsv (PRRNET_TUNE_JOURNAL; src/backend/cuda/tune_journal.rs). A candidate
# kernel that stops the process in its turn (a fault: the step FAILs; a hang: it runs out of
# time with the journal untouched for 20 s) is left open there, and every later run leaves it
# out of its kernel family (operation, pass, precision). Such a step runs again at once, up to
# twice, as <step>_rerun1 and _rerun2: the numbers of every other kernel still come, and the
# kernel choices name the candidate left out and why. A step that fails some other way, or
# still fails, is run once more with the kernels last checked on a GPU (PRRNET_CONV_ALGO=im2col,
# the relation v2, simt at fp32), logged as conv_im2col_prrnet_bench_…: a kernel that breaks the
# default path then still leaves numbers, in the report's convolution-algorithm table.
#
# Time: each phase (or `all` as a whole) runs within PRRNET_GPU_BUDGET_S (default 280 s; perf
# keeps its last 20 s for the report and the summary). Every
# step runs under `timeout` (its own cap, never past the budget); a step that would start with
# less than 15 s left is SKIPped, one that runs out of time is reported as TIMEOUT. Steps are
# ordered by importance. Logs: one per step in LOGDIR (first line `$ command`); a summary table
# is printed last.
#
# Overrides for a smoke test without a GPU (the perf phase runs on the CPU then):
# PRRNET_PERF_DEVICE (cuda), PRRNET_PERF_PRESET (w30), PRRNET_PERF_SIZE (299),
# PRRNET_PERF_BATCH (64), PRRNET_PERF_ITERS (5), PRRNET_PYTHON (python3).
# PRRNET_GPU_ONLY=REGEX runs only the steps whose names match (e.g. 'relation|im2col').
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
logs="${1:-$here/logs}"
phase="${2:-all}"
case "$phase" in
    tests | perf | compile | detail | all) ;;
    *) echo "usage: run.sh LOGDIR [tests|perf|compile|detail|all]" >&2; exit 2 ;;
esac
mkdir -p "$logs"
logs="$(cd "$logs" && pwd)"
export PRRNET_REQUIRE_GPU=1 RUST_BACKTRACE=1
budget="${PRRNET_GPU_BUDGET_S:-280}"
dev="${PRRNET_PERF_DEVICE:-cuda}"
preset="${PRRNET_PERF_PRESET:-w30}"
size="${PRRNET_PERF_SIZE:-299}"
batch="${PRRNET_PERF_BATCH:-64}"
iters="${PRRNET_PERF_ITERS:-5}"
py="${PRRNET_PYTHON:-python3}"
# The bundle ships its executables gzipped (bin/*.gz): unpack them next to themselves, or into
# a temporary folder when the bundle is read-only.
bin="$here/bin"
if ! [ -w "$bin" ]; then
    bin="$(mktemp -d)"
fi
for gz in "$here"/bin/*.gz; do
    [ -f "$gz" ] || continue
    exe="$bin/$(basename "$gz" .gz)"
    if ! [ -x "$exe" ] || [ "$gz" -nt "$exe" ]; then
        gzip -dc "$gz" >"$exe.part" && chmod +x "$exe.part" && mv "$exe.part" "$exe"
    fi
done
prrnet="$bin/prrnet"
# cudarc opens libcublas.so.13 by name: when the host's loader cannot find it (a toolkit outside
# the ld.so cache, or only PyTorch's wheel copy), put the first folder that holds it on the path.
if ! ldconfig -p 2>/dev/null | grep -q 'libcublas\.so\.13 '; then
    for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
        $(find /usr/local /opt -maxdepth 10 -name 'libcublas.so.13' -printf '%h\n' 2>/dev/null); do
        if [ -e "$d/libcublas.so.13" ]; then
            export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
            break
        fi
    done
fi
# Seconds kept back at the end of perf/all for perf-report.py and the summary.
reserve=0
[ "$phase" != tests ] && reserve=20
declare -a rows
last_status=""
step() { # name, cap in seconds, command...
    local name="$1" cap="$2"; shift 2
    # PRRNET_GPU_ONLY: run only the steps whose names match this regular expression (a
    # second device call that fills in what the first one had no time for).
    if [ -n "${PRRNET_GPU_ONLY:-}" ] && ! [[ "$name" =~ $PRRNET_GPU_ONLY ]]; then
        last_status=""
        return
    fi
    local left=$((budget - reserve - SECONDS)) t0=$SECONDS status rc
    if [ "$left" -lt 15 ]; then
        rows+=("$(printf '%-38s %-7s %4ds' "$name" SKIP 0)")
        echo "skipped: out of time budget (${budget}s)" >"$logs/$name.log"
        last_status=SKIP
        return
    fi
    [ "$cap" -gt "$left" ] && cap=$left
    echo "\$ $*" >"$logs/$name.log"
    timeout --kill-after=10 "$cap" "$@" >>"$logs/$name.log" 2>&1
    rc=$?
    if [ "$rc" -eq 0 ]; then
        status=ok
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        status=TIMEOUT
        echo "TIMEOUT after ${cap}s" >>"$logs/$name.log"
    else
        status=FAIL
    fi
    rows+=("$(printf '%-38s %-7s %4ds' "$name" "$status" $((SECONDS - t0)))")
    last_status=$status
}
left() { echo $((budget - reserve - SECONDS)); }

meta() {
    {
        echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "host: $(hostname 2>/dev/null || echo '?')"
        echo "gpu: $(timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm \
            --format=csv,noheader 2>/dev/null | head -n 1 || true)"
        echo "phase: $phase"
        echo "LD_LIBRARY_PATH: ${LD_LIBRARY_PATH:-}"
        echo "nsys: $(command -v nsys || echo none); ncu: $(command -v ncu || echo none)"
        echo "bundle: $here"
    } >"$logs/meta.log"
    timeout 30 nvidia-smi >"$logs/nvidia-smi.log" 2>&1
    timeout 30 "$prrnet" info >"$logs/info.log" 2>&1
}

test_step() { # name, cap, test executable, arguments...: when its process dies (a crash, a
    # hang that runs out of time), the tests it had not started run once more in a process of
    # their own, as <name>_rest; the one in flight is named in that log and not run again
    local name="$1" cap="$2" exe="$3" listed started left in_flight
    shift 3
    step "$name" "$cap" "$exe" "$@"
    case "$last_status" in FAIL | TIMEOUT) ;; *) return ;; esac
    listed=$("$exe" --list "$@" 2>/dev/null | sed -n 's/: test$//p' | sort -u)
    # libtest prints `test NAME ... ` as a test starts (its result may follow on a later line).
    started=$(sed -nE 's/^test ([^ ]+) \.\.\. .*/\1/p' "$logs/$name.log")
    in_flight=$(printf '%s\n' "$started" | grep -Fxf <(printf '%s\n' "$listed") | tail -n 1)
    if grep -Eq "^test $in_flight \.\.\. .*(ok|FAILED|ignored)\$" "$logs/$name.log"; then
        in_flight=""
    fi
    mapfile -t left < <(comm -23 <(printf '%s\n' "$listed") <(printf '%s\n' "$started" | sort -u) |
        grep -v '^$')
    [ "${#left[@]}" -gt 0 ] || return
    step "${name}_rest" "$cap" "$exe" "$@" --exact "${left[@]}"
    if [ -n "$in_flight" ]; then
        echo "not run again: $in_flight (in flight when $name stopped)" >>"$logs/${name}_rest.log"
    fi
}

gpu_tests() {
    test_step gpu_parity 120 "$bin/gpu_parity" --test-threads 1 --nocapture
    test_step gpu_model_parity 150 "$bin/gpu_model_parity" --test-threads 1 --nocapture
    if [ -x "$bin/gpu_relation" ]; then
        test_step gpu_relation 90 "$bin/gpu_relation" --test-threads 1 --nocapture
    fi
    # Any other GPU test executable in the bundle (tests/gpu_*.rs), in name order.
    local exe t
    for exe in "$bin"/gpu_*; do
        [ -x "$exe" ] && [ "${exe%.gz}" = "$exe" ] || continue
        t=$(basename "$exe")
        case "$t" in gpu_parity | gpu_model_parity | gpu_relation) continue ;; esac
        test_step "$t" 90 "$exe" --test-threads 1 --nocapture
    done
}

# `--report-api-errors no`: failed API calls would count as sanitizer errors, and
# allocation_and_errors makes one on purpose (an impossible allocation); a real API failure
# already fails the test itself. Kernel memory errors and races stay fatal.
san=(compute-sanitizer --report-api-errors no --error-exitcode 1)

sanitizers_new() { # the kernels that have never run under a sanitizer (relation, convolutions)
    command -v compute-sanitizer >/dev/null || return 0
    if [ -x "$bin/gpu_relation" ]; then
        # The small shapes cover every tail and bin case; W30 size under memcheck is slow.
        step sanitizer_memcheck_relation 90 "${san[@]}" --tool memcheck \
            "$bin/gpu_relation" --test-threads 1 --skip w30_at_299
        step sanitizer_racecheck_relation 90 "${san[@]}" --tool racecheck \
            "$bin/gpu_relation" --test-threads 1 --skip w30_at_299
    fi
    if [ -x "$bin/gpu_conv" ]; then
        # The implicit, halo and weight-gradient kernels (cp.async pipelines in shared
        # memory) on the small shapes, which reach every kernel variant and tail.
        local conv_env=(env PRRNET_CONV_SHAPES=odd,halo PRRNET_CONV_ALGOS=implicit,halo)
        step sanitizer_memcheck_conv 90 "${conv_env[@]}" "${san[@]}" --tool memcheck \
            "$bin/gpu_conv" --test-threads 1
        step sanitizer_racecheck_conv 90 "${conv_env[@]}" "${san[@]}" --tool racecheck \
            "$bin/gpu_conv" --test-threads 1
    fi
}

sanitizers_old() { # those that were clean on 2026-11-27 (parity, tiny network)
    command -v compute-sanitizer >/dev/null || return 0
    step sanitizer_memcheck 90 "${san[@]}" --tool memcheck "$bin/gpu_parity" \
        --test-threads 1 --skip allocation_and_errors
    # racecheck only sees shared memory: the tests whose kernels use it (reductions, relation
    # tiles), not the purely elementwise ones nor the large cuBLAS-only convolutions.
    step sanitizer_racecheck 90 "${san[@]}" --tool racecheck "$bin/gpu_parity" \
        --test-threads 1 --skip allocation_and_errors --skip elementwise --skip resample \
        --skip concat --skip adam --skip conv2d_w30_sizes
    step sanitizer_memcheck_tiny 60 "${san[@]}" --tool memcheck "$bin/gpu_model_parity" \
        tiny --test-threads 1
}

journal="$logs/tune-journal.tsv"
open_turns() { # turns the journal has begun and never ended
    [ -f "$journal" ] || { echo 0; return; }
    awk -F'\t' '$1 == "begin" { open[$2 FS $3] = 1 } $1 == "end" { delete open[$2 FS $3] }
        END { n = 0; for (k in open) n++; print n }' "$journal"
}
stuck_for() { # seconds since the journal was last written
    echo $(($(date +%s) - $(stat -c %Y "$journal" 2>/dev/null || date +%s)))
}
tuned_step() { # name, cap, command...: a step that measures kernels through the journal, run
    # again (up to twice) when a candidate stopped it (see the header)
    local name="$1" cap="$2" before try=0 stopped
    shift 2
    before=$(open_turns)
    step "$name" "$cap" env "PRRNET_TUNE_JOURNAL=$journal" "$@"
    while [ "$try" -lt 2 ]; do
        stopped=0
        if [ "$(open_turns)" -gt "$before" ]; then
            # A time-out counts only as a hang in one turn: no measurement takes 20 s.
            case "$last_status" in
                FAIL) stopped=1 ;;
                TIMEOUT) [ "$(stuck_for)" -ge 20 ] && stopped=1 ;;
            esac
        fi
        [ "$stopped" = 1 ] || break
        try=$((try + 1))
        before=$(open_turns)
        step "${name}_rerun$try" "$cap" env "PRRNET_TUNE_JOURNAL=$journal" "$@"
    done
}

prrnet_bench() { # precision, mode
    local rel=v2
    local run=("$prrnet" bench --device "$dev" --preset "$preset" --size "$size" --batch "$batch"
        --precision "$1" --iters "$iters" --warmup 2)
    [ "$2" = train ] && run+=(--train)
    [ "$1" = fp32 ] && rel=simt
    tuned_step "prrnet_bench_${preset}_$2_$1" 60 "${run[@]}" --breakdown --json
    if [ "$last_status" = FAIL ]; then
        # The kernels last checked on a GPU (see the header).
        step "conv_im2col_prrnet_bench_${preset}_$2_$1" 60 env PRRNET_CONV_ALGO=im2col \
            PRRNET_RELATION_VERSION=$rel "${run[@]}" --json
    fi
}

torch_bench() { # name, cap, configs (IMPL:PRECISION:MODE,...)
    local cap="$2" l
    l=$(left)
    [ "$cap" -gt "$l" ] && cap=$l
    # No configuration starts in the slot's last 40 s (one in flight may still finish).
    step "$1" "$cap" "$py" "$here/reference/bench.py" --device "$dev" --preset "$preset" \
        --size "$size" --batch "$batch" --iters "$iters" --warmup 2 --breakdown --json \
        --configs "$3" --deadline-s $((cap > 40 ? cap - 40 : 1))
}

# PyTorch's torch.compile matrix, most wanted first (perf runs it while time is left; the
# compile phase runs it with a budget of its own).
compile_configs=compile:bf16:infer,compile:bf16:train,compile:fp32:infer,compile:fp32:train,compile:tf32:infer,compile:tf32:train

have_torch=""
torch_ok() { # whether PyTorch and timm import (asked once)
    if [ -z "$have_torch" ]; then
        have_torch=0
        if timeout 60 "$py" -c "import torch, timm" 2>/dev/null; then have_torch=1; fi
    fi
    [ "$have_torch" = 1 ]
}

perf_headline() {
    step peaks 60 "$prrnet" bench --device "$dev" --peaks --iters 10 --warmup 3 --json
    # The most important first: fp32 and bf16, inference and training.
    prrnet_bench fp32 infer
    prrnet_bench fp32 train
    prrnet_bench bf16 infer
    prrnet_bench bf16 train
    if torch_ok; then
        torch_bench pytorch_eager_fp32_bf16 100 \
            eager:fp32:infer,eager:fp32:train,eager:bf16:infer,eager:bf16:train
    fi
}

perf_relation() {
    # The relation map alone (kernels vs PyTorch), when the bundle has its benchmarks.
    if "$prrnet" help 2>/dev/null | grep -q "bench-relation"; then
        # Tensor-core versions in bf16 and tf32; fp32: the 3xTF32 split version, then the
        # exact-f32 simt one (seconds per call at W30 size), with fewer iterations.
        for p in bf16 tf32; do
            step "prrnet_bench_relation_$p" 40 "$prrnet" bench-relation --precision "$p" \
                --version tc --backward --iters 5 --warmup 1 --json
        done
        step prrnet_bench_relation_fp32 50 "$prrnet" bench-relation --precision fp32 \
            --version all --backward --iters 3 --warmup 1 --json
    fi
    if torch_ok && [ -f "$here/reference/bench_relation.py" ]; then
        for p in fp32 bf16 tf32; do
            step "pytorch_bench_relation_$p" 40 "$py" "$here/reference/bench_relation.py" \
                --precision "$p" --backward --json
        done
    fi
}

perf_kernels() { # the top-kernel tables: nsys, or ncu without it
    if command -v nsys >/dev/null && [ "$dev" = cuda ]; then
        # A 3-iteration window of training (NVTX ranges per stage and module) and its summaries.
        step nsys_train_fp32 75 nsys profile --capture-range=cudaProfilerApi \
            --capture-range-end=stop --force-overwrite true -o "$logs/prrnet-train-fp32" \
            "$prrnet" bench --device cuda --preset "$preset" --size "$size" --batch "$batch" \
            --train --iters 4 --warmup 1 --profile-window 2:3
        if [ -f "$logs/prrnet-train-fp32.nsys-rep" ]; then
            step nsys_stats_train_fp32 45 nsys stats --force-export=true --format csv \
                --report cuda_gpu_kern_sum --report nvtx_sum "$logs/prrnet-train-fp32.nsys-rep"
        fi
    fi
    if ! command -v nsys >/dev/null && command -v ncu >/dev/null && [ "$dev" = cuda ]; then
        # Without nsys, the kernel tables come from ncu: one iteration, one metric (the
        # kernel's duration, one pass, so no replay), clocks left as they run. BF16: on the
        # H100 these took 12 s (inference) and 65 s (training); fp32 training did not finish
        # in 75 s (its relation backward alone is 1.7 s, and ncu serialises every launch).
        step ncu_infer_bf16 45 ncu --profile-from-start off --clock-control none \
            --metrics gpu__time_duration.sum --csv --log-file "$logs/ncu_infer_bf16.csv" \
            "$prrnet" bench --device cuda --preset "$preset" --size "$size" --batch "$batch" \
            --precision bf16 --iters 3 --warmup 1 --profile-window 2:1
        step ncu_train_bf16 90 ncu --profile-from-start off --clock-control none \
            --metrics gpu__time_duration.sum --csv --log-file "$logs/ncu_train_bf16.csv" \
            "$prrnet" bench --device cuda --preset "$preset" --size "$size" --batch "$batch" \
            --precision bf16 --train --iters 2 --warmup 0 --profile-window 1:1
    fi
}

perf_tf32() {
    prrnet_bench tf32 infer
    prrnet_bench tf32 train
}

perf_compare() { # the measured choices against fixed ones
    # Every convolution shape of the W30 step, algorithm by algorithm (halo, implicit, im2col);
    # then the inference plan's shapes in BF16, which adds the pointwise ones (cuBLAS and a
    # bias_act pass under im2col, the implicit kernel's fused epilogue otherwise).
    if "$prrnet" help 2>/dev/null | grep -q "bench-conv"; then
        for p in bf16 fp32; do
            step "prrnet_bench_conv_$p" 60 "$prrnet" bench-conv --device "$dev" --preset "$preset" \
                --size "$size" --batch "$batch" --precision "$p" --backward --halo-min-fill 0 \
                --iters 5 --warmup 1 \
                --json
        done
        step prrnet_bench_conv_infer_bf16 40 "$prrnet" bench-conv --device "$dev" \
            --preset "$preset" --size "$size" --batch "$batch" --precision bf16 \
            --halo-min-fill 0 --iters 5 --warmup 1 --json
    fi
    # The default convolution algorithm (auto: each shape's path measured, kernel_choices in
    # the JSON) against the fixed rule it falls back to (halo tiles where they fill their
    # patches, implicit GEMM elsewhere): what measuring the paths gains in the whole step.
    for pm in bf16:infer bf16:train fp32:train; do
        local p="${pm%%:*}" m="${pm##*:}" train=()
        [ "$m" = train ] && train=(--train)
        tuned_step "conv_halo_prrnet_bench_${preset}_${m}_$p" 60 env PRRNET_CONV_ALGO=halo \
            "$prrnet" bench --device "$dev" --preset "$preset" --size "$size" --batch "$batch" \
            --precision "$p" --iters "$iters" --warmup 2 "${train[@]}" --json
    done
    # The BF16 training step with the relation fixed to v2 (the last measured version) against
    # the default (the versions measured per shape: kernel_choices): the whole-step effect.
    tuned_step "relation_v2_prrnet_bench_${preset}_train_bf16" 60 env PRRNET_RELATION_VERSION=v2 \
        "$prrnet" bench --device "$dev" --preset "$preset" --size "$size" --batch "$batch" \
        --precision bf16 --iters "$iters" --warmup 2 --train --json
    # The fp32 training step with the exact simt relation against the default (split, 3xTF32).
    tuned_step "relation_simt_prrnet_bench_${preset}_train_fp32" 60 env PRRNET_RELATION_VERSION=simt \
        "$prrnet" bench --device "$dev" --preset "$preset" --size "$size" --batch "$batch" \
        --precision fp32 --iters 3 --warmup 1 --train --json
}

pytorch_rest() { # PyTorch eager TF32 and the torch.compile matrix (the part not run yet)
    if torch_ok; then
        torch_bench pytorch_rest 200 "eager:tf32:infer,eager:tf32:train,$1"
    fi
}

perf_rest() {
    perf_relation
    perf_kernels
    perf_tf32
    perf_compare
    pytorch_rest "$compile_configs"
}

compile_phase() {
    if timeout 60 "$py" -c "import torch, timm" 2>/dev/null; then
        torch_bench pytorch_compile "$((budget - reserve))" "eager:tf32:train,$compile_configs"
    else
        echo "compile: no torch/timm in $py" >&2
    fi
}

detail_phase() {
    if ! command -v ncu >/dev/null || [ "$dev" != cuda ]; then
        echo "detail: needs ncu and a CUDA device" >&2
        return
    fi
    local ncu=(ncu --set detailed --clock-control none --launch-count 1)
    local rel=("$prrnet" bench-relation --device cuda --batch "$batch" --precision bf16
        --version v3 --backward --iters 1 --warmup 0 --gemm-side 0)
    step nsight_detail_relation_v3_backward 90 "${ncu[@]}" -k regex:relation_tc_v3_backward \
        "${rel[@]}"
    # The dispatched BF16 forward (the symmetric one) beside v3's (the one it replaces).
    local relf=("$prrnet" bench-relation --device cuda --batch "$batch" --precision bf16
        --version sym --iters 1 --warmup 0 --gemm-side 0)
    step nsight_detail_relation_sym_forward 60 "${ncu[@]}" -k regex:relation_sym_forward \
        "${relf[@]}"
    step nsight_detail_relation_v3_forward 60 "${ncu[@]}" -k regex:relation_tc_v3_forward \
        "${rel[@]}"
    # The fixed halo rule: measured choices might not run the kernels these steps look at.
    local train=(env PRRNET_CONV_ALGO=halo "$prrnet" bench --device cuda --preset "$preset"
        --size "$size" --batch "$batch" --precision bf16 --train --iters 2 --warmup 0
        --profile-window 1:1)
    step nsight_detail_conv_halo_bf16 60 "${ncu[@]}" --profile-from-start off \
        -k regex:conv_halo_bf16 "${train[@]}"
    step nsight_detail_conv_implicit_bf16 60 "${ncu[@]}" --profile-from-start off \
        -k regex:conv_implicit_bf16 "${train[@]}"
    step nsight_detail_conv_wgrad_bf16 60 "${ncu[@]}" --profile-from-start off \
        -k regex:conv_wgrad_bf16 "${train[@]}"
}

report() {
    if [ -f "$here/scripts/perf-report.py" ]; then
        timeout 30 "$py" "$here/scripts/perf-report.py" "$logs" --window-iters 3 \
            --out "$logs/PERFORMANCE-tables.md" >"$logs/perf_report.log" 2>&1 &&
            rows+=("$(printf '%-38s %-7s %4ds' perf_report ok 0)") ||
            rows+=("$(printf '%-38s %-7s %4ds' perf_report FAIL 0)")
    fi
}

meta
case "$phase" in
    tests) gpu_tests; sanitizers_new; sanitizers_old ;;
    perf) perf_headline; perf_rest; report ;;
    compile) compile_phase; report ;;
    detail) detail_phase ;;
    all)
        gpu_tests
        perf_headline
        perf_relation
        sanitizers_new
        perf_kernels
        perf_tf32
        # torch.compile, most wanted first, before the diagnostics below.
        if torch_ok; then
            torch_bench pytorch_compile_bf16 150 compile:bf16:infer,compile:bf16:train
        fi
        perf_compare
        sanitizers_old
        pytorch_rest "${compile_configs#compile:bf16:infer,compile:bf16:train,}"
        report
        ;;
esac

echo
echo "== results (logs in $logs) =="
for f in "$logs"/prrnet_bench_*.log "$logs"/conv_*_prrnet_bench_*.log "$logs"/relation_*_prrnet_bench_*.log "$logs"/pytorch_*.log "$logs"/peaks.log; do
    [ -f "$f" ] || continue
    # A run under an override (conv_<algo>_… / relation_<version>_…) is labelled with it.
    tag="$(basename "$f" | sed -nE 's/^(conv|relation)_([a-z0-9]+)_prrnet_bench_.*/\2/p')"
    grep '^{' "$f" | "$py" -c '
import json, sys
tag = sys.argv[1]
for line in sys.stdin:
    try:
        r = json.loads(line)
    except ValueError:
        continue
    if r.get("kind") == "peaks":
        print("peaks: fp32 %.1f, tf32 %.1f, bf16 %.1f TFLOP/s; copy %.0f GB/s" % (
            r["fp32_tflops"], r["tf32_tflops"], r["bf16_tflops"], r["dram_gbps"]))
    elif r.get("kind") == "conv_total":
        print("conv %-11s %-5s %-15s %9.2f ms per step" % (r.get("algo", "?"), r.get("precision", "?"),
              r.get("pass", "?"), r["ms_median"] if r["ms_median"] is not None else float("nan")))
    elif r.get("kind") in ("conv", "relation"):
        continue
    elif "ms_median" in r:
        print("%-16s %-5s %-5s %-6s %9.2f ms %9.1f img/s" % (r.get("impl", "?") + ("/" + tag if tag else ""), r.get("precision", "?"),
              r.get("mode", "?"), str(r.get("batch", "")), r["ms_median"], r.get("images_per_s", 0)))
    elif "error" in r or "skipped" in r:
        print("%-16s %-5s %-5s %s" % (r.get("impl", "?"), r.get("precision", "?"), r.get("mode", "?"),
              r.get("error") or r.get("skipped")))
' "$tag" 2>/dev/null || grep '^{' "$f" | cut -c1-200
done
[ -f "$logs/PERFORMANCE-tables.md" ] && echo "tables: $logs/PERFORMANCE-tables.md"
echo
printf '%-38s %-7s %5s\n' step status time
for r in "${rows[@]}"; do echo "$r"; done
echo "total ${SECONDS}s (phase $phase, budget ${budget}s)"
