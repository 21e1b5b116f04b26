# usage: ab_nchw_grad.py PKGDIR SECONDS OUT.npz -> median NCHW fwd+bwd ms (value_and_grad of
# sum(op * g), as run.py times it) of the rows whose NCHW backward moves an NHWC gradient into
# place (repack_nhwc_to_nchw): mask-rcnn box and mask heads, dota sr=2 and prroi_pool
# (run.py's inputs); saves the gradients for a bit-for-bit comparison between builds.
import statistics
import sys
import time

sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[1] + "/benchmarks")
import jax
import jax.numpy as jnp
import numpy as np
from run import proposals, rotated_proposals

import jax_roi

budget = float(sys.argv[2])
rng = np.random.default_rng(0)
maps = {
  "mask-rcnn": jnp.asarray(rng.standard_normal((2, 256, 200, 304)).astype(np.float32)),
  "dota": jnp.asarray(rng.standard_normal((1, 256, 128, 128)).astype(np.float32)),
  "faster-rcnn": jnp.asarray(rng.standard_normal((1, 512, 38, 50)).astype(np.float32)),
}
box = jnp.asarray(proposals(rng, 1024, 2, (800, 1216)))
mask = jnp.asarray(proposals(rng, 256, 2, (800, 1216)))
rot = jnp.asarray(rotated_proposals(rng, proposals(rng, 2000, 1, (1024, 1024))))
pr = jnp.asarray(proposals(rng, 300, 1, (608, 800)))
rows = {
  "box head": ("mask-rcnn", lambda v: jax_roi.roi_align(v, box, 7, 1 / 4, 2, True)),
  "mask head": ("mask-rcnn", lambda v: jax_roi.roi_align(v, mask, 14, 1 / 4, 2, True)),
  "dota sr=2": ("dota", lambda v: jax_roi.roi_align_rotated(v, rot, 7, 1 / 8, 2, aligned=True)),
  "prroi": ("faster-rcnn", lambda v: jax_roi.prroi_pool(v, pr, 7, 1 / 16)),
}
res = {}
for name, (m, op) in rows.items():
  x = maps[m]
  out = jax.eval_shape(op, x)
  g = jnp.asarray(rng.standard_normal(out.shape).astype(np.float32))
  fn = jax.jit(jax.value_and_grad(lambda v, op=op, g=g: jnp.sum(op(v) * g)))
  res[name] = np.asarray(fn(x)[1])
  ts, t0 = [], time.time()
  while time.time() - t0 < budget or len(ts) < 3:
    t = time.perf_counter()
    jax.block_until_ready(fn(x))
    ts.append((time.perf_counter() - t) * 1e3)
  print(f"{name} NCHW fwd+bwd: {statistics.median(ts):.1f} ms (min {min(ts):.1f}, n={len(ts)})", flush=True)
np.savez(sys.argv[3], **res)
