set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
R=/tmp/r2; mkdir -p $R
RESULTS_DIR=$R/check bash tools/gpu_check.sh --only machine,install,compare > $R/check.log 2>&1
echo "check (default kernels: per_roi) rc=$?"; tail -6 $R/check/summary.txt; grep "agree" $R/check/compare.log
S=$(ls -d /tmp/jax_roi_gpu_check.*/site | head -1); export PYTHONPATH=$S
JAX_PLATFORMS=cuda timeout 80 python3 benchmarks/run.py --device gpu --workloads faster-rcnn mask-rcnn adaptive \
  --dtypes float32 --passes fwd fwd+bwd+boxes --impls jax_roi torchvision --repeat 20 --budget 2 --out $R/bench > $R/bench.log 2>&1
echo "bench rc=$?"; grep -E "rcnn|adaptive" $R/bench.log | cut -c1-150
tar czf $OUT/r2.tgz -C /tmp r2
