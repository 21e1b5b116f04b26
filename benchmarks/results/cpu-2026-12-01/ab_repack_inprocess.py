# usage: ab_repack_inprocess.py PKGDIR ROUNDS [ROWS] -> in-process A/B of the NCHW fwd+bwd rows whose backward
# moves an NHWC gradient into place: OLD_REPACK=1 (the previous repack_nhwc_to_nchw, row of tiles
# by row of tiles) against 0 (this commit), alternating rounds. Needs a temporary build whose
# repack_nhwc_to_nchw reads OLD_REPACK on every call (not part of the package).
import os, statistics, sys, time
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[1] + "/benchmarks")
import jax, jax.numpy as jnp, numpy as np
from run import proposals, rotated_proposals
import jax_roi
rng = np.random.default_rng(0)
maps = {"mask-rcnn": jnp.asarray(rng.standard_normal((2, 256, 200, 304)).astype(np.float32)),
        "dota": jnp.asarray(rng.standard_normal((1, 256, 128, 128)).astype(np.float32)),
        "faster-rcnn": jnp.asarray(rng.standard_normal((1, 512, 38, 50)).astype(np.float32))}
box = jnp.asarray(proposals(rng, 1024, 2, (800, 1216))); mask = jnp.asarray(proposals(rng, 256, 2, (800, 1216)))
rot = jnp.asarray(rotated_proposals(rng, proposals(rng, 2000, 1, (1024, 1024)))); pr = jnp.asarray(proposals(rng, 300, 1, (608, 800)))
rows = {"box head": ("mask-rcnn", lambda v: jax_roi.roi_align(v, box, 7, 1 / 4, 2, True)),
        "mask head": ("mask-rcnn", lambda v: jax_roi.roi_align(v, mask, 14, 1 / 4, 2, True)),
        "dota sr=2": ("dota", lambda v: jax_roi.roi_align_rotated(v, rot, 7, 1 / 8, 2, aligned=True)),
        "prroi": ("faster-rcnn", lambda v: jax_roi.prroi_pool(v, pr, 7, 1 / 16))}
if len(sys.argv) > 3: rows = {k: v for k, v in rows.items() if k in sys.argv[3].split(",")}
fns = {}
for name, (m, op) in rows.items():
  x = maps[m]; g = jnp.asarray(rng.standard_normal(jax.eval_shape(op, x).shape).astype(np.float32))
  fns[name] = (jax.jit(jax.value_and_grad(lambda v, op=op, g=g: jnp.sum(op(v) * g))), x)
times = {(n, m): [] for n in fns for m in ("old", "new")}
grads = {}
for r in range(int(sys.argv[2])):
  for m in ("old", "new"):
    os.environ["OLD_REPACK"] = "1" if m == "old" else "0"
    for n, (f, x) in fns.items():
      grads.setdefault(n, {})[m] = np.asarray(f(x)[1])
      reps = 3 if n in ("box head", "mask head", "dota sr=2") else 20
      for _ in range(reps):
        t = time.perf_counter(); jax.block_until_ready(f(x)); times[(n, m)].append((time.perf_counter() - t) * 1e3)
for n in fns:
  same = np.array_equal(grads[n]["old"].view(np.uint32), grads[n]["new"].view(np.uint32))
  print(f"{n} NCHW fwd+bwd: old {statistics.median(times[(n, 'old')]):.1f} ms, new {statistics.median(times[(n, 'new')]):.1f} ms (n={len(times[(n, 'old')])} each)", "bits equal" if same else "BITS DIFFER", flush=True)
