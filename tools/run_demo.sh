#!/usr/bin/env bash
# Builds jax_roi into a virtual environment and runs the demo.
# Usage: bash tools/run_demo.sh [demo arguments]   (see tools/_env.sh)
EXTRAS="${EXTRAS:-demo}"
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
exec "$VENV/bin/python" "$ROOT/examples/demo.py" "$@"
