set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
R=/tmp/r3; mkdir -p $R
RESULTS_DIR=$R/check timeout 300 bash tools/gpu_check.sh > $R/check.log 2>&1
echo "check rc=$?"; cat $R/check/summary.txt; grep -E "agree|FAIL" $R/check/compare.log | head
S=$(ls -d /tmp/jax_roi_gpu_check.*/site | head -1); export PYTHONPATH=$S
JAX_PLATFORMS=cuda,cpu timeout 90 python3 .scratch/detprobe.py > $R/detprobe.log 2>&1; echo "probe rc=$?"; cat $R/detprobe.log | tail -5
JAX_PLATFORMS=cuda timeout 120 python3 benchmarks/run.py --device gpu --workloads faster-rcnn mask-rcnn adaptive --dtypes float32 --passes fwd+bwd --impls jax_roi jax_roi_det torchvision --repeat 20 --budget 2 --out $R/det > $R/det.log 2>&1
echo "det bench rc=$?"; grep -E "rcnn|adaptive" $R/det.log | cut -c1-250
tar czf $OUT/r3.tgz -C /tmp r3
