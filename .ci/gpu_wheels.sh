#!/usr/bin/env bash
# Download, for Python 3.12 on x86-64 Linux, the wheels .ci/gpu_check.sh needs beside a GPU
# image's own PyTorch and Triton, into .gpu-wheels/ (ignored by git; carry it to the GPU
# machine). Needs a package registry; the GPU machine needs none.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
mkdir -p .gpu-wheels
printf '%s\n' einops regex plotly ipywidgets tqdm safetensors pyyaml gguf hypothesis \
  nbval pytest pytest-xdist nbformat nbclient ipykernel nltk "rouge-score>=0.1.2" > .gpu-wheels/requirements.txt
# rouge-score (lab 5-1's reference) is published only as source: build its pure-Python wheel here.
$py -m pip wheel -q --no-deps -w .gpu-wheels "rouge-score>=0.1.2"
$py -m pip download -q --only-binary=:all: --find-links .gpu-wheels --python-version 3.12 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any \
  -d .gpu-wheels -r .gpu-wheels/requirements.txt
rm -f .gpu-wheels/numpy-*  # the GPU image has its own NumPy; keep the carry under 64 MiB
du -sh .gpu-wheels
