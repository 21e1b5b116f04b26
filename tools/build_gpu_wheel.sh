#!/usr/bin/env bash
# Builds HERE (a machine with nvcc; no GPU needed) a wheel of jax_roi with the
# CUDA kernels for a GPU machine that cannot build or download: by default a
# CPython 3.12 wheel, compiled against jaxlib 0.10.2's XLA FFI headers (the
# oldest supported jaxlib: an extension built with older FFI headers loads on
# newer jaxlibs, not the reverse), into dist/gpu/ (ignored by git; small
# enough for the device tool's `carry`). tools/gpu_check.sh installs it.
#
#   bash tools/build_gpu_wheel.sh
#
# Environment:
#   PYTHON              interpreter of the target's Python version (default:
#                       python3.12, else ~/.pyenv/versions/3.12.*)
#   JAXLIB_HEADERS      jaxlib version whose FFI headers to build against (0.10.2)
#   JAX_ROI_CUDA_ARCHS  CUDA architectures (default: empty = the full default
#                       list, docs/gpu.md; e.g. "90-real" for H100/H200 only)
#   JAX_ROI_CUDA_LINEINFO  ON (default: compute-sanitizer reports source lines) or OFF
#   JAX_ROI_CPU_ARCH    -march of the CPU kernels (default: x86-64-v2, portable to
#                       every CPU jaxlib runs on (it needs AVX), like the CPU wheel's
#                       baseline; this wheel has no wider variants (CUDA builds cannot):
#                       "native" would be this machine's CPU, maybe not the GPU host's)
#   OUT_DIR             where the wheel goes (default: dist/gpu)
#   BUILD_VENV          the build environment (default: .venv-gpu-build, reused)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
start=$SECONDS
OUT_DIR="${OUT_DIR:-$ROOT/dist/gpu}"
BUILD_VENV="${BUILD_VENV:-$ROOT/.venv-gpu-build}"
JAXLIB_HEADERS="${JAXLIB_HEADERS:-0.10.2}"

if [ -z "${PYTHON:-}" ]; then
  # (a pyenv shim may exist and fail: try it)
  if command -v python3.12 >/dev/null 2>&1 && python3.12 -c '' 2>/dev/null; then
    PYTHON="$(command -v python3.12)"
  else
    for p in "$HOME"/.pyenv/versions/3.12.*/bin/python3.12; do
      [ -x "$p" ] && PYTHON="$p"
    done
  fi
fi
if [ -z "${PYTHON:-}" ] || ! "$PYTHON" -c '' 2>/dev/null; then
  echo "error: no Python 3.12 found (set PYTHON=/path/to/python3.x)" >&2
  exit 1
fi
if ! command -v "${CUDACXX:-nvcc}" >/dev/null 2>&1; then
  echo "error: nvcc not found: a CUDA toolkit is needed to build the CUDA kernels" >&2
  exit 1
fi

if [ ! -x "$BUILD_VENV/bin/python" ]; then
  echo "== creating the build environment $BUILD_VENV with $PYTHON"
  "$PYTHON" -m venv "$BUILD_VENV"
fi
# jaxlib only for its headers (found without importing it): no dependencies.
"$BUILD_VENV/bin/python" -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.13" cmake ninja
"$BUILD_VENV/bin/python" -m pip install -q --no-deps "jaxlib==$JAXLIB_HEADERS"

echo "== building the wheel ($(nvcc --version | tail -n 1); archs: ${JAX_ROI_CUDA_ARCHS:-default})"
rm -rf "$OUT_DIR"
mkdir -p "$OUT_DIR"
build_start=$SECONDS
# Own build directory: not the one pip/CI builds of the same wheel tag use.
JAX_ROI_CUDA=ON JAX_ROI_CUDA_ARCHS="${JAX_ROI_CUDA_ARCHS:-}" \
JAX_ROI_CUDA_LINEINFO="${JAX_ROI_CUDA_LINEINFO:-ON}" \
JAX_ROI_CPU_ARCH="${JAX_ROI_CPU_ARCH:-x86-64-v2}" \
  "$BUILD_VENV/bin/python" -m pip wheel -q --no-deps --no-build-isolation -w "$OUT_DIR" \
  --config-settings=build-dir=build/gpu-wheel "$ROOT"
build_seconds=$((SECONDS - build_start))

wheel="$(ls "$OUT_DIR"/jax_roi-*.whl)"
check="$(mktemp -d)"
trap 'rm -rf "$check"' EXIT
"$BUILD_VENV/bin/python" -m zipfile -e "$wheel" "$check"
so="$(ls "$check"/jax_roi/_jax_roi*.so)"
needed="$(readelf -d "$so")"  # captured: `readelf | grep -q` may SIGPIPE under pipefail
if grep -q 'NEEDED.*libcudart' <<<"$needed"; then
  echo "error: $so needs a shared libcudart (must be static)" >&2
  exit 1
fi
# The extension alone (jax is not installed in the build environment).
module_info="$("$BUILD_VENV/bin/python" - "$so" <<'PY'
import importlib.machinery, importlib.util, sys
loader = importlib.machinery.ExtensionFileLoader("jax_roi._jax_roi", sys.argv[1])
ext = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
loader.exec_module(ext)
assert ext.with_cuda, "built without CUDA"
print(f"FFI API {'.'.join(map(str, ext.ffi_api_version))}, CUDA targets {len(ext.cuda_targets())}")
PY
)"
archs="$("$BUILD_VENV/bin/python" tools/fatbin_archs.py "$so" --json)"
# What the build asked for (CMake's resolved list): tools/gpu_check.sh passes
# it to tests/test_cuda_build.py as JAX_ROI_EXPECT_CUDA_ARCHS.
sed -n 's/^CMAKE_CUDA_ARCHITECTURES:STRING=//p' build/gpu-wheel/CMakeCache.txt >"$OUT_DIR/CUDA_ARCHS"
JAX_ROI_EXPECT_CUDA_ARCHS="$(cat "$OUT_DIR/CUDA_ARCHS")" "$BUILD_VENV/bin/python" - "$so" <<'PY'
import importlib.util, os, sys
spec = importlib.util.spec_from_file_location("fatbin_archs", "tools/fatbin_archs.py")
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)
want = tool.parse_cmake_archs(os.environ["JAX_ROI_EXPECT_CUDA_ARCHS"])
got = tool.archs(sys.argv[1])
assert got == want, f"embedded {got} != requested {want}"
PY
cat >"$OUT_DIR/BUILD_INFO.txt" <<EOF
wheel: $(basename "$wheel") ($(du -h "$wheel" | cut -f1), module $(du -h "$so" | cut -f1))
built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), in ${build_seconds} s
source: $(git describe --always --dirty 2>/dev/null || echo unknown) ($(git rev-parse --abbrev-ref HEAD 2>/dev/null || echo ?))
python: $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')
jaxlib headers: $JAXLIB_HEADERS ($module_info)
nvcc: $(nvcc --version | tail -n 1)
cuda archs requested: ${JAX_ROI_CUDA_ARCHS:-default} = $(cat "$OUT_DIR/CUDA_ARCHS"); lineinfo ${JAX_ROI_CUDA_LINEINFO:-ON}
embedded: $archs
cpu arch: ${JAX_ROI_CPU_ARCH:-x86-64-v2}
EOF
cat "$OUT_DIR/BUILD_INFO.txt"
echo "== done in $((SECONDS - start)) s: $wheel"
