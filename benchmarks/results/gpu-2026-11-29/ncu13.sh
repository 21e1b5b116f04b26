set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_PLATFORMS=cuda
mkdir -p /tmp/site && python3 -m pip install -q --no-deps --no-index --target /tmp/site dist/gpu/*.whl && export PYTHONPATH=/tmp/site
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
for v in per_output per_roi; do
  echo "=== $v"
  (cd /tmp && JAX_ROI_CUDA_FORWARD=$v timeout 150 $NCU --clock-control none --section SpeedOfLight --section Occupancy --print-summary per-kernel -c 40 python3 $OLDPWD/.scratch/ncu13.py) > $OUT/ncu_$v.txt 2>&1
  echo rc=$?; grep -E "roi_|Duration|Memory Throughput|Achieved Occupancy|invocations|fusion|copy|convert" $OUT/ncu_$v.txt | head -60
done
