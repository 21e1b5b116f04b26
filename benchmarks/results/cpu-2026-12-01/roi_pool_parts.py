# usage: roi_pool_parts.py PKGDIR -> roi_pool NHWC faster-rcnn (run.py's inputs): the forward,
# the benchmark's loss alone (sum of output * cotangent), the backward alone (jax.vjp's pullback)
# and the benchmark's step (value_and_grad), medians of 60 calls, three rounds, K=128 and 300.
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


def median_ms(f, *args, n=60):
  jax.block_until_ready(f(*args))
  ts = []
  for _ in range(n):
    t = time.perf_counter()
    jax.block_until_ready(f(*args))
    ts.append((time.perf_counter() - t) * 1e3)
  return statistics.median(ts)


rng = np.random.default_rng(0)
x = jnp.asarray(rng.standard_normal((1, 38, 50, 512)).astype(np.float32))
for k in (128, 300):
  rois = jnp.asarray(proposals(rng, k, 1, (608, 800)))
  g = jnp.asarray(rng.standard_normal((k, 7, 7, 512)).astype(np.float32))

  def op(v, rois=rois):
    return jax_roi.roi_pool(v, rois, 7, 1 / 16, layout="NHWC")

  fwd = jax.jit(op)
  loss = jax.jit(lambda o, g=g: jnp.sum(o * g))
  step = jax.jit(jax.value_and_grad(lambda v, op=op, g=g: jnp.sum(op(v) * g)))
  _, pull = jax.vjp(op, x)
  bwd = jax.jit(lambda gg, pull=pull: pull(gg)[0])
  o = fwd(x)
  for r in range(3):
    print(
      f"K={k} round {r}: fwd {median_ms(fwd, x):.2f} ms, loss {median_ms(loss, o):.2f} ms, "
      f"bwd {median_ms(bwd, g):.2f} ms, fwd+bwd {median_ms(step, x):.2f} ms",
      flush=True,
    )
