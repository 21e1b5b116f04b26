"""What fresh output buffers cost an XLA CPU program, with glibc's default
allocator and with freed memory kept (run.py's --allocator keep), in one
process: a jitted fill of a 51 MB array (the mask-rcnn box head's output),
and jax_roi's roi_align writing an output of that size from a small map
(its own work is small, so the buffer's cost shows).

glibc gives every buffer over 32 MB its own mapping and unmaps it when
freed, so each call's output is mapped and zeroed by the OS again, one
4 KiB page fault at a time when first written. jax_roi's kernels ask for
2 MiB pages on their large outputs (core/scratch.h); XLA's own ops do not.

  python benchmarks/fresh_buffers.py
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from run import _keep_freed_memory

import jax_roi

SHAPE = (1024, 7, 7, 256)  # float32: 51.4 MB


def median_ms(fn, repeat=15):
  fn()
  times = []
  for _ in range(repeat):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times) * 1e3


def measure():
  rng = np.random.default_rng(0)
  fill = jax.jit(lambda s: jnp.full(SHAPE, s))
  x = jnp.asarray(rng.standard_normal((1, 12, 12, SHAPE[-1])).astype(np.float32))
  boxes = rng.uniform(0, 11, (SHAPE[0], 4)).astype(np.float32)
  boxes[:, 2:] = np.maximum(boxes[:, :2], boxes[:, 2:]) + 1
  rois = jnp.asarray(np.concatenate([np.zeros((SHAPE[0], 1), np.float32), boxes], 1))
  align = jax.jit(lambda x: jax_roi.roi_align(x, rois, 7, 1.0, 2, True, layout="NHWC"))
  s = jnp.float32(1.0)
  return {
    "XLA fill": median_ms(lambda: fill(s).block_until_ready()),
    "jax_roi roi_align": median_ms(lambda: align(x).block_until_ready()),
  }


def main():
  mb = np.prod(SHAPE) * 4 / 1e6
  print(f"jax {jax.__version__}; outputs of {mb:.1f} MB; median ms of 15 calls")
  default = measure()
  _keep_freed_memory()
  keep = measure()
  print("| call | glibc default | freed memory kept | ratio |")
  print("|---|---:|---:|---:|")
  for name in default:
    print(
      f"| {name} | {default[name]:.2f} | {keep[name]:.2f} | {default[name] / keep[name]:.1f}x |"
    )


if __name__ == "__main__":
  main()
