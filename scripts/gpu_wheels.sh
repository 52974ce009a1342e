#!/usr/bin/env bash
# Download, HERE (where pip reaches the registry), the wheels that the lent GPU machine's image lacks, into .whl/
# (git-ignored; the device tool's `run` carries it with carry=[".whl"]). The lent machine reaches no registry, so
# scripts/gpu_check.sh installs exactly these with --no-index --no-deps.
#
# Its image already holds torch (2.11.0+cu130 when last read), transformers, tokenizers, safetensors, numpy, scipy,
# pandas, pyarrow, matplotlib, nvidia-ml-py, rich, pyyaml, numba, h5py, pytest (/work/.library/device/KINDS.md);
# megbed's other dependencies (pyproject.toml) and theirs are below, pinned to the versions `make test` uses here.
# The image's python3 is CPython 3.12 on x86-64.
#
# Why not a CUDA torch==2.13 from the registry: PyPI's torch-2.13.0-cp311/cp312 manylinux_2_28_x86_64 wheel IS the
# CUDA build (it requires cuda-toolkit 13.0.3, nvidia-cudnn-cu13 9.20.0.48, nvidia-nccl-cu13, nvidia-nvshmem-cu13,
# triton 3.7.1), but with those it is several GB, over the 64 MiB a device call may carry, and the lent machine
# cannot download it. Its own torch 2.11+cu130 satisfies pyproject's torch>=2.4.
#
# Usage (in the repository root): scripts/gpu_wheels.sh        (~15 MB, seconds)
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-.venv/bin/pip}
DEST=${DEST:-.whl}
PY_VERSION=${PY_VERSION:-3.12}
mkdir -p "$DEST"
WHEELS=(
  diffusers==0.42.1 tomesd==0.1.3 pyzmq==27.3.0 sionna-no-rt==2.2.0 gymnasium==1.4.0 farama-notifications==0.0.6
  pytorch-msssim==1.0.0 smbus2==0.6.1 importlib_metadata==10.2.0 lazy-importer==0.1.0 importlib_resources==7.1.0
)
"$PIP" download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${WHEELS[@]}"
ls -la "$DEST"
du -sh "$DEST"
