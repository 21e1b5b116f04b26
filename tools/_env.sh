# Sourced by tools/run_tests.sh and tools/run_demo.sh: creates (once) a
# virtual environment and installs jax_roi built from this checkout into it,
# again only when a source file or a build option changed since the last
# build (or when asked).
#
#   PYTHON    interpreter to use (default: python3); a pyenv name such as
#             python3.13 works even when that version is not pyenv's active one
#   JAX_SPEC  pip requirement(s) for jax, e.g. "jax==0.10.2 jaxlib==0.10.2"
#             (default: the newest release the package allows)
#   VENV      the environment's directory (default: .venv-<python version>)
#   EXTRAS    extras of jax_roi to install (default: test)
#   JAX_ROI_CUDA  AUTO (default), ON or OFF: build the CUDA kernels
#   JAX_ROI_REBUILD=1  rebuild and reinstall even if nothing changed
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

# The interpreter is probed by running it: `command -v` also finds pyenv
# shims of versions that are installed but not selected, which then fail.
probe_python() {
  "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null
}
# Sets PYTHON (a runnable interpreter) and PY_VERSION from the name $1.
resolve_python() {
  PYTHON="$1"
  local resolved="" candidate
  if ! PY_VERSION="$(probe_python "$PYTHON")"; then
    if [[ "$PYTHON" =~ ^python([0-9]+\.[0-9]+)$ ]] && command -v pyenv >/dev/null 2>&1; then
      for candidate in "$(pyenv root)"/versions/"${BASH_REMATCH[1]}".*/bin/"$PYTHON"; do
        if [ -x "$candidate" ] && PY_VERSION="$(probe_python "$candidate")"; then
          resolved="$candidate"
        fi
      done
    fi
    if [ -z "$resolved" ]; then
      echo "error: cannot run $PYTHON (set PYTHON to a Python 3.11+ interpreter, e.g." \
           "PYTHON=/usr/bin/python3.12 or PYTHON=python3.12)" >&2
      return 1
    fi
    echo "== $PYTHON is not among pyenv's selected versions; using $resolved"
    PYTHON="$resolved"
  fi
  if [[ ! "$PY_VERSION" =~ ^3\.(1[1-9]|[2-9][0-9])$ ]]; then
    echo "error: $PYTHON is Python $PY_VERSION; jax_roi needs Python 3.11 or newer" >&2
    return 1
  fi
}

