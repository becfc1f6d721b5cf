#!/usr/bin/env bash
# Build the GPU test executables and the benchmark binary here, and gather them with a run
# script into one folder (default: gpu-bundle/, git-ignored) that runs on a GPU host with no
# Rust toolchain:
#
#   bash gpu-bundle/run.sh LOGDIR [tests|perf|all]
#
# (two device calls of at most 5 minutes: `tests`, then `perf`; see scripts/gpu-run.sh).
# The folder must stay under 60 MB: everything is stripped and gzipped, and the script fails
# above that.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/gpu-bundle}"
cd "$root"
bash scripts/install-cuda-toolchain.sh >/dev/null
export PRRNET_REQUIRE_KERNELS=1
rm -rf "$out" && mkdir -p "$out/bin" "$out/reference" "$out/scripts"
# NVTX ranges for the Nsight capture (needs libclang here, see scripts/test.sh).
cargo build --release --bin prrnet --features nvtx
cp target/release/prrnet "$out/bin/"
# Every GPU test executable (tests/gpu_*.rs: gpu_parity, gpu_model_parity, gpu_relation, …);
# their paths come from cargo's JSON messages.
tests=()
for f in tests/gpu_*.rs; do
    [ -f "$f" ] && tests+=("$(basename "$f" .rs)")
done
for t in "${tests[@]}"; do
    exe=$(cargo test --release --test "$t" --no-run --message-format=json 2>/dev/null |
        python3 -c 'import sys, json
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])' | tail -n 1)
    if [ -z "$exe" ]; then
        echo "gpu-bundle: cannot build the test executable $t" >&2
        exit 1
    fi
    cp "$exe" "$out/bin/$t"
done
strip "$out"/bin/*
# The embedded kernel images (cubins for sm_80/sm_90 and PTX, in every executable) compress
# about 4×: ship bin/*.gz; run.sh unpacks them on first use.
gzip -9 "$out"/bin/*
cp reference/bench.py reference/bench_common.py reference/prrnet_ref.py "$out/reference/"
[ -f reference/bench_relation.py ] && cp reference/bench_relation.py "$out/reference/"
cp scripts/perf-report.py "$out/scripts/"
cp scripts/gpu-run.sh "$out/run.sh"
size_kb=$(du -sk "$out" | cut -f1)
du -sh "$out"
ls -l "$out/bin"
if [ "$size_kb" -gt $((60 * 1024)) ]; then
    echo "gpu-bundle: $out is ${size_kb} KiB, over the 60 MB limit" >&2
    exit 1
fi
