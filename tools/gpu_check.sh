#!/usr/bin/env bash
# GPU validation of jax_roi, on a machine with an NVIDIA GPU and a CUDA-enabled
# jax (jax[cuda12] or jax[cuda13]). Needs no network and no compiler when a
# wheel built by tools/build_gpu_wheel.sh lies in dist/gpu/.
#
#   bash tools/gpu_check.sh              quick mode: under 8 minutes on one H100/H200
#   bash tools/gpu_check.sh --full       quick steps plus four long ones (at most 68 min)
#   bash tools/gpu_check.sh --only compare,sanitizer     selected steps
#   bash tools/gpu_check.sh --dry-run    the plan and the prerequisites; runs nothing
#   bash tools/gpu_check.sh --self-test-on-cpu   (no GPU) runs the steps' logic on
#                                        the CPU with the importable jax_roi
# Options: --wheel PATH (default: dist/gpu/jax_roi-*.whl matching the Python),
#          --no-install (use the jax_roi that python imports already).
# Environment: PYTHON (default python3: the one with jax and its CUDA plugin),
#   RESULTS_DIR (default benchmarks/results/gpu-<UTC date>).
#
# Steps and time budgets (each step is killed at its budget by `timeout`):
#   quick mode                                                       budget
#   machine    nvidia-smi, driver, jax/jaxlib/plugin versions, devices   15 s
#   install    the wheel into a private directory put first on
#              PYTHONPATH (pip --no-deps --target: the environment is
#              left alone); import check, embedded architectures          45 s
#              (no wheel: builds from source for this GPU only; 300 s,
#              quick mode then overruns)
#   gpu-tests  pytest: tests/test_gpu.py, tests/test_cuda_build.py and the
#              gradient-determinism tests that tolerate GPU atomics        70 s
#   compare    tools/gpu_compare.py: every op x dtype x layout x box
#              format/order, forward + feature and box gradients vs CPU   150 s
#   sanitizer  compute-sanitizer memcheck: gpu_compare --small and the
#              hostile-input tests (NaN/inf/huge boxes, bad indices)      100 s
#   no-cmdbuf  gpu_compare (float32) with XLA command buffers disabled     40 s
#   benchmark  benchmarks/run.py vs torchvision CUDA (float32, 2 workloads) 55 s
#                                                      quick total at most 475 s
#   --full adds
#   tests-all     the whole test suite on the GPU                        1500 s
#   compare-all   gpu_compare --all-combinations                          300 s
#   sanitizer-all memcheck + racecheck (small case), memcheck over every
#                 hostile-input test                                      900 s
#   benchmark-all every workload, float32 + bfloat16, pure-JAX baseline   900 s
#
# Writes RESULTS_DIR/: machine.txt, <step>.log per step, compare*.json and
# summary.txt (per step: status, seconds, budget). Exit status 1 if a
# correctness step (install, gpu-tests, compare*, sanitizer*, no-cmdbuf,
# tests-all) FAILED or ran out of time; a step whose tool or Python package is
# missing is SKIPPED with the reason (see the summary), not failed.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

MODE=quick DRY=0 SELFTEST=0 INSTALL=1 ONLY="" WHEEL=""
while [ $# -gt 0 ]; do
  case "$1" in
    --full) MODE=full ;;
    --dry-run) DRY=1 ;;
    --self-test-on-cpu) SELFTEST=1 ;;
    --no-install) INSTALL=0 ;;
    --only) ONLY=",$2,"; shift ;;
    --wheel) WHEEL="$2"; shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

PY="${PYTHON:-python3}"
RESULTS="${RESULTS_DIR:-$ROOT/benchmarks/results/gpu-$(date -u +%F)}"
mkdir -p "$RESULTS"
RESULTS="$(cd "$RESULTS" && pwd)"
SITE="$(mktemp -d /tmp/jax_roi_gpu_check.XXXXXX)/site"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
if [ "$SELFTEST" = 1 ]; then
  PLATFORMS=cpu COMPARE_ARGS="--platform cpu" BENCH_DEVICE=cpu
  export JAX_PLATFORMS=cpu
else
  # Both listed: a CUDA backend that fails to initialise is an error, not a
  # silent fallback to the CPU; the CPU is the comparison's reference.
  PLATFORMS=cuda,cpu COMPARE_ARGS="" BENCH_DEVICE=gpu
fi
CORRECTNESS=" install gpu-tests compare sanitizer no-cmdbuf tests-all compare-all sanitizer-all "
SUMMARY="$RESULTS/summary.txt"
: >"$SUMMARY.tmp"
failed=0 skipped=0 total_start=$SECONDS

