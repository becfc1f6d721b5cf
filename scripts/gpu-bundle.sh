#!/usr/bin/env bash
# Build the GPU test executables and the benchmark binary here, and gather them with a run
# script into one folder (default: gpu-bundle/, git-ignored) that runs on a GPU host with no
# Rust toolchain:   bash gpu-bundle/run.sh LOGDIR
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/gpu-bundle}"
cd "$root"
bash scripts/install-cuda-toolchain.sh >/dev/null
export PRRNET_REQUIRE_KERNELS=1
rm -rf "$out" && mkdir -p "$out/bin" "$out/reference"
# NVTX ranges for the Nsight capture (needs libclang here, see scripts/test.sh).
cargo build --release --bin prrnet --features nvtx
cp target/release/prrnet "$out/bin/"
# The GPU test executables (their paths come from cargo's JSON messages).
for t in gpu_parity gpu_model_parity; do
    exe=$(cargo test --release --test "$t" --no-run --message-format=json 2>/dev/null |
        python3 -c 'import sys, json
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])' | tail -n 1)
    cp "$exe" "$out/bin/$t"
done
strip "$out"/bin/*
cp reference/bench.py reference/prrnet_ref.py "$out/reference/"
cp scripts/gpu-run.sh "$out/run.sh"
du -sh "$out"
