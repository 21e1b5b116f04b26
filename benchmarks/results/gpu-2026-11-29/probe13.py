# Issue 13 baseline on the GPU: median times of forward, feature gradient, box gradient.
import statistics, sys, time
import numpy as np, jax, jax.numpy as jnp
import jax_roi
print(jax.devices(), jax_roi.__file__, flush=True)
rng = np.random.default_rng(0)
def boxes(k, n, H, W):
    x1 = rng.uniform(0, W * 0.8, k); y1 = rng.uniform(0, H * 0.8, k)
    w = rng.uniform(16, W * 0.3, k); h = rng.uniform(16, H * 0.3, k)
    b = rng.integers(0, n, k)
    return jnp.asarray(np.stack([b, x1, y1, np.minimum(x1 + w, W), np.minimum(y1 + h, H)], 1), jnp.float32)
def med(f, *a, n=15):
    jax.block_until_ready(f(*a)); ts = []
    for _ in range(n):
        t = time.perf_counter(); jax.block_until_ready(f(*a)); ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3
for layout in ("NCHW", "NHWC"):
  for (op, shape, img, scale, out, K) in [("roi_align", (2, 256, 200, 304), (800, 1216), 0.25, 7, 512),
                                          ("roi_align", (2, 256, 200, 304), (800, 1216), 0.25, 14, 256),
                                          ("roi_pool", (1, 512, 38, 50), (608, 800), 1/16, 7, 300)]:
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    if layout == "NHWC": x = jnp.transpose(x, (0, 2, 3, 1))
    r = boxes(K, shape[0], *img)
    kw = dict(spatial_scale=scale, layout=layout)
    if op == "roi_align": kw.update(sampling_ratio=2, aligned=True)
    fn = getattr(jax_roi, op)
    f = jax.jit(lambda x, r: fn(x, r, out, **kw))
    gx = jax.jit(jax.grad(lambda x, r: fn(x, r, out, **kw).sum(), 0))
    gr = jax.jit(jax.grad(lambda x, r: fn(x, r, out, **kw).sum(), 1))
    try:
      res = (med(f, x, r), med(gx, x, r), med(gr, x, r, n=5))
      print(f"{op:10s} {layout} out={out} K={K}: fwd {res[0]:.3f} ms  grad-x {res[1]:.3f} ms  grad-boxes {res[2]:.3f} ms", flush=True)
    except Exception as e:
      print(op, layout, "ERROR", repr(e)[:300], flush=True)
# determinism of the atomic backward today (how many bits differ run to run)
x = jnp.asarray(rng.standard_normal((2, 256, 200, 304)), jnp.float32); r = boxes(1024, 2, 800, 1216)
g = jax.jit(jax.grad(lambda x: jax_roi.roi_align(x, r, 7, spatial_scale=0.25, sampling_ratio=2, aligned=True).sum()))
a = np.asarray(g(x)); diff = [int((np.asarray(g(x)) != a).sum()) for _ in range(5)]
print("atomic roi_align backward: elements differing from run 1 in 5 reruns:", diff, flush=True)