wanted() {  # wanted STEP: selected by --only / the mode
  if [ -n "$ONLY" ]; then [[ "$ONLY" == *",$1,"* ]]; return; fi
  case "$1" in
    tests-all|compare-all|sanitizer-all|benchmark-all) [ "$MODE" = full ] ;;
    *) true ;;
  esac
}

record() {  # record STEP STATUS SECONDS BUDGET
  printf '%-14s %-34s %5s s  (budget %s s)\n' "$1" "$2" "$3" "$4" | tee -a "$SUMMARY.tmp"
}

skip() {  # skip STEP REASON
  wanted "$1" || return 0
  record "$1" "SKIPPED: $2" 0 -
  skipped=$((skipped + 1))
}

# step NAME BUDGET COMMAND...: runs COMMAND under `timeout`, its output in
# RESULTS/NAME.log. Exit 77 from COMMAND means "cannot run here" (SKIPPED,
# the reason in the log's last line).
step() {
  local name=$1 budget=$2; shift 2
  wanted "$name" || return 0
  if [ "$DRY" = 1 ]; then
    record "$name" "planned" 0 "$budget"
    return 0
  fi
  echo "=== $name (budget $budget s)"
  local t=$SECONDS rc status
  timeout --kill-after=15 "$budget" "$@" >"$RESULTS/$name.log" 2>&1
  rc=$?
  tail -n 15 "$RESULTS/$name.log"
  case $rc in
    0) status=ok ;;
    77) status="SKIPPED: $(tail -n 1 "$RESULTS/$name.log" | cut -c1-60)"; skipped=$((skipped + 1)) ;;
    124|137) status="TIMEOUT (killed at $budget s)" ;;
    *) status="FAILED (exit $rc)" ;;
  esac
  if [[ "$status" == TIMEOUT* || "$status" == FAILED* ]] && [[ "$CORRECTNESS" == *" $name "* ]]; then
    failed=$((failed + 1))
  fi
  record "$name" "$status" $((SECONDS - t)) "$budget"
  [ $rc -eq 0 ]
}

finish() {
  {
    echo "jax_roi GPU check, $MODE mode$([ "$SELFTEST" = 1 ] && echo ', SELF-TEST ON THE CPU (not a GPU result)'), $(date -u +%Y-%m-%dT%H:%M:%SZ), $((SECONDS - total_start)) s in all"
    echo "step           status                             seconds"
    cat "$SUMMARY.tmp"
    echo "correctness steps failed: $failed; steps skipped: $skipped"
  } >"$SUMMARY"
  rm -f "$SUMMARY.tmp"
  echo "=== summary ($SUMMARY)"
  cat "$SUMMARY"
  [ "$DRY" = 1 ] && exit 0
  [ "$failed" -eq 0 ]
  exit $?
}

have_py() { "$PY" -c "import $1" >/dev/null 2>&1; }

# --- prerequisites ---------------------------------------------------------
PYVER="$("$PY" -c 'import sys; print("%d%d" % sys.version_info[:2])' 2>/dev/null)" || {
  echo "error: $PY does not run (set PYTHON)" >&2; exit 2; }
SANITIZER="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)"
if [ -z "$WHEEL" ]; then
  WHEEL="$(ls "$ROOT"/dist/gpu/jax_roi-*-cp"$PYVER"-*.whl 2>/dev/null | head -n 1 || true)"
fi
{
  echo "python: $PY ($("$PY" --version 2>&1)); jax importable: $(have_py jax && echo yes || echo NO)"
  echo "pytest+hypothesis: $(have_py pytest && have_py hypothesis && echo yes || echo no)"
  echo "torch+torchvision: $(have_py torchvision && echo yes || echo no)"
  echo "compute-sanitizer: ${SANITIZER:-not found}"
  echo "wheel: ${WHEEL:-none for cp$PYVER in dist/gpu (will build from source)}"
  [ "$INSTALL" = 0 ] && echo "install: skipped (--no-install)"
  echo "results: $RESULTS"
} | tee "$RESULTS/prerequisites.txt"

# --- machine -----------------------------------------------------------------
machine() {
  date -u +"date: %Y-%m-%dT%H:%M:%SZ"
  echo "source: $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo 'unknown (no git)')"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv
    nvidia-smi
  else
    echo "nvidia-smi: not found"
  fi
  command -v nvcc >/dev/null && nvcc --version | tail -n 2
  [ -n "$SANITIZER" ] && "$SANITIZER" --version | tail -n 1
  "$PY" - <<'PY'
import importlib.metadata as md, sys
print("python", sys.version.split()[0])
for name in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda13-pjrt", "jax-cuda12-plugin",
             "jax-cuda12-pjrt", "nvidia-cuda-runtime", "torch", "torchvision", "numpy"):
  try:
    print(f"{name} {md.version(name)}")
  except md.PackageNotFoundError:
    pass
