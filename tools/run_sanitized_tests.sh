#!/usr/bin/env bash
# Rebuilds jax_roi with AddressSanitizer + UndefinedBehaviorSanitizer into a
# virtual environment and runs the kernel tests (hostile inputs included)
# under them: any report fails the run.
# The CUDA kernels run on the CPU by the emulation (tests/test_cuda_emulation.py,
# when selected) are built with the sanitizers too (JAX_ROI_EMULATION_SANITIZE=1).
# Usage: VENV=.venv-3.12 bash tools/run_sanitized_tests.sh [pytest args]
# (RESTORE=0 leaves the sanitized build installed; INSTALL=0 skips the
#  sanitized build when an earlier RESTORE=0 run left it installed)
# (default pytest args: the op and validation tests, skipping the slow
#  pure-JAX cases)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:?set VENV to a virtual environment with jax_roi[test] installed}"
VENV="$(cd "$VENV" && pwd)"  # absolute: the commands below run from other directories
"$VENV/bin/python" -m pip install -q scikit-build-core pybind11 cmake ninja
if [ "${INSTALL:-1}" != 0 ]; then
  echo "== building jax_roi with sanitizers into $VENV"
  # tools/_env.sh's record of the regular build no longer holds: its next
  # run rebuilds (whether or not the restore at the end happens).
  rm -f "$VENV/.jax_roi-build-key"
  JAX_ROI_SANITIZE=ON JAX_ROI_CUDA=OFF "$VENV/bin/python" -m pip install -q \
    --no-build-isolation --no-deps --force-reinstall "$ROOT"
fi
# Check that the sanitized module is the one installed (located without
# importing it: a sanitized module only loads with ASan preloaded).
PKG="$(cd /tmp && "$VENV/bin/python" -c 'import importlib.util as u; print(u.find_spec("jax_roi").submodule_search_locations[0])')"
# (ldd's output is captured first: `ldd | grep -q` under pipefail fails at
# random when grep exits before ldd has written everything: SIGPIPE.)
DEPS="$(ldd "$PKG"/_jax_roi*.so)"
if ! grep -q libasan <<<"$DEPS"; then
  echo "error: the jax_roi module in $PKG is not a sanitized build" >&2
  exit 1
fi
# The ASan runtime must come first; libstdc++ must be loaded when it starts
# (python does not link it), or ASan cannot intercept C++ exceptions and
# aborts at the first one jaxlib throws.
PRELOAD="$(${CXX:-g++} -print-file-name=libasan.so) $(${CXX:-g++} -print-file-name=libstdc++.so)"
cd "$ROOT"
if [ "$#" -eq 0 ]; then
  set -- -q -p no:cacheprovider tests/test_roi_pool.py tests/test_roi_align.py \
    tests/test_multi_scale.py tests/test_validation.py tests/test_hardening.py \
    tests/test_cuda_emulation.py -k "not xla and not torchvision and not extended_sweep"
fi
status=0
# Leak checking is off: CPython and jaxlib keep allocations until exit.
LD_PRELOAD="$PRELOAD" JAX_ROI_EMULATION_SANITIZE=1 \
ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
  "$VENV/bin/pytest" "$@" || status=$?
if [ "${RESTORE:-1}" = 0 ]; then
  exit $status
fi
echo "== restoring the regular build"
JAX_ROI_SANITIZE=OFF "$VENV/bin/python" -m pip install -q --no-build-isolation --no-deps \
  --force-reinstall "$ROOT"
exit $status
