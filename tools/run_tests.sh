#!/usr/bin/env bash
# Builds jax_roi into a virtual environment and runs the test suite.
# Usage: bash tools/run_tests.sh [pytest arguments]   (see tools/_env.sh)
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"
# The console script, not `python -m pytest`: the latter would put the
# source tree (without the compiled extension) first on sys.path.
exec "$VENV/bin/pytest" "$@"
