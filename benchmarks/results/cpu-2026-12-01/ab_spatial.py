# usage: ab_spatial.py PKGDIR SECONDS OUT.npz -> median NHWC fwd and fwd+bwd ms of the
# mask-rcnn box head, mask head and adaptive rows (run.py's inputs); saves outputs and
# gradients for a bit-for-bit comparison between builds.
import statistics
import sys
import time

sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[1] + "/benchmarks")
import jax
import jax.numpy as jnp
import numpy as np
from run import proposals

import jax_roi

budget = float(sys.argv[2])
rng = np.random.default_rng(0)
x = jnp.asarray(rng.standard_normal((2, 200, 304, 256)).astype(np.float32))
res = {}
for name, k, out, sr in (("box", 1024, 7, 2), ("mask", 256, 14, 2), ("adaptive", 1024, 7, 0)):
  rois = jnp.asarray(proposals(rng, k, 2, (800, 1216)))
  g = jnp.asarray(rng.standard_normal((k, out, out, 256)).astype(np.float32))
  op = lambda v: jax_roi.roi_align(v, rois, out, 1 / 4, sr, True, layout="NHWC")  # noqa: E731
  fns = {"fwd": jax.jit(op), "fwd+bwd": jax.jit(jax.grad(lambda v: jnp.sum(op(v) * g)))}
  for p, fn in fns.items():
    res[f"{name}_{p}"] = np.asarray(fn(x))
    ts, t0 = [], time.time()
    while time.time() - t0 < budget or len(ts) < 3:
      t = time.perf_counter()
      jax.block_until_ready(fn(x))
      ts.append((time.perf_counter() - t) * 1e3)
    print(f"{name} NHWC {p}: {statistics.median(ts):.1f} ms (min {min(ts):.1f}, n={len(ts)})", flush=True)
np.savez(sys.argv[3], **res)
