set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
R=/tmp/r5; mkdir -p $R
RESULTS_DIR=$R/check timeout 170 bash tools/gpu_check.sh --only machine,install,gpu-tests,compare > $R/check.log 2>&1
echo "check rc=$?"; cat $R/check/summary.txt | tail -6; grep -E "agree|FAIL" $R/check/compare.log | head -8; grep -E "passed|failed|^FAILED" $R/check/gpu-tests.log | tail -4
tar czf $OUT/r5.tgz -C /tmp r5
