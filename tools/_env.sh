# Sourced by tools/run_tests.sh and tools/run_demo.sh: creates (once) and
# updates a virtual environment with jax_roi built from this checkout.
#
#   PYTHON    interpreter to use (default: python3)
#   JAX_SPEC  pip requirement(s) for jax, e.g. "jax==0.10.2 jaxlib==0.10.2"
#             (default: the newest release the package allows)
#   VENV      the environment's directory (default: .venv-<python version>)
#   EXTRAS    extras of jax_roi to install (default: test)
#   JAX_ROI_CUDA  AUTO (default), ON or OFF: build the CUDA kernels
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "error: $PYTHON not found (set PYTHON=/path/to/python3.11+)" >&2
  exit 1
fi
PY_VERSION="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
VENV="${VENV:-$ROOT/.venv-$PY_VERSION}"
EXTRAS="${EXTRAS:-test}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV with $PYTHON ($PY_VERSION)"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
echo "== installing jax_roi[$EXTRAS] ${JAX_SPEC:-} into $VENV (builds the C++/CUDA extension)"
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install -q --upgrade "$ROOT[$EXTRAS]" ${JAX_SPEC:-}
"$VENV/bin/python" -P - <<'PY'  # -P: not the source tree
import jax, jax_roi
from jax_roi._core import extension
print(f"== jax {jax.__version__}, jax_roi {jax_roi.__version__}, "
      f"built against XLA FFI API {'.'.join(map(str, extension.ext.ffi_api_version))}, "
      f"CUDA kernels: {extension.WITH_CUDA}")
PY
