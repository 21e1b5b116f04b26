# Quick GPU check of issue 18's session (run from the repository root, wheel in dist/gpu).
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
R=/tmp/r18; mkdir -p $R
RESULTS_DIR=$R/check timeout 520 bash tools/gpu_check.sh > $R/check.log 2>&1
echo "check rc=$?"; cat $R/check/summary.txt
grep -E "agree|FAIL|Error" $R/check/compare.log | head -8
grep -E "passed|failed|^FAILED" $R/check/gpu-tests.log | tail -4
grep -E "ERROR SUMMARY|passed|failed" $R/check/sanitizer.log | tail -4
tar czf $OUT/r18.tgz -C /tmp r18
