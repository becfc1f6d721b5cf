#!/usr/bin/env bash
# The GPU test suite without a GPU: builds tools/cuda-emu (every kernel under kernels/ compiled
# as C++ for the CPU, a fake CUDA driver and cuBLAS in one library standing in for libcuda.so.1
# and libcublas.so.13) and runs the unchanged tests/gpu_*.rs against it, with
# PRRNET_REQUIRE_GPU=1 so nothing skips. This checks the kernels' logic, launch arguments,
# shared-memory sizes, barriers and the graph capture path; it says nothing about speed, and a
# real GPU can still differ (memory model, timing, hardware rounding). See tools/cuda-emu/README.md.
#
# Skipped here because emulation makes them too slow (they run in the GPU bundle):
#   W30-at-299 cases, the 6-epoch training in reduced_precision_verdicts, the detect throughput.
# The shared-memory kernels' tests then run again in a shuffled thread order (PRRNET_EMU_ORDER).
# PRRNET_EMU_FULL=1 runs the W30-at-299 cases too (the whole-network one takes about 15 minutes
# on 2 cores). Extra arguments go to the test binaries (e.g. `bash scripts/test-emu.sh relation`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python3 tools/cuda-emu/build.py target/cuda-emu
export LD_LIBRARY_PATH="$root/target/cuda-emu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PRRNET_REQUIRE_GPU=1
export PRRNET_REQUIRE_KERNELS=1
tests=()
for f in tests/gpu_*.rs; do tests+=(--test "$(basename "$f" .rs)"); done
# The bundle's run script against a kernel that stops its process (needs a device too).
tests+=(--test bundle_rerun)
skips=(--skip reduced_precision_verdicts --skip detect_end_to_end_throughput)
if [ "${PRRNET_EMU_FULL:-0}" != 1 ]; then
    skips+=(--skip w30_299 --skip w30_at_299)
fi
cargo test --release "${tests[@]}" -- "${skips[@]}" "$@"
# The kernels that share data through shared memory once more, with the threads of every block
# in a shuffled order between synchronisation points (a missing barrier between any two warps
# then shows whatever their numbers): the relation versions, the convolutions on their small
# shapes (every kernel variant and tail), and the per-operation parity tests.
PRRNET_EMU_ORDER=shuffle:1 PRRNET_CONV_SHAPES=odd,halo PRRNET_CONV_ALGOS=implicit,halo \
    cargo test --release --test gpu_relation --test gpu_conv --test gpu_parity -- \
    --skip w30 "${skips[@]}" "$@"
