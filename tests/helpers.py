"""Shared test helpers: random inputs, layout and format conversions."""

from __future__ import annotations

import zlib

import jax.numpy as jnp
import ml_dtypes
import numpy as np

import jax_roi

DTYPES = {
  "float32": np.float32,
  "float64": np.float64,
  "float16": np.float16,
  "bfloat16": ml_dtypes.bfloat16,
}


def stable_seed(*parts, modulo=1000):
  """A seed derived from test parameters that is the same in every process
  (Python's hash() of strings is salted per process, which made cases vary)."""
  return zlib.crc32(repr(parts).encode()) % modulo


def random_features(rng, n, c, h, w, layout="NCHW", dtype=np.float32):
  """Continuous random values: no ties, so maxima are unique."""
  f = rng.standard_normal((n, c, h, w))
  if layout == "NHWC":
    f = f.transpose(0, 2, 3, 1)
  return np.ascontiguousarray(f).astype(dtype)


def random_boxes(rng, k, h, w, scale=1.0, hostile=False):
  """(k, 4) xyxy boxes in input pixels: mostly inside a (h, w) map seen at
  `scale`, some on the half-pixel grid, some inverted, zero-size or outside;
  with `hostile`, also huge, infinite and NaN coordinates."""
  img_h, img_w = h / scale, w / scale
  x1 = rng.uniform(-0.3 * img_w, 1.1 * img_w, k)
  y1 = rng.uniform(-0.3 * img_h, 1.1 * img_h, k)
  bw = rng.uniform(-0.2 * img_w, 0.9 * img_w, k)
  bh = rng.uniform(-0.2 * img_h, 0.9 * img_h, k)
  boxes = np.stack([x1, y1, x1 + bw, y1 + bh], axis=1)
  half = rng.random(k) < 0.4  # on the half-pixel grid: exercises rounding
  boxes[half] = np.round(boxes[half] * 2 * scale) / (2 * scale)
  zero = rng.random(k) < 0.1
  boxes[zero, 2:] = boxes[zero, :2]
  if hostile:
    for value in (1e30, -1e30, np.inf, -np.inf, np.nan, 3e9):
      rows = rng.random(k) < 0.05
      cols = rng.integers(0, 4, k)
      boxes[rows, cols[rows]] = value
  return boxes


def indexed_rois(rng, boxes, n, padding=0.0):
  """(k, 5) rows with random image indices; a fraction marked as padding."""
  k = boxes.shape[0]
  index = rng.integers(0, n, k).astype(np.float64)
  pad = rng.random(k) < padding
  index[pad] = rng.choice([-1.0, float(n), -7.0, 1e9, np.nan], pad.sum())
  return np.concatenate([index[:, None], boxes], axis=1)


def to_layout(features_nchw, layout):
  return features_nchw if layout == "NCHW" else jnp.moveaxis(features_nchw, 1, 3)


def pooled_to_nchw(out, layout):
  """A per-RoI output in `layout` order -> (..., C, PH, PW)."""
  return out if layout == "NCHW" else jnp.moveaxis(out, -1, -3)


def nchw_to(x, layout):
  """NCHW numpy features -> `layout`."""
  return x if layout == "NCHW" else np.moveaxis(x, 1, 3)


def nchw_of(x, layout):
  """Features in `layout` -> NCHW numpy."""
  return np.asarray(x) if layout == "NCHW" else np.moveaxis(np.asarray(x), 3, 1)


def pooled_from_nchw(x, layout):
  """A per-RoI result (..., C, PH, PW) -> `layout` order."""
  return x if layout == "NCHW" else np.moveaxis(x, -3, -1)


# One configuration of each op (and mode), called as OPS[name](x, rois, **kw).
OPS = {
  "roi_pool": lambda x, r, **kw: jax_roi.roi_pool(x, r, (3, 2), spatial_scale=0.5, **kw),
  "roi_align": lambda x, r, **kw: jax_roi.roi_align(
    x, r, (3, 2), spatial_scale=0.5, sampling_ratio=2, **kw
  ),
  "roi_align_max": lambda x, r, **kw: jax_roi.roi_align(
    x, r, (3, 2), spatial_scale=0.5, sampling_ratio=0, aligned=True, mode="max", **kw
  ),
  # Position-sensitive: PH * PW = 3 bins, so the tests' 3-channel features
  # give one output channel.
  "ps_roi_pool": lambda x, r, **kw: jax_roi.ps_roi_pool(x, r, (3, 1), 0.5, **kw),
  "ps_roi_align": lambda x, r, **kw: jax_roi.ps_roi_align(x, r, (1, 3), 0.5, 0, **kw),
  "prroi_pool": lambda x, r, **kw: jax_roi.prroi_pool(x, r, (3, 2), 0.5, **kw),
}


