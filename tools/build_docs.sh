#!/usr/bin/env bash
# Builds the documentation site (Sphinx + MyST; docs/conf.py) into
# build/docs/html/, warnings as errors. Installs nothing: run it with an
# interpreter whose environment has jax_roi installed (or on PYTHONPATH) and
# the docs dependency group (pip install --group docs; pip >= 25.1), e.g.
#   PYTHON=.venv-3.12/bin/python bash tools/build_docs.sh
#   PYTHON=python3 OUT=/tmp/site bash tools/build_docs.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/build/docs/html}"
# -E: no cached environment (included README sections change without the
# including page changing).
# -P: the installed jax_roi, not the source tree of the working directory.
"${PYTHON:-python3}" -P -m sphinx -W --keep-going -E -q -b html \
  -d "$ROOT/build/docs/doctrees" "$ROOT/docs" "$OUT"
echo "docs: $OUT/index.html"