import jax
print("devices:", jax.devices())
print("default backend:", jax.default_backend())
PY
  for f in "$ROOT"/dist/gpu/BUILD_INFO.txt; do [ -f "$f" ] && { echo "--- $f"; cat "$f"; }; done
}
export -f machine
export SANITIZER PY ROOT
step machine 15 bash -c machine && [ "$DRY" = 0 ] && cp "$RESULTS/machine.log" "$RESULTS/machine.txt"

# --- install -----------------------------------------------------------------
install_wheel() {
  set -e
  mkdir -p "$SITE"
  if [ -n "$WHEEL" ]; then
    echo "installing $WHEEL into $SITE"
    "$PY" -m pip install -q --no-deps --no-index --no-compile --force-reinstall \
      --target "$SITE" "$WHEEL"
  else
    for m in scikit_build_core pybind11; do
      "$PY" -c "import $m" 2>/dev/null || { echo "no wheel and no $m to build one"; exit 77; }
    done
    command -v nvcc >/dev/null || { echo "no wheel and no nvcc to build one"; exit 77; }
    cc="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d .)"
    echo "no wheel for cp$PYVER: building from source for sm_$cc against the installed jaxlib"
    JAX_ROI_CUDA=ON JAX_ROI_CUDA_ARCHS="$cc-real" "$PY" -m pip install -q --no-deps \
      --no-build-isolation --no-index --target "$SITE" --config-settings=build-dir=build/gpu-check "$ROOT"
  fi
  cd /tmp  # never the source tree
  PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" "$PY" "$ROOT/tools/fatbin_archs.py"
  PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" JAX_PLATFORMS="$PLATFORMS" "$PY" - "$SITE" <<'PY'
import sys, jax, jax.numpy as jnp
import jax_roi, jax_roi._jax_roi as ext
assert jax_roi.__file__.startswith(sys.argv[1]), f"imported {jax_roi.__file__}, not the wheel"
assert ext.with_cuda, "the installed jax_roi has no CUDA kernels"
print("jax_roi", jax_roi.__version__, "from", jax_roi.__file__, "FFI API", ext.ffi_api_version)
x = jnp.ones((1, 2, 8, 8))
out = jax_roi.roi_align(x, jnp.array([[0, 1.0, 1.0, 6.0, 6.0]]), 2, sampling_ratio=2)
print("smoke roi_align on", out.devices(), "->", float(out.sum()))
assert float(out.sum()) == 8.0
PY
}
if [ "$INSTALL" = 0 ] || { [ "$SELFTEST" = 1 ] && [ -z "$WHEEL" ]; }; then
  skip install "--no-install: the importable jax_roi"
else
  budget=45; [ -z "$WHEEL" ] && budget=300
  export -f install_wheel
  export PY SITE WHEEL ROOT PYVER PLATFORMS
  if ! step install "$budget" bash -c install_wheel && [ "$DRY" = 0 ]; then
    echo "install failed: the other steps would not test this jax_roi" >&2
    finish
  fi
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi

# --- tests -------------------------------------------------------------------
QUICK_TESTS=(test_gpu.py test_cuda_build.py test_transforms.py::test_checkpoint
  test_hardening.py::test_concurrent_calls_from_threads_agree
  test_export.py::test_export_round_trip_in_a_fresh_process)
TEST_ENV=(JAX_PLATFORMS="$PLATFORMS")
if [ "$INSTALL" = 1 ] && [ -n "$WHEEL" ] && [ -f "$ROOT/dist/gpu/CUDA_ARCHS" ]; then
  # what the wheel's build asked for: the embedded code must match it
  TEST_ENV+=(JAX_ROI_EXPECT_CUDA_ARCHS="$(cat "$ROOT/dist/gpu/CUDA_ARCHS")")
fi
if have_py pytest && have_py hypothesis; then
  # From tests/: the source tree (no compiled module) must not shadow the install.
  step gpu-tests 70 env -C tests "${TEST_ENV[@]}" "$PY" -m pytest -q -p no:cacheprovider -rs "${QUICK_TESTS[@]}" \
    -k "not default_architectures_and_overrides and not refused"
  step tests-all 1500 env -C tests JAX_PLATFORMS="$PLATFORMS" "$PY" -m pytest -q -p no:cacheprovider -rs .
else
  skip gpu-tests "pytest or hypothesis not importable"
  skip tests-all "pytest or hypothesis not importable"
fi

# --- GPU vs CPU --------------------------------------------------------------
# shellcheck disable=SC2086
step compare 150 env JAX_PLATFORMS="$PLATFORMS" "$PY" tools/gpu_compare.py $COMPARE_ARGS \
  --json "$RESULTS/compare.json"
