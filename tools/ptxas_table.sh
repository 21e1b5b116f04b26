#!/usr/bin/env bash
# Registers and spills of every CUDA kernel, from ptxas (-Xptxas -v), for one
# architecture (default 90): a Markdown table on stdout. Needs nvcc and a
# Python with jax (for the XLA FFI headers): PYTHON (default python3), ARCH.
#   bash tools/ptxas_table.sh > benchmarks/results/ptxas-sm90.md
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ARCH="${ARCH:-90}"
INCLUDE="$("${PYTHON:-python3}" -c 'import jax; print(jax.ffi.include_dir())')"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
"${CUDACXX:-nvcc}" -DJAX_ROI_WITH_CUDA=1 -I"$ROOT/csrc" -isystem "$INCLUDE" -O3 -DNDEBUG -std=c++17 \
  --generate-code=arch=compute_$ARCH,code=sm_$ARCH --fmad=false -Xptxas -v \
  -c "$ROOT/csrc/roi_kernels.cu" -o "$OUT/k.o" 2>&1 | c++filt | "${PYTHON:-python3}" -c '
import re, sys
arch = sys.argv[1]
print(f"| kernel (sm_{arch}) | registers | spill stores / loads (bytes) |")
print("|---|---:|---:|")
name = spill = None
for line in sys.stdin:
  m = re.search(r"Compiling entry function .void (?:jax_roi::)?(?:cuda::)?([^(]*)\(", line)
  if m:
    name = m.group(1).replace("jax_roi::", "")
    continue
  m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
  if m:
    spill = f"{m.group(1)} / {m.group(2)}"
    continue
  m = re.search(r"Used (\d+) registers", line)
  if m and name:
    print(f"| `{name}` | {m.group(1)} | {spill} |")
    name = None
' "$ARCH"
