#!/usr/bin/env bash
# Install the pinned CUDA 13.0 compiler (nvcc, ptxas, headers) into .cuda-venv at the repository
# root, from Python wheels (no GPU and no system CUDA needed). See docs/TOOLCHAIN facts:
# all five wheels must be pinned, or nvvm/crt resolve to a newer release whose PTX the 13.0
# ptxas and the GPU host's driver reject. Idempotent: does nothing when nvcc is already there.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.cuda-venv"
python="${PYTHON:-python3}"

find_nvcc() {
    local n
    for n in "$venv"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc; do
        if [ -x "$n" ]; then
            echo "$n"
            return 0
        fi
    done
    return 1
}

if nvcc="$(find_nvcc)"; then
    echo "nvcc already installed: $nvcc"
    "$nvcc" --version | tail -n 2
    exit 0
fi

if [ ! -x "$venv/bin/pip" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/pip" install --disable-pip-version-check --quiet \
    nvidia-cuda-nvcc==13.0.88 \
    nvidia-nvvm==13.0.88 \
    nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 \
    nvidia-cuda-cccl==13.0.85

if nvcc="$(find_nvcc)"; then
    echo "installed nvcc: $nvcc"
    "$nvcc" --version | tail -n 2
else
    echo "error: the wheels installed but no nvcc was found under $venv" >&2
    exit 1
fi
