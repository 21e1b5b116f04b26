"""roi_pool on a Faster R-CNN-sized input, under jit and grad.

VGG16 conv5 features of a ~600x800 image (1, 512, 38, 50), 128 proposals,
7x7 RoI max pooling at spatial_scale 1/16: the RoI head of Faster R-CNN.
Times jax_roi's kernel against its pure-JAX implementation (same semantics)
and checks that both agree.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import jax_roi


def proposals(rng, k, img_h, img_w):
  """Boxes shaped like region proposals: sizes from 16 px to most of the image."""
  size = np.exp(rng.uniform(np.log(16), np.log(0.9 * min(img_h, img_w)), (k, 2)))
  aspect = np.exp(rng.uniform(-0.7, 0.7, k))
  w, h = size[:, 0] * aspect, size[:, 1] / aspect
  x1 = rng.uniform(0, img_w - w.clip(max=img_w - 1))
  y1 = rng.uniform(0, img_h - h.clip(max=img_h - 1))
  return np.stack([np.zeros(k), x1, y1, x1 + w, y1 + h], axis=1).astype(np.float32)


def median_time(fn, *args, repeat):
  jax.block_until_ready(fn(*args))  # compile
  times = []
  for _ in range(repeat):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rois", type=int, default=128)
  parser.add_argument("--repeat", type=int, default=5)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  rng = np.random.default_rng(args.seed)
  features = rng.standard_normal((1, 512, 38, 50)).astype(np.float32)
  rois = proposals(rng, args.rois, 600, 800)
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; features "
        f"{features.shape}, {args.rois} RoIs, roi_pool 7x7, spatial_scale 1/16")

  # Forward + backward: the value and feature gradient of sum(out * cot).
  cot = jnp.asarray(rng.standard_normal((args.rois, 512, 7, 7)), jnp.float32)
  results = {}
  for impl in ("ffi", "xla"):
    def pool(f, r, impl=impl):
      return jax_roi.roi_pool(f, r, 7, spatial_scale=1 / 16, implementation=impl)

    forward = jax.jit(pool)
    train = jax.jit(jax.value_and_grad(lambda f, r: jnp.sum(pool(f, r) * cot)))
    out = forward(features, rois)
    _, grad = train(features, rois)
    results[impl] = (out, grad, median_time(forward, features, rois, repeat=args.repeat),
                     median_time(train, features, rois, repeat=args.repeat))

  (out, grad, t_fwd, t_train), (out_x, grad_x, t_fwd_x, t_train_x) = (
      results["ffi"], results["xla"])
  print(f"{'':28s}{'jax_roi kernel':>16s}{'pure JAX':>12s}{'speed-up':>10s}")
  print(f"{'forward (median)':28s}{t_fwd * 1e3:13.2f} ms{t_fwd_x * 1e3:9.1f} ms"
        f"{t_fwd_x / t_fwd:9.1f}x")
  print(f"{'forward + backward (median)':28s}{t_train * 1e3:13.2f} ms"
        f"{t_train_x * 1e3:9.1f} ms{t_train_x / t_train:9.1f}x")
  same = bool(np.array_equal(out, out_x))
  grad_err = float(jnp.max(jnp.abs(grad - grad_x)))
  print(f"outputs identical: {same}; max gradient difference: {grad_err:.2e}")
  if not same or grad_err > 1e-4:
    raise SystemExit("kernel and pure-JAX results disagree")


if __name__ == "__main__":
  main()
