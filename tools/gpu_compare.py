"""Compares every op on the GPU against the CPU: forward outputs must be
identical (the kernels share roi_math.h and are compiled without FMA
contraction), feature gradients equal to float rounding (the GPU backward
sums with atomics, in another order).

Run with JAX_PLATFORMS=cuda,cpu. --small runs one tiny case (for
compute-sanitizer).
"""

from __future__ import annotations

import argparse
import itertools
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jax_roi

OPS = {
    "roi_pool": lambda x, r, **kw: jax_roi.roi_pool(x, r, (7, 5), spatial_scale=0.25, **kw),
    "roi_align": lambda x, r, **kw: jax_roi.roi_align(
        x, r, (7, 5), spatial_scale=0.25, sampling_ratio=2, aligned=True, **kw),
    "roi_align_adaptive": lambda x, r, **kw: jax_roi.roi_align(
        x, r, (7, 5), spatial_scale=0.25, sampling_ratio=0, **kw),
    "roi_align_max": lambda x, r, **kw: jax_roi.roi_align(
        x, r, (7, 5), spatial_scale=0.25, sampling_ratio=2, mode="max", **kw),
}
BOX_GRAD_OPS = ("roi_align", "roi_align_adaptive", "roi_align_max")


def case(rng, layout, fmt, dtype, n, c, h, w, k):
  x = rng.standard_normal((n, c, h, w)).astype(dtype)
  if layout == "NHWC":
    x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
  x1 = rng.uniform(-20, 4 * w, (n * k, 1))
  y1 = rng.uniform(-20, 4 * h, (n * k, 1))
  wh = rng.uniform(-5, 3 * max(h, w), (n * k, 2))
  boxes = np.concatenate([x1, y1, x1 + wh[:, :1], y1 + wh[:, 1:]], 1)
  boxes[::7] = np.nan  # hostile rows too
  if fmt == "indexed":
    index = rng.integers(-1, n + 1, (n * k, 1)).astype(np.float64)
    rois = np.concatenate([index, boxes], 1)
  else:
    rois = boxes.reshape(n, k, 4)
  return x, rois.astype(np.float32)


def run(op, x, rois, layout, device):
  x, rois = jax.device_put((x, rois), device)
  f = lambda x, r: OPS[op](x, r, layout=layout, implementation="ffi")
  out = f(x, rois)
  cot = jnp.cos(jnp.arange(out.size, dtype=jnp.float32)).reshape(out.shape).astype(out.dtype)
  loss = lambda x, r: jnp.sum((f(x, r) * cot).astype(jnp.float32))
  argnums = (0, 1) if op in BOX_GRAD_OPS else (0,)
  grads = jax.grad(loss, argnums=argnums)(x, rois)
  grad = np.concatenate([np.asarray(g.astype(jnp.float32)).ravel() for g in grads])
  return np.asarray(out.astype(jnp.float32)), np.nan_to_num(grad)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--small", action="store_true")
  args = parser.parse_args()
  gpu = jax.devices("cuda")[0]
  cpu = jax.devices("cpu")[0]
  print(f"GPU: {gpu.device_kind}; jax {jax.__version__}")
  size = (1, 3, 9, 11, 4) if args.small else (2, 64, 50, 68, 200)
  dtypes = ["float32"] if args.small else ["float32", "float16", "bfloat16"]
  layouts = ["NCHW"] if args.small else ["NCHW", "NHWC"]
  fmts = ["indexed"] if args.small else ["indexed", "batched"]
  failures = 0
  rng = np.random.default_rng(0)
  for op, layout, fmt, dtype in itertools.product(OPS, layouts, fmts, dtypes):
    np_dtype = jnp.dtype(dtype)
    x, rois = case(rng, layout, fmt, np_dtype, *size)
    out_g, grad_g = run(op, x, rois, layout, gpu)
    out_c, grad_c = run(op, x, rois, layout, cpu)
    same = np.array_equal(out_g, out_c, equal_nan=True)
    tol = 1e-5 if dtype == "float32" else 2e-2
    grad_err = float(np.max(np.abs(grad_g - grad_c) / (1 + np.abs(grad_c)))) if grad_c.size else 0.0
    ok = same and grad_err <= tol
    failures += not ok
    print(f"{'OK  ' if ok else 'FAIL'} {op:10s} {layout} {fmt:8s} {dtype:9s} "
          f"forward identical: {same}, gradient max rel. error {grad_err:.2e}")
  print("gpu_compare:", "FAILED" if failures else "all equal")
  sys.exit(1 if failures else 0)


if __name__ == "__main__":
  main()
