"""Slow, loop-by-loop numpy references of the RoI ops, written from the
formulas of torchvision's kernels (see README "Exact semantics"), independent
of jax_roi's code.

Values are accumulated in float64. Box coordinates are computed in
``coord_dtype`` (float32 or float64 numpy scalars, whose arithmetic is
IEEE-exact in that type), because torchvision computes them in the common
dtype of its inputs and the floor/ceil/round of bin edges depends on it.
"""

from __future__ import annotations

import math

import numpy as np

FLT_MAX = float(np.finfo(np.float32).max)
COORD_LIMIT = 2.0**40


def to_nchw(features: np.ndarray, layout: str) -> np.ndarray:
  f = np.asarray(features)
  return f if layout == "NCHW" else f.transpose(0, 3, 1, 2)


def from_nchw_pooled(out: np.ndarray, layout: str) -> np.ndarray:
  """(..., C, PH, PW) -> the layout's per-RoI output order."""
  return out if layout == "NCHW" else np.moveaxis(out, -3, -1)


def c_round(v: float) -> float:
  """C's round(): halves away from zero (v not NaN)."""
  if math.isinf(v):
    return v
  a = abs(v)
  r = math.floor(a)
  if a - r >= 0.5:
    r += 1
  return math.copysign(r, v)


def iter_rois(rois: np.ndarray, batch: int, box_order: str = "xyxy"):
  """Yields (k, image or -1, (x1, y1, x2, y2)) for every RoI, in row order."""
  rois = np.asarray(rois)
  batched = rois.ndim == 3
  per_image = rois.shape[1] if batched else 0
  rows = rois.reshape(-1, rois.shape[-1])
  for k, row in enumerate(rows):
    if batched:
      image, box = k // per_image, row
    else:
      v = float(row[0])
      # torchvision truncates the index toward zero; out of [0, N) is padding.
      image = int(v) if (-1 < v < batch) else -1
      box = row[1:]
    if box_order == "yxyx":
      box = box[[1, 0, 3, 2]]
    yield k, image, box


@np.errstate(all="ignore")  # inf * 0 and friends: NaN coordinates are defined
def roi_pool(features, rois, output_size, spatial_scale=1.0, layout="NCHW",
             box_order="xyxy", coord_dtype=None):
  """RoIPool forward. Returns (out float64, argmax int) in the layout's order,
  with leading dims rois.shape[:-1]."""
  f = to_nchw(features, layout).astype(np.float64)
  n, c_count, h_size, w_size = f.shape
  ph_count, pw_count = output_size
  rois = np.asarray(rois)
  ct = np.dtype(coord_dtype or (np.float64 if rois.dtype == np.float64 else np.float32)).type
  lead = rois.shape[:-1]
  k_count = int(np.prod(lead))
  out = np.zeros((k_count, c_count, ph_count, pw_count))
  argmax = -np.ones((k_count, c_count, ph_count, pw_count), np.int64)
  s = ct(spatial_scale)
  for k, image, box in iter_rois(rois, n, box_order):
    scaled = [ct(v) * s for v in box]
    if image < 0 or any(math.isnan(float(v)) for v in scaled):
      continue  # padding or NaN box: every bin empty
    x1, y1, x2, y2 = (int(max(-COORD_LIMIT, min(COORD_LIMIT, c_round(float(v)))))
                      for v in scaled)
    roi_w = max(x2 - x1 + 1, 1)
    roi_h = max(y2 - y1 + 1, 1)
    bin_h = ct(roi_h) / ct(ph_count)
    bin_w = ct(roi_w) / ct(pw_count)
    for ph in range(ph_count):
      h0 = min(max(int(math.floor(ct(ph) * bin_h)) + y1, 0), h_size)
      h1 = min(max(int(math.ceil(ct(ph + 1) * bin_h)) + y1, 0), h_size)
      for pw in range(pw_count):
        w0 = min(max(int(math.floor(ct(pw) * bin_w)) + x1, 0), w_size)
        w1 = min(max(int(math.ceil(ct(pw + 1) * bin_w)) + x1, 0), w_size)
        if h1 <= h0 or w1 <= w0:
          continue  # empty bin: 0, no argmax
        for c in range(c_count):
          best, best_at = -FLT_MAX, -1
          for hh in range(h0, h1):
            for ww in range(w0, w1):
              v = f[image, c, hh, ww]
              if v > best:  # strict: first maximum wins, NaN never does
                best, best_at = v, hh * w_size + ww
          out[k, c, ph, pw] = best
          argmax[k, c, ph, pw] = best_at
  out = from_nchw_pooled(out.reshape(lead + out.shape[1:]), layout)
  argmax = from_nchw_pooled(argmax.reshape(lead + argmax.shape[1:]), layout)
  return out, argmax


def roi_pool_grad(features_shape, rois, cotangent, argmax, layout="NCHW"):
  """RoIPool feature gradient: each output's cotangent goes to its argmax."""
  shape = tuple(features_shape)
  n = shape[0]
  nchw_shape = shape if layout == "NCHW" else (shape[0], shape[3], shape[1], shape[2])
  grad = np.zeros(nchw_shape)
  w_size = nchw_shape[3]
  ct_rows = np.asarray(cotangent, np.float64)
  am_rows = np.asarray(argmax)
  if layout == "NHWC":
    ct_rows = np.moveaxis(ct_rows, -1, -3)
    am_rows = np.moveaxis(am_rows, -1, -3)
  c_count, ph_count, pw_count = ct_rows.shape[-3:]
  ct_rows = ct_rows.reshape(-1, c_count, ph_count, pw_count)
  am_rows = am_rows.reshape(-1, c_count, ph_count, pw_count)
  for k, image, _ in iter_rois(rois, n):
    if image < 0:
      continue
    for c in range(c_count):
      for ph in range(ph_count):
        for pw in range(pw_count):
          a = am_rows[k, c, ph, pw]
          if a >= 0:
            grad[image, c, a // w_size, a % w_size] += ct_rows[k, c, ph, pw]
  return grad if layout == "NCHW" else grad.transpose(0, 2, 3, 1)
