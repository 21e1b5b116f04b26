# The same quick check after the CPU-variants change (CMake refactor, extension.py choice, x86-64-v2 CPU kernels in the GPU wheel).
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
R=/tmp/r18b; mkdir -p $R
RESULTS_DIR=$R/check timeout 520 bash tools/gpu_check.sh > $R/check.log 2>&1
echo "check rc=$?"; cat $R/check/summary.txt
grep -E "agree|FAIL|Error" $R/check/compare.log | head -8
grep -E "passed|failed|^FAILED" $R/check/gpu-tests.log | tail -4
grep -E "ERROR SUMMARY|passed|failed" $R/check/sanitizer.log | tail -4
tar czf $OUT/r18b.tgz -C /tmp r18b