# shellcheck disable=SC2086
step compare-all 300 env JAX_PLATFORMS="$PLATFORMS" "$PY" tools/gpu_compare.py $COMPARE_ARGS \
  --all-combinations --json "$RESULTS/compare_all.json"

# --- compute-sanitizer -------------------------------------------------------
sanitize() {  # sanitize quick|all
  [ -n "$SANITIZER" ] || { echo "compute-sanitizer not found"; exit 77; }
  local filter=() hostile out
  out="$(mktemp)"
  # Only jax_roi's kernels are checked (XLA's own run uninstrumented): faster.
  # Options probed on a program without CUDA: if this sanitizer rejects
  # them, every kernel is checked (slower, still correct).
  filter=(--print-limit 20 --kernel-name kns=roi)
  if ! "$SANITIZER" --tool memcheck "${filter[@]}" true >/dev/null 2>&1; then
    echo "(compute-sanitizer rejects '${filter[*]}': checking every kernel)"
    filter=()
  fi
  run() {  # run TOOL COMMAND...: exit 77 if the sanitizer cannot use this device
    "$SANITIZER" --tool "$1" --error-exitcode 9 "${filter[@]}" "${@:2}" 2>&1 |
      tee "$out"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ] && grep -qE "Device not supported|not supported on this (device|platform)" "$out"; then
      echo "compute-sanitizer does not support this device/runtime"; exit 77
    fi
    [ "$rc" -eq 0 ] || exit "$rc"
  }
  echo "--- memcheck: gpu_compare --small"
  # shellcheck disable=SC2086
  run memcheck "$PY" tools/gpu_compare.py --small $COMPARE_ARGS
  if [ "$1" = all ]; then
    echo "--- racecheck: gpu_compare --small"
    # shellcheck disable=SC2086
    run racecheck "$PY" tools/gpu_compare.py --small $COMPARE_ARGS
    hostile='hostile or huge or padding or empty or edge_case or nan or infinite or validate or subnormal'
  else
    hostile='nan or infinite or empty or subnormal'
  fi
  if ! "$PY" -c "import pytest, hypothesis" 2>/dev/null; then
    echo "pytest/hypothesis missing: hostile-input tests not run under memcheck"; exit 77
  fi
  echo "--- memcheck: hostile-input tests ($hostile)"
  cd tests || exit 1
  # shellcheck disable=SC2046
  run memcheck "$PY" -m pytest -q -x -p no:cacheprovider test_hardening.py \
    $([ "$1" = all ] && echo test_roi_pool.py test_roi_align.py test_multi_scale.py) \
    -k "($hostile) and not several_devices and not torchvision and not large"
}
export -f sanitize
export COMPARE_ARGS
# (self-test: runs only with a compute-sanitizer stand-in on PATH)
step sanitizer 100 env JAX_PLATFORMS="$PLATFORMS" bash -c "sanitize quick"
step sanitizer-all 900 env JAX_PLATFORMS="$PLATFORMS" bash -c "sanitize all"

# --- XLA command buffers off ------------------------------------------------
# shellcheck disable=SC2086
step no-cmdbuf 40 env JAX_PLATFORMS="$PLATFORMS" \
  XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_enable_command_buffer=" \
  "$PY" tools/gpu_compare.py $COMPARE_ARGS --dtypes float32 --json "$RESULTS/compare_no_cmdbuf.json"

# --- benchmark ---------------------------------------------------------------
if have_py torchvision; then
  IMPLS=(jax_roi torchvision)
else
  IMPLS=(jax_roi)
  echo "torchvision not importable: the benchmark times jax_roi alone"
fi
BENCH_PLATFORM=$([ "$SELFTEST" = 1 ] && echo cpu || echo cuda)
if [ "$SELFTEST" = 1 ]; then
  step benchmark 55 env JAX_PLATFORMS=cpu "$PY" benchmarks/run.py --smoke --device cpu \
    --out "$RESULTS/benchmark"
else
  step benchmark 55 env JAX_PLATFORMS="$BENCH_PLATFORM" "$PY" benchmarks/run.py \
    --device "$BENCH_DEVICE" --workloads faster-rcnn mask-rcnn --dtypes float32 \
    --impls "${IMPLS[@]}" --repeat 20 --budget 2 --out "$RESULTS/benchmark"
fi
step benchmark-all 900 env JAX_PLATFORMS="$BENCH_PLATFORM" "$PY" benchmarks/run.py \
  --device "$BENCH_DEVICE" --workloads faster-rcnn mask-rcnn adaptive mask-rcnn-b8 \
  --dtypes float32 bfloat16 --impls "${IMPLS[@]}" xla --out "$RESULTS/benchmark_all"

finish
