#!/usr/bin/env bash
# The project's test command (README): installs the pinned CUDA compiler if needed, builds
# every kernel (failing when one does not compile), checks formatting, clippy and the
# documentation, and runs the whole test suite.
# GPU parity tests skip without a GPU; PRRNET_REQUIRE_GPU=1 makes them fail instead. The GPU tests
# then run a second time against cuda-emu (scripts/test-emu.sh), the kernels emulated on the CPU,
# so they never go unexercised; PRRNET_SKIP_EMU=1 leaves that step out.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/install-cuda-toolchain.sh
# libclang for the `nvtx` feature's bindings (Debian package; root on CI and dev machines).
if ! ldconfig -p | grep -q 'libclang\.so\b\|libclang-[0-9.]*\.so\b'; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq libclang-dev
    else
        echo "libclang is missing: install libclang-dev for the nvtx feature" >&2
    fi
fi
export PRRNET_REQUIRE_KERNELS=1
# The code standards: formatted, no clippy warnings, documentation without broken links.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add rustfmt clippy
fi
cargo fmt --check
cargo build --release --all-targets
cargo clippy --release --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --release --no-deps
# The profiling build (NVTX ranges) must keep compiling too.
cargo build --release --features nvtx
cargo test --release
if [ "${PRRNET_SKIP_EMU:-0}" != 1 ]; then
    bash scripts/test-emu.sh
fi
