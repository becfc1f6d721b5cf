#!/usr/bin/env bash
# The GPU tests of the shared-memory kernels under cuda-emu's race detector: the kernels compiled
# with ThreadSanitizer, the emulator telling it CUDA's synchronisation (__syncthreads, warp
# collectives, cp.async groups; tools/cuda-emu/src/sched.cpp, "race mode"). Two threads of a block
# that touch the same memory with no barrier or collective between them are reported, in
# whatever order the emulator ran them, and a report fails the run. What compute-sanitizer's
# racecheck does on a GPU, here without one; it checks the kernels' synchronisation, not the GPU's
# memory model. See tools/cuda-emu/README.md ("Races").
#
# Runs: the per-operation parity tests, the relation versions on their small shapes, the
# convolution kernels on their small shapes (every variant and tail: implicit, halo, phase,
# weight gradient), and the tiny whole-network parity. Extra arguments go to the test binaries.
# TSan makes the kernels 20-25 times slower than plain cuda-emu: about 50 minutes on 2 cores, so
# this is not part of scripts/test.sh (docs/PERFORMANCE.md, "Where the kernels have run", has
# the last run).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python3 tools/cuda-emu/build.py --race target/cuda-emu-race
tsan="$(${CXX:-g++} -print-file-name=libtsan.so)"
if ! [ -f "$tsan" ]; then
    echo "test-race: no ThreadSanitizer runtime ($tsan); install g++'s libtsan" >&2
    exit 1
fi
export PRRNET_REQUIRE_GPU=1 PRRNET_REQUIRE_KERNELS=1
# Build the test executables first; they run directly (not through cargo, which should not
# carry the TSan runtime).
exe() { # test name → its executable
    cargo test --release --no-run --test "$1" --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    if r.get("reason") == "compiler-artifact" and r.get("executable") and r["target"]["name"] == sys.argv[1]:
        print(r["executable"])
' "$1"
}
# Only the kernels are instrumented: accesses that TSan's interceptors see from the Rust side
# (the CPU reference on rayon's threads) are not its business. A report makes the process exit
# with 66.
export TSAN_OPTIONS="ignore_noninstrumented_modules=1 exitcode=66 ${TSAN_OPTIONS:-}"
run() { # test name, then arguments for it
    local name="$1"
    shift
    local bin
    bin="$(exe "$name")"
    [ -x "$bin" ] || { echo "test-race: no executable for $name" >&2; exit 1; }
    echo "== race: $name $*"
    LD_PRELOAD="$tsan" LD_LIBRARY_PATH="$root/target/cuda-emu-race/lib" \
        "$bin" --test-threads 1 "$@"
}
run gpu_parity --skip conv2d_w30_sizes "$@"
run gpu_relation --skip w30_at_299 "$@"
PRRNET_CONV_SHAPES=odd,halo PRRNET_CONV_ALGOS=implicit,halo run gpu_conv --skip tune "$@"
run gpu_model_parity tiny "$@"
echo "test-race: no races reported"
