#!/bin/bash
# Issue 13 GPU run: quick correctness (default kernels), per-RoI kernels vs the CPU,
# benchmarks of both forward variants vs torchvision CUDA.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
R=/tmp/r; mkdir -p $R
RESULTS_DIR=$R/check bash tools/gpu_check.sh --only machine,install,gpu-tests,compare,sanitizer > $R/check.log 2>&1
echo "check rc=$?"; tail -9 $R/check/summary.txt
S=$(ls -d /tmp/jax_roi_gpu_check.*/site | head -1); export PYTHONPATH=$S
JAX_ROI_CUDA_FORWARD=per_roi JAX_PLATFORMS=cuda,cpu timeout 100 python3 tools/gpu_compare.py --json $R/compare_per_roi.json > $R/compare_per_roi.log 2>&1
echo "compare per_roi rc=$?"; tail -2 $R/compare_per_roi.log
for v in per_output per_roi; do
  JAX_ROI_CUDA_FORWARD=$v JAX_PLATFORMS=cuda timeout 100 python3 benchmarks/run.py --device gpu \
    --workloads faster-rcnn mask-rcnn --dtypes float32 --passes fwd fwd+bwd fwd+bwd+boxes \
    --impls jax_roi torchvision --repeat 20 --budget 2 --out $R/bench_$v > $R/bench_$v.log 2>&1
  echo "bench $v rc=$?"; grep -E "mask-rcnn|faster-rcnn" $R/bench_$v.log | cut -c1-150
done
tar czf $OUT/r.tgz -C /tmp r
