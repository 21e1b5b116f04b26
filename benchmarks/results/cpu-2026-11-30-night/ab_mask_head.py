import sys, time, statistics
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[1] + "/benchmarks")
import numpy as np, jax, jax.numpy as jnp
import jax_roi
from run import proposals
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 200, 304, 256)).astype(np.float32)
rois = proposals(rng, 256, 2, (800, 1216))
if len(sys.argv) > 3 and sys.argv[3] == "sorted":
  c = (rois[:, 1] + rois[:, 3]) / 2 // 64 * 1000 + (rois[:, 2] + rois[:, 4]) / 2 // 64
  rois = rois[np.lexsort((c, rois[:, 0]))]
xj, rj = jnp.asarray(x), jnp.asarray(rois)
f = jax.jit(lambda v: jax_roi.roi_align(v, rj, 14, 1 / 4, 2, True, layout="NHWC"))
jax.block_until_ready(f(xj))
ts = []
t0 = time.time()
while time.time() - t0 < float(sys.argv[2]):
  t = time.perf_counter(); jax.block_until_ready(f(xj)); ts.append((time.perf_counter() - t) * 1e3)
print(f"mask head NHWC fwd: {statistics.median(ts):.1f} ms (min {min(ts):.1f}, n={len(ts)})")