# What the build depends on: the content of every source file (tracked, or
# new and not ignored) and the options that change the extension.
source_files() {
  if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$ROOT" ls-files --cached --others --exclude-standard -- \
      CMakeLists.txt pyproject.toml cmake csrc jax_roi | sort -u
  else
    (cd "$ROOT" && find CMakeLists.txt pyproject.toml cmake csrc jax_roi -type f \
      ! -name '*.so' ! -name '*.pyc' 2>/dev/null | sort)
  fi
}
build_key() {
  (
    cd "$ROOT"
    source_files | while IFS= read -r f; do [ -f "$f" ] && sha256sum "$f"; done
    echo "JAX_ROI_CUDA=${JAX_ROI_CUDA:-AUTO}"
    for v in JAX_SPEC JAX_ROI_CUDA_ARCHS JAX_ROI_CPU_ARCH JAX_ROI_CPU_VARIANTS \
             JAX_ROI_SANITIZE JAX_ROI_WERROR JAX_ROI_CUDA_LINEINFO CMAKE_ARGS CUDAARCHS \
             CMAKE_CUDA_ARCHITECTURES XLA_FFI_INCLUDE_DIR; do
      echo "$v=${!v:-}"
    done
    echo "nvcc=$(command -v nvcc || true)"
  ) | sha256sum | cut -d' ' -f1
}
# Filters pip -v's output to the build's progress: ninja's "[step/steps]"
# lines (shortened to the file they build) and pip's milestones.
show_progress() {
  local line
  while IFS= read -r line; do
    if [[ "$line" =~ ^\ *(\[[0-9]+/[0-9]+\])\ .*\ ([^ ]+)$ ]]; then
      echo "   ${BASH_REMATCH[1]} ${BASH_REMATCH[2]}"
    elif [[ "$line" =~ ^(Installing\ build\ dependencies|Building\ wheels|Successfully\ installed) ]]; then
      echo "   ${line:0:100}"
    fi
  done
}
# Whether $VENV's jax_roi was built from this very source and options ($1:
# the build key), has the extras $EXTRAS installed, and imports.
up_to_date() {
  local extra
  [ "${JAX_ROI_REBUILD:-0}" != 1 ] && [ -f "$VENV/.jax_roi-build-key" ] \
    && [ "$(cat "$VENV/.jax_roi-build-key")" = "$1" ] || return 1
  for extra in ${EXTRAS//,/ }; do
    grep -qxF "$extra" "$VENV/.jax_roi-extras" 2>/dev/null || return 1
  done
  "$VENV/bin/python" -P -c 'import jax_roi._jax_roi' >/dev/null 2>&1
}

# Tests source this file with JAX_ROI_ENV_FUNCTIONS_ONLY=1 for the functions.
if [ "${JAX_ROI_ENV_FUNCTIONS_ONLY:-0}" = 1 ]; then
  return 0
fi

resolve_python "$PYTHON" || exit 1
VENV="${VENV:-$ROOT/.venv-$PY_VERSION}"
EXTRAS="${EXTRAS:-test}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV with $PYTHON ($PY_VERSION)"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi

STAMP="$VENV/.jax_roi-build-key"
LOG="$VENV/jax_roi-build.log"
KEY="$(build_key)"
if up_to_date "$KEY"; then
  echo "== jax_roi[$EXTRAS] in $VENV is up to date (no source file or build option changed" \
       "since its build; JAX_ROI_REBUILD=1 rebuilds)"
else
  if command -v nvcc >/dev/null 2>&1 && [ "${JAX_ROI_CUDA:-AUTO}" != OFF ]; then
    what="the C++ CPU kernels and, with $(command -v nvcc), the CUDA kernels for every GPU"
    what="$what generation (5-10 minutes on 2 cores; JAX_ROI_CUDA=OFF skips them)"
  else
    what="the C++ CPU kernels (2-4 minutes on 2 cores with the dependencies)"
  fi
  echo "== building jax_roi[$EXTRAS] ${JAX_SPEC:-} into $VENV: $what; log: $LOG"
  rm -f "$STAMP"
  start=$SECONDS
  # A long compilation step (nvcc) prints nothing for minutes: say that it runs.
  (while sleep 30; do echo "   ... building, $((SECONDS - start)) s"; done) &
  heartbeat=$!
  trap 'kill "$heartbeat" 2>/dev/null || true' EXIT
  # pip -v shows the build's own progress; show_progress keeps its milestones.
  # shellcheck disable=SC2086
  if ! "$VENV/bin/python" -m pip install -v --upgrade "$ROOT[$EXTRAS]" ${JAX_SPEC:-} 2>&1 \
       | tee "$LOG" | show_progress; then
    echo "error: building jax_roi failed; the end of $LOG:" >&2
    tail -n 40 "$LOG" >&2
    exit 1
  fi
  kill "$heartbeat" 2>/dev/null || true
  trap - EXIT
  echo "$KEY" > "$STAMP"
  { cat "$VENV/.jax_roi-extras" 2>/dev/null || true; tr ',' '\n' <<< "$EXTRAS"; } \
    | sort -u > "$VENV/.jax_roi-extras.new"
  mv "$VENV/.jax_roi-extras.new" "$VENV/.jax_roi-extras"
  echo "== built and installed in $((SECONDS - start)) s"
fi
"$VENV/bin/python" -P - <<'PY'  # -P: not the source tree
import jax, jax_roi
from jax_roi._core import extension
print(f"== jax {jax.__version__}, jax_roi {jax_roi.__version__}, "
      f"built against XLA FFI API {'.'.join(map(str, extension.ext.ffi_api_version))}, "
      f"CUDA kernels: {extension.WITH_CUDA}")
PY
