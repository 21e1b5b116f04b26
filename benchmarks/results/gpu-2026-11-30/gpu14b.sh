set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
R=/tmp/r4; mkdir -p $R
RESULTS_DIR=$R/check timeout 280 bash tools/gpu_check.sh --only machine,install,gpu-tests,compare,sanitizer,no-cmdbuf > $R/check.log 2>&1
echo "check rc=$?"; cat $R/check/summary.txt | tail -9; grep -E "agree|FAIL" $R/check/compare.log | head -8; grep -E "passed|failed" $R/check/gpu-tests.log | tail -2
S=$(ls -d /tmp/jax_roi_gpu_check.*/site | head -1); export PYTHONPATH=$S
JAX_PLATFORMS=cuda,cpu timeout 80 python3 .scratch/detprobe.py > $R/detprobe.log 2>&1; echo "probe rc=$?"; tail -4 $R/detprobe.log
for v in 1 2 4; do
JAX_ROI_CUDA_OWNER_VEC=$v JAX_PLATFORMS=cuda timeout 70 python3 benchmarks/run.py --device gpu --workloads faster-rcnn mask-rcnn --dtypes float32 --passes fwd+bwd --impls jax_roi jax_roi_det --repeat 20 --budget 1.5 --out $R/det$v > $R/det$v.log 2>&1
echo "det bench vec=$v rc=$?"; grep -E "rcnn" $R/det$v.log | sed -E 's/ +/ /g' | cut -c1-200
done
tar czf $OUT/r4.tgz -C /tmp r4