def _half(x, layout="NCHW"):
  return x[:, :, ::2, ::2] if layout == "NCHW" else x[:, ::2, ::2, :]


# OPS and the ops over several feature maps (called the same way on one map,
# from which the coarser levels are derived): the sharding matrix and the
# export tests cover every op listed here.
MATRIX_OPS = dict(
  OPS,
  multi_scale=lambda x, r, layout="NCHW", **kw: jax_roi.multi_scale_roi_align(
    [x, _half(x, layout)],
    r,
    (3, 2),
    spatial_scales=(0.5, 0.25),
    canonical_scale=8,
    sampling_ratio=2,
    layout=layout,
    **kw,
  ),
)


def draw_dims(draw, st, max_hw, max_k, max_out, scales):
  """Hypothesis draws shared by the property tests, in a fixed order:
  (n, c, h, w, k, output_size, spatial_scale)."""
  n = draw(st.integers(1, 3))
  c = draw(st.integers(1, 4))
  h = draw(st.integers(1, max_hw))
  w = draw(st.integers(1, max_hw))
  k = draw(st.integers(0, max_k))
  output_size = (draw(st.integers(1, max_out)), draw(st.integers(1, max_out)))
  return n, c, h, w, k, output_size, draw(st.sampled_from(scales))


def random_rois(rng, fmt, n, k, h, w, scale, hostile, padding=0.2):
  """(k, 5) rows with a fraction `padding` of padding rows ("indexed") or
  (n, k, 4) boxes ("batched") on an (h, w) map seen at `scale` (0 counts as 1)."""
  img_scale = scale if scale > 0 else 1.0
  if fmt == "indexed":
    return indexed_rois(rng, random_boxes(rng, k, h, w, img_scale, hostile), n, padding)
  return random_boxes(rng, n * k, h, w, img_scale, hostile).reshape(n, k, 4)


# --- roi_align_rotated: oriented boxes [cx, cy, w, h, angle] ---------------


def rotated_boxes(rng, k, h, w, scale=1.0, degrees=True):
  """(k, 5) [cx, cy, w, h, angle] boxes in input pixels around a (h, w) map
  seen at `scale`; some tiny, some partly outside."""
  img_h, img_w = h / scale, w / scale
  cx = rng.uniform(-0.2 * img_w, 1.2 * img_w, k)
  cy = rng.uniform(-0.2 * img_h, 1.2 * img_h, k)
  bw = rng.uniform(0.0, 0.9 * img_w, k)
  bh = rng.uniform(0.0, 0.9 * img_h, k)
  tiny = rng.random(k) < 0.15
  bw[tiny] *= 0.05
  angle = rng.uniform(-180, 180, k)
  if not degrees:
    angle = np.deg2rad(angle)
  return np.stack([cx, cy, bw, bh, angle], axis=1)


def rotated_rois(rng, fmt, n, k, h, w, scale=1.0, degrees=True, padding=0.2, hostile=False):
  """(k, 6) rows with a fraction `padding` of padding rows ("indexed") or
  (n, k, 5) boxes ("batched"); with `hostile`, also huge, infinite and NaN
  centres, sizes and angles, and negative sizes."""
  boxes = rotated_boxes(rng, n * k if fmt == "batched" else k, h, w, scale, degrees)
  if hostile:
    for value in (1e30, -1e30, np.inf, -np.inf, np.nan, 3e9, -2.5):
      rows = rng.random(len(boxes)) < 0.05
      cols = rng.integers(0, 5, len(boxes))
      boxes[rows, cols[rows]] = value
  if fmt == "batched":
    return boxes.reshape(n, k, 5)
  index = rng.integers(0, n, k).astype(np.float64)
  pad = rng.random(k) < padding
  index[pad] = rng.choice([-1.0, float(n), np.nan], pad.sum())
  return np.concatenate([index[:, None], boxes], axis=1)


def random_case(
  seed,
  layout,
  fmt,
  dtype,
  box_dtype,
  n=2,
  c=3,
  h=9,
  w=11,
  k=6,
  scale=0.5,
  hostile=False,
  padding=0.2,
):
  """Features and RoIs of one op call from a seed."""
  rng = np.random.default_rng(seed)
  x = random_features(rng, n, c, h, w, layout, dtype)
  rois = random_rois(rng, fmt, n, k, h, w, scale, hostile, padding)
  return x, rois.astype(box_dtype)
