"""Deterministic backward on the GPU: bits across runs, bits vs the CPU,
and how many elements the atomic backward changes between runs."""
import time
import jax, jax.numpy as jnp, numpy as np
import jax_roi

gpu, cpu = jax.devices("cuda")[0], jax.devices("cpu")[0]
rng = np.random.default_rng(0)

def boxes(k, n, hw, lo=8, hi=400):
  xy = rng.uniform(0, 1, (k, 2)) * np.array(hw[::-1])
  wh = rng.uniform(lo, hi, (k, 2))
  return np.concatenate([rng.integers(0, n, (k, 1)), xy, xy + wh], 1).astype(np.float32)

cases = {
  "roi_pool faster-rcnn K=300": (lambda x, r, **kw: jax_roi.roi_pool(x, r, 7, spatial_scale=1/16, **kw),
      rng.standard_normal((1, 512, 38, 50)).astype(np.float32), boxes(300, 1, (608, 800))),
  "roi_align mask-rcnn K=1024": (lambda x, r, **kw: jax_roi.roi_align(x, r, 7, spatial_scale=1/4, sampling_ratio=2, aligned=True, **kw),
      rng.standard_normal((2, 256, 200, 304)).astype(np.float32), boxes(1024, 2, (800, 1216))),
  "roi_align max NHWC K=512": (lambda x, r, **kw: jax_roi.roi_align(x, r, 7, spatial_scale=1/4, sampling_ratio=2, mode="max", layout="NHWC", **kw),
      rng.standard_normal((2, 200, 304, 256)).astype(np.float32), boxes(512, 2, (800, 1216))),
}
for name, (op, x, r) in cases.items():
  cot = rng.standard_normal(jax.eval_shape(op, x, r).shape).astype(np.float32)
  def grad_on(dev, det):
    xd, rd, cd = jax.device_put((x, r, cot), dev)
    f = jax.jit(lambda x: jax.vjp(lambda x: op(x, rd, deterministic=det), x)[1](cd)[0])
    return lambda: np.asarray(jax.block_until_ready(f(xd)))
  g_det = grad_on(gpu, True)
  runs = [g_det() for _ in range(3)]
  same_runs = all(np.array_equal(runs[0], a) for a in runs[1:])
  t = time.perf_counter(); c = grad_on(cpu, True)(); tc = time.perf_counter() - t
  same_cpu = np.array_equal(runs[0], c)
  g_at = grad_on(gpu, False)
  a1, a2 = g_at(), g_at()
  print(f"{name}: deterministic: 3 GPU runs identical {same_runs}; == CPU bits {same_cpu} "
        f"(max |diff| {np.max(np.abs(runs[0] - c)):.3g}); atomic: {np.sum(a1 != a2)} of {a1.size} "
        f"elements differ between two runs; atomic vs det max |diff| {np.max(np.abs(a1 - runs[0])):.3g}",
        flush=True)
