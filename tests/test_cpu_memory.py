"""The CPU kernels ask Linux for 2 MiB pages on the large buffers XLA hands
them (core/scratch.h, advise_huge_pages): glibc maps a buffer of over 32 MB
afresh on every call, and without the hint the OS faults it in one 4 KiB
page at a time when the kernel first writes it (about 12 ms for a 51 MB
output on the 2-core dev machine, as long as the kernel's own work).

Observed through /proc/self/smaps: the mapping that holds a kernel's output
is backed by huge pages. Only meaningful where transparent huge pages are in
"madvise" mode (there, nothing else asks for them); skipped elsewhere."""

from __future__ import annotations

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_roi

THP = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")

pytestmark = pytest.mark.skipif(
  not sys.platform.startswith("linux")
  or not THP.exists()
  or "[madvise]" not in THP.read_text()
  or jax.default_backend() != "cpu",
  reason="needs Linux with transparent huge pages in madvise mode, and the CPU backend",
)


def huge_page_kib(array) -> int:
  """KiB of huge pages backing the mappings that overlap array's buffer."""
  lo = array.unsafe_buffer_pointer()
  hi = lo + array.nbytes
  total, overlaps = 0, False
  with open("/proc/self/smaps") as f:
    for line in f:
      head = line.split(maxsplit=1)[0]
      if "-" in head and not head.endswith(":"):
        start, end = (int(v, 16) for v in head.split("-"))
        overlaps = start < hi and lo < end
      elif overlaps and line.startswith("AnonHugePages:"):
        total += int(line.split()[1])
  return total


def _half_the_huge_pages(array) -> int:
  """KiB in half the 2 MiB pages that fit inside array's buffer (the OS may
  lack free huge pages for some; without the hint there are none)."""
  return (array.nbytes // (2 << 20) - 1) // 2 * 2048


# 1024 RoIs x 7 x 7 bins x 256 channels of float32: a 51 MB output (glibc
# maps anything over 32 MB by itself) from a small map.
K, C, P = 1024, 256, 7

OPS = {  # name -> (call, input channels)
  "roi_align": (lambda x, r, layout: jax_roi.roi_align(x, r, P, 1.0, 2, True, layout=layout), C),
  "roi_pool": (lambda x, r, layout: jax_roi.roi_pool(x, r, P, 1.0, layout=layout), C),
  # C outputs per bin read C * P * P input channels.
  "ps_roi_align": (
    lambda x, r, layout: jax_roi.ps_roi_align(x, r, P, 1.0, 2, layout=layout),
    C * P * P,
  ),
}


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("name", sorted(OPS))
def test_a_large_output_is_backed_by_huge_pages(name, layout):
  op, channels = OPS[name]
  rng = np.random.default_rng(0)
  shape = (1, 12, 12, channels) if layout == "NHWC" else (1, channels, 12, 12)
  x = jnp.asarray(rng.standard_normal(shape).astype(np.float32))
  boxes = rng.uniform(0, 11, (K, 4)).astype(np.float32)
  boxes[:, 2:] = np.maximum(boxes[:, :2], boxes[:, 2:]) + 1
  rois = jnp.asarray(np.concatenate([np.zeros((K, 1), np.float32), boxes], 1))
  out = jax.jit(lambda x: op(x, rois, layout))(x)
  out.block_until_ready()
  assert out.nbytes > 40 << 20
  assert huge_page_kib(out) >= _half_the_huge_pages(out)


def test_a_large_feature_gradient_is_backed_by_huge_pages():
  # 1 x 256 x 200 x 304 float32: a 62 MB feature gradient.
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((1, 200, 304, C)).astype(np.float32))
  rois = jnp.asarray([[0, 10.0, 10.0, 200.0, 150.0]], jnp.float32)
  grad = jax.jit(
    jax.grad(lambda x: jax_roi.roi_align(x, rois, P, 0.25, 2, True, layout="NHWC").sum())
  )(x)
  grad.block_until_ready()
  assert huge_page_kib(grad) >= _half_the_huge_pages(grad)
