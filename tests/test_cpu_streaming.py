"""Outputs of 8 MB and more are written with streaming (non-temporal) stores
by the NHWC float32 forwards (core/streaming.h): whole 64-byte lines, not
read first. The values must be those of ordinary stores: the op on many RoIs
(a streamed output) equals, bit for bit, the op on slices of the same RoIs
(small outputs, stored as usual). 64 channels: every row is whole lines; 72:
rows are not, so nothing is streamed (the same check, the other path)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jax_roi

K, P = 1600, 7  # 1600 x 7 x 7 x 64 float32: a 20 MB output (10 MB per level for multi-scale)

OPS = {
  "roi_pool": lambda x, r: jax_roi.roi_pool(x, r, P, 0.5, layout="NHWC"),
  "roi_align": lambda x, r: jax_roi.roi_align(x, r, P, 0.5, 2, True, layout="NHWC"),
  "prroi_pool": lambda x, r: jax_roi.prroi_pool(x, r, P, 0.5, layout="NHWC"),
  # Boxes of 40-60 pixels sit on the first level, larger ones on the second.
  "multi_scale_roi_align": lambda x, r: jax_roi.multi_scale_roi_align(
    [x, x[:, ::2, ::2]],
    r,
    P,
    2,
    spatial_scales=[0.5, 0.25],
    image_size=(80, 96),
    canonical_scale=56,
    layout="NHWC",
  ),
}


def _rois(rng, k):
  """(k, 5) RoIs on image 0 or 1 of a 40 x 48 map at scale 0.5: mostly
  inside, some inverted, empty or outside (roi_pool's empty bins)."""
  xy = rng.uniform(-10, 100, (k, 2))
  wh = rng.uniform(-5, 60, (k, 2))
  boxes = np.concatenate([xy, xy + wh], 1)
  boxes[::17] = [200, 200, 210, 210]  # outside the map
  index = rng.integers(0, 2, (k, 1))
  return np.concatenate([index, boxes], 1).astype(np.float32)


@pytest.mark.parametrize("channels", [64, 72])
@pytest.mark.parametrize("name", sorted(OPS))
def test_a_streamed_output_equals_the_op_on_slices_of_its_rois(name, channels):
  rng = np.random.default_rng(channels)
  x = jnp.asarray(rng.standard_normal((2, 40, 48, channels)).astype(np.float32))
  rois = _rois(rng, K)
  op = OPS[name]
  whole = np.asarray(op(x, jnp.asarray(rois)))
  assert whole.nbytes >= (8 << 20) * (channels == 64)
  parts = np.concatenate(
    [np.asarray(op(x, jnp.asarray(rois[i : i + 200]))) for i in range(0, K, 200)]
  )
  np.testing.assert_array_equal(whole, parts)
  assert np.count_nonzero(whole) > whole.size // 4
