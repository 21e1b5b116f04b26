#!/usr/bin/env bash
# One-command GPU validation (run on a machine with an NVIDIA GPU and a
# CUDA-enabled jax; needs no network). Writes its logs under $OUT (default
# ./gpu_check_out):
#   1. builds jax_roi with CUDA against the installed jax (no build isolation),
#   2. runs the whole test suite on the GPU (JAX_PLATFORMS=cuda),
#   3. compares GPU and CPU outputs and gradients of every op,
#   4. runs compute-sanitizer memcheck and racecheck on a small case, and
#      memcheck over the hostile-input tests (NaN/inf/huge boxes, bad indices),
#   5. repeats the comparison with XLA's CUDA command buffers disabled,
#   6. runs the GPU benchmark (float32 and bfloat16).
# Each step's status is summarised at the end; the script fails if any did.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
status=()
step() {  # step NAME LOGFILE COMMAND...
  local name=$1 log=$2; shift 2
  echo "=== $name"
  local t=$SECONDS
  "$@" >"$OUT/$log" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$log"
  status+=("$name: $([ $rc -eq 0 ] && echo ok || echo "FAILED (rc $rc)") in $((SECONDS - t)) s")
  return $rc
}

{
  date -u +"date: %Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  nvcc --version | tail -n 1
  "$PY" -c 'import jax, jaxlib; print("jax", jax.__version__, "jaxlib", jaxlib.__version__, jax.devices())'
} >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

step build build.log env JAX_ROI_CUDA=ON "$PY" -m pip install -v --no-build-isolation \
  --no-deps --force-reinstall . || { printf '%s\n' "${status[@]}"; exit 1; }
# From tests/: `python -m pytest` in the root would import the source tree.
step tests tests.log bash -c "cd tests && JAX_PLATFORMS=cuda $PY -m pytest -q -p no:cacheprovider ."
step compare compare.log env JAX_PLATFORMS=cuda,cpu "$PY" tools/gpu_compare.py
step sanitizer sanitizer.log bash -c "
  set -e
  for tool in memcheck racecheck; do
    echo \"--- compute-sanitizer --tool \$tool\"
    JAX_PLATFORMS=cuda,cpu compute-sanitizer --tool \$tool --error-exitcode 9 \
      --target-processes all $PY tools/gpu_compare.py --small
  done
  echo \"--- compute-sanitizer memcheck over the hostile-input tests\"
  cd tests && JAX_PLATFORMS=cuda compute-sanitizer --tool memcheck --error-exitcode 9 \
    --target-processes all $PY -m pytest -q -p no:cacheprovider -x test_hardening.py \
    test_roi_pool.py test_roi_align.py test_multi_scale.py \
    -k 'hostile or huge or padding or empty or edge_case or nan or infinite or validate'"
step no-command-buffers compare_no_command_buffers.log env JAX_PLATFORMS=cuda,cpu \
  XLA_FLAGS="--xla_gpu_enable_command_buffer=" "$PY" tools/gpu_compare.py
if [ -f benchmarks/run.py ]; then
  step benchmark benchmark.log env JAX_PLATFORMS=cuda "$PY" benchmarks/run.py \
    --device gpu --dtypes float32 bfloat16 --out "$OUT"
fi
echo "=== summary"
printf '%s\n' "${status[@]}" | tee "$OUT/summary.txt"
! grep -q FAILED "$OUT/summary.txt"
