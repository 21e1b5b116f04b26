# usage: rot.py PKGDIR sr reps -> median fwd / fwd+bwd ms per layout; also saves outputs for bit compare
import sys, time, statistics
sys.path.insert(0, sys.argv[1])
import numpy as np, jax, jax.numpy as jnp
import jax_roi
sys.path.insert(0, sys.argv[1] + "/benchmarks")
from run import proposals, rotated_proposals
sr = int(sys.argv[2]); reps = int(sys.argv[3])
rng = np.random.default_rng(0)
x = rng.standard_normal((1, 256, 128, 128)).astype(np.float32)
rois = rotated_proposals(rng, proposals(rng, 2000, 1, (1024, 1024)))
g = rng.standard_normal((2000, 256, 7, 7)).astype(np.float32)
res = {}
for layout in ("NCHW", "NHWC"):
  xl = x if layout == "NCHW" else x.transpose(0, 2, 3, 1).copy()
  gl = g if layout == "NCHW" else g.transpose(0, 2, 3, 1).copy()
  xj, rj, gj = jnp.asarray(xl), jnp.asarray(rois), jnp.asarray(gl)
  op = lambda v: jax_roi.roi_align_rotated(v, rj, 7, 1 / 8, sr, layout=layout)
  f = jax.jit(op)
  b = jax.jit(jax.value_and_grad(lambda v: jnp.sum(op(v) * gj)))
  for name, fn in (("fwd", f), ("fwd+bwd", b)):
    out = fn(xj); jax.block_until_ready(out)
    ts = []
    for _ in range(reps):
      t = time.perf_counter(); jax.block_until_ready(fn(xj)); ts.append((time.perf_counter() - t) * 1e3)
    print(f"{layout} {name}: {statistics.median(ts):.1f} ms  (min {min(ts):.1f})", flush=True)
    res[f"{layout}_{name}"] = np.asarray(out[1] if name == "fwd+bwd" else out)
np.savez(sys.argv[4] if len(sys.argv) > 4 else "/tmp/pb/rot_out.npz", **res)
