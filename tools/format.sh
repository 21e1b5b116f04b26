#!/usr/bin/env bash
# Formats the code base: Python with ruff (format, plus the import-sorting and
# pyupgrade fixes that the format check enforces) and C++/CUDA with
# clang-format (.clang-format). .ci/run checks the same with FORMAT_CHECK=1.
#
#   bash tools/format.sh            # rewrites files in place
#
# Tools: RUFF / CLANG_FORMAT (default: from PATH; the pinned versions are in
# pyproject.toml's dependency group dev: pip install --group dev).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RUFF="${RUFF:-ruff}"
CLANG_FORMAT="${CLANG_FORMAT:-clang-format}"

"$RUFF" check --fix --extend-select I,UP --quiet .
"$RUFF" format --quiet .
# The tracked C++/CUDA sources (git ls-files: no build trees, no venvs).
git ls-files -z -- 'csrc/*' 'tests/cuda_emulation/*' \
  | grep -z -E '\.(h|cc|cpp|cu|cuh)$' | xargs -0 -r "$CLANG_FORMAT" -i
echo "formatted; review with git diff"
