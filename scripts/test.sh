#!/usr/bin/env bash
# The project's test command (README): installs the pinned CUDA compiler if needed, builds
# every kernel (failing when one does not compile), and runs the whole test suite.
# GPU parity tests skip without a GPU; PRRNET_REQUIRE_GPU=1 makes them fail instead.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/install-cuda-toolchain.sh
export PRRNET_REQUIRE_KERNELS=1
cargo build --release --all-targets
cargo test --release
