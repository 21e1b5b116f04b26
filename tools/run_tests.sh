#!/usr/bin/env bash
# Builds jax_roi into a virtual environment and runs the test suite.
# Usage: bash tools/run_tests.sh [pytest arguments]   (see tools/_env.sh)
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"
# Without arguments: parallel over the machine's cores (pytest-xdist), the
# tests marked slow left out (.ci/run runs them). With arguments: exactly
# those (e.g. `-n 2 -m slow`, or a test file).
if [ $# -eq 0 ]; then
  set -- -q -n "$(nproc 2>/dev/null || echo 2)" -m "not slow"
fi
# The console script, not `python -m pytest`: the latter would put the
# source tree (without the compiled extension) first on sys.path.
exec "$VENV/bin/pytest" "$@"
