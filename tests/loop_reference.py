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
def roi_pool(
  features, rois, output_size, spatial_scale=1.0, layout="NCHW", box_order="xyxy", coord_dtype=None
):
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
    x1, y1, x2, y2 = (int(max(-COORD_LIMIT, min(COORD_LIMIT, c_round(float(v))))) for v in scaled)
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


# ---------------------------------------------------------------------------
# RoIAlign (torchvision roi_align semantics; max mode as an extension)
# ---------------------------------------------------------------------------

GRID_LIMIT = 2**31 - 1  # the adaptive grid size is clamped to the int32 range
# Bins with more samples than this are iterated sparsely: only samples whose
# coordinate lies in [-1, size] (found by bisection), with runs of equal
# coordinates merged, plus the first out-of-range sample of each axis.
FULL_GRID_SAMPLES = 1 << 16


class _AlignGeometry:
  """Per-RoI quantities of roi_align, all in the coordinate type ct."""

  def __init__(self, xs, ys, bin_w, bin_h, gw, gh, count, w_min, h_min):
    self.xs, self.ys = xs, ys  # scaled start
    self.bin_w, self.bin_h = bin_w, bin_h  # bin size
    self.gw, self.gh = gw, gh  # sampling grid per bin (Python ints, may be <= 0)
    self.count = count  # ct(max(gh*gw, 1))
    self.w_min, self.h_min = w_min, h_min  # the 1-pixel minimum size applied


def _coord_type(rois, coord_dtype):
  return np.dtype(coord_dtype or (np.float64 if rois.dtype == np.float64 else np.float32)).type


def _grid_size(bin_size) -> int:
  """(int)ceil(bin), clamped to the int32 range (NaN: 0)."""
  v = float(bin_size)
  if math.isnan(v):
    return 0
  return int(math.ceil(min(max(v, -GRID_LIMIT), GRID_LIMIT)))


def _align_geometry(box, output_size, spatial_scale, sampling_ratio, aligned, ct):
  """Start, bin size and grid of one RoI, or None for an empty (non-finite) RoI."""
  ph_count, pw_count = output_size
  off = ct(0.5 if aligned else 0.0)
  s = ct(spatial_scale)
  # xs = x1*s - off, ..., in ct
  xs = ct(box[0]) * s - off
  ys = ct(box[1]) * s - off
  xe = ct(box[2]) * s - off
  ye = ct(box[3]) * s - off
  rw = xe - xs
  rh = ye - ys
  w_min = h_min = False
  if not aligned:  # legacy: std::max(size, 1) (a NaN size stays NaN)
    if rw < ct(1):
      rw, w_min = ct(1), True
    if rh < ct(1):
      rh, h_min = ct(1), True
  if not all(math.isfinite(float(v)) for v in (xs, ys, rw, rh)):
    return None
  if ph_count == 0 or pw_count == 0:
    return None  # no bins at all
  bin_h = rh / ct(ph_count)
  bin_w = rw / ct(pw_count)
  gh = sampling_ratio if sampling_ratio > 0 else _grid_size(bin_h)
  gw = sampling_ratio if sampling_ratio > 0 else _grid_size(bin_w)
  count = ct(max(gh * gw, 1))
  return _AlignGeometry(xs, ys, bin_w, bin_h, gw, gh, count, w_min, h_min)


def _sample_coord(start, p, bin_size, i, g, ct):
  """start + p*bin + static_cast<T>(i + .5f)*bin / T(g), left to right in ct."""
  half = ct(np.float32(i) + np.float32(0.5))  # i + .5f is a float32 sum
  return (start + ct(p) * bin_size) + (half * bin_size) / ct(g)


def _axis_interp(c, size, ct):
  """One axis of bilinear_interpolate at coordinate c on an axis of `size`
  pixels: (low, high, l, h, clamped), or None when out of [-1, size]."""
  if size == 0 or not (-1.0 <= float(c) <= float(size)):
    return None  # also catches NaN
  clamped = False
  if c <= 0:  # if (y <= 0) y = 0
    c, clamped = ct(0), True
  low = int(c)  # truncation (c >= 0 here)
  if low >= size - 1:  # edge: y_low = y_high = H-1, y = y_low
    low = high = size - 1
    c, clamped = ct(low), True
  else:
    high = low + 1
  l = c - ct(low)  # ly = y - y_low
  return low, high, l, ct(1) - l, clamped  # hy = 1 - ly


def _first(pred, lo, hi):
  """Smallest i in [lo, hi) with pred(i) (pred monotone false -> true), else hi."""
  while lo < hi:
    mid = (lo + hi) // 2
    if pred(mid):
      hi = mid
    else:
      lo = mid + 1
  return lo


def _axis_samples(start, p, bin_size, g, size, ct, sparse):
  """The samples of one axis of bin p: [(index, multiplicity, interp or None)].

  Dense: every index 0..g-1 once, in order. Sparse (huge grids): the sample
  coordinate is monotone in the index, so the in-range indices form one
  interval, found by bisection with the exact coordinate formula; within it,
  runs of indices with the same coordinate are merged (index = the run's
  first). Of the out-of-range indices only the first is kept: every
  out-of-range sample is 0 with no gradient, so in max mode only the first one
  in grid order can win and in avg mode none contributes."""

  def coord(i):
    return _sample_coord(start, p, bin_size, i, g, ct)

  if not sparse:
    return [(i, 1, _axis_interp(coord(i), size, ct)) for i in range(g)]
  if g <= 0:
    return []
  if size == 0:
    lo = hi = 0
  elif bin_size >= 0:  # non-decreasing coordinates
    lo = _first(lambda i: float(coord(i)) >= -1.0, 0, g)
    hi = _first(lambda i: float(coord(i)) > float(size), lo, g)
  else:  # non-increasing
    lo = _first(lambda i: float(coord(i)) <= float(size), 0, g)
    hi = _first(lambda i: float(coord(i)) < -1.0, lo, g)
  entries = []
  i = lo
  while i < hi:
    c = coord(i)
    j = _first(lambda k, c=c: coord(k) != c, i + 1, hi)
    entries.append((i, j - i, _axis_interp(c, size, ct)))
    i = j
  if lo > 0:  # the first out-of-range index is 0
    entries.insert(0, (0, lo + g - hi, None))
  elif hi < g:  # ... or the first past the interval
    entries.append((hi, g - hi, None))
  return entries


def _bin_axes(geom, ph, pw, h_size, w_size, ct):
  """The (y samples, x samples) of bin (ph, pw); both empty without samples."""
  if geom.gh <= 0 or geom.gw <= 0:
    return [], []  # the grid is empty (aligned zero-size or inverted box)
  sparse = geom.gh * geom.gw > FULL_GRID_SAMPLES
  ys = _axis_samples(geom.ys, ph, geom.bin_h, geom.gh, h_size, ct, sparse)
  xs = _axis_samples(geom.xs, pw, geom.bin_w, geom.gw, w_size, ct, sparse)
  return ys, xs


def _weights(ya, xa):
  """w1 = hy*hx, w2 = hy*lx, w3 = ly*hx, w4 = ly*lx, in ct."""
  ly, hy = ya[2], ya[3]
  lx, hx = xa[2], xa[3]
  return hy * hx, hy * lx, ly * hx, ly * lx


def _bilinear_value(plane, ya, xa):
  """((w1*v1 + w2*v2) + w3*v3) + w4*v4 in float64, for every channel."""
  y_low, y_high = ya[0], ya[1]
  x_low, x_high = xa[0], xa[1]
  w1, w2, w3, w4 = (float(w) for w in _weights(ya, xa))
  return (
    (w1 * plane[:, y_low, x_low] + w2 * plane[:, y_low, x_high]) + w3 * plane[:, y_high, x_low]
  ) + w4 * plane[:, y_high, x_high]


def _align_inputs(features, rois, layout, coord_dtype):
  """float64 NCHW features, the rois as an array, and the coordinate type."""
  rois = np.asarray(rois)
  return to_nchw(features, layout).astype(np.float64), rois, _coord_type(rois, coord_dtype)


@np.errstate(all="ignore")  # inf/NaN coordinates and values are defined
def roi_align(
  features,
  rois,
  output_size,
  spatial_scale=1.0,
  sampling_ratio=-1,
  aligned=False,
  mode="avg",
  layout="NCHW",
  box_order="xyxy",
  coord_dtype=None,
):
  """RoIAlign forward. Returns (out float64, winners int) in the layout's
  order, with leading dims rois.shape[:-1]; winners has out's shape + (2,):
  the grid indices (iy, ix) of the winning sample in max mode, (-1, -1) where
  no gradient flows (and everywhere in avg mode)."""
  assert mode in ("avg", "max"), mode
  f, rois, ct = _align_inputs(features, rois, layout, coord_dtype)
  n, c_count, h_size, w_size = f.shape
  ph_count, pw_count = output_size
  lead = rois.shape[:-1]
  k_count = int(np.prod(lead))
  out = np.zeros((k_count, c_count, ph_count, pw_count))
  winners = -np.ones((k_count, c_count, ph_count, pw_count, 2), np.int64)
  for k, image, box in iter_rois(rois, n, box_order):
    if image < 0:
      continue  # padding row: zeros
    geom = _align_geometry(box, output_size, spatial_scale, sampling_ratio, aligned, ct)
    if geom is None:
      continue  # non-finite RoI: zeros
    plane = f[image]
    for ph in range(ph_count):
      for pw in range(pw_count):
        y_samples, x_samples = _bin_axes(geom, ph, pw, h_size, w_size, ct)
        if mode == "avg":
          # sum over iy (outer), ix (inner), then / count
          total = np.zeros(c_count)
          for _, my, ya in y_samples:
            for _, mx, xa in x_samples:
              if ya is not None and xa is not None:  # out of range: 0
                total += _bilinear_value(plane, ya, xa) * (my * mx)
          out[k, :, ph, pw] = total / float(geom.count)
          continue
        if not y_samples or not x_samples:
          continue  # no samples at all: 0, no winner
        # running max with strict >, from -FLT_MAX, in grid order
        best = np.full(c_count, -FLT_MAX)
        win = -np.ones((c_count, 2), np.int64)
        for iy, _, ya in y_samples:
          for ix, _, xa in x_samples:
            if ya is None or xa is None:
              v, at = np.zeros(c_count), (-1, -1)  # outside: 0, no gradient
            else:
              v, at = _bilinear_value(plane, ya, xa), (iy, ix)
            better = v > best  # ties keep the first; NaN never wins
            best = np.where(better, v, best)
            win[better] = at
        out[k, :, ph, pw] = best
        winners[k, :, ph, pw] = win
  out = from_nchw_pooled(out.reshape(lead + out.shape[1:]), layout)
  winners = winners.reshape(lead + winners.shape[1:])
  if layout == "NHWC":
    winners = np.moveaxis(winners, -4, -2)
  return out, winners


def _backprop_sample(grad_plane, plane, chan, g, ya, xa):
  """Adds g*w_i to the four neighbours of one sample (channels `chan`, g per
  channel) and returns sum_c g_c*dv_c/dy, sum_c g_c*dv_c/dx (0 on a clamped
  axis): dv/dy = hx*(v3-v1) + lx*(v4-v2), dv/dx = hy*(v2-v1) + ly*(v4-v3)."""
  y_low, y_high = ya[0], ya[1]
  x_low, x_high = xa[0], xa[1]
  w1, w2, w3, w4 = (float(w) for w in _weights(ya, xa))
  grad_plane[chan, y_low, x_low] += g * w1
  grad_plane[chan, y_low, x_high] += g * w2
  grad_plane[chan, y_high, x_low] += g * w3
  grad_plane[chan, y_high, x_high] += g * w4
  v1 = plane[chan, y_low, x_low]
  v2 = plane[chan, y_low, x_high]
  v3 = plane[chan, y_high, x_low]
  v4 = plane[chan, y_high, x_high]
  ly, hy = float(ya[2]), float(ya[3])
  lx, hx = float(xa[2]), float(xa[3])
  gy = 0.0 if ya[4] else float(np.sum(g * (hx * (v3 - v1) + lx * (v4 - v2))))
  gx = 0.0 if xa[4] else float(np.sum(g * (hy * (v2 - v1) + ly * (v4 - v3))))
  return gy, gx


@np.errstate(all="ignore")
def roi_align_grad(
  features,
  rois,
  cotangent,
  output_size,
  spatial_scale=1.0,
  sampling_ratio=-1,
  aligned=False,
  mode="avg",
  layout="NCHW",
  coord_dtype=None,
):
  """Gradients of sum(roi_align(...) * cotangent) w.r.t. the features (in
  their layout) and the rois (same shape; batch-index column 0). xyxy only.

  Box gradient of a sample at (y, x): dv/dy * dy/dy1 etc., with
  y = ys + (ph + (iy+.5)/gh) * bin_h, ys = y1*s - off, bin_h = (y2-y1)*s/PH:
  dy/dy1 = s + t*dbin_h/dy1, dy/dy2 = t*dbin_h/dy2 with t = ph + (iy+.5)/gh,
  dbin_h/dy1 = -s/PH, dbin_h/dy2 = s/PH (both 0 under the 1-pixel minimum).
  The grid size and count are piecewise constant: no gradient."""
  assert mode in ("avg", "max"), mode
  f, rois, ct = _align_inputs(features, rois, layout, coord_dtype)
  n, c_count, h_size, w_size = f.shape
  ph_count, pw_count = output_size
  cot = np.asarray(cotangent, np.float64)
  if layout == "NHWC":
    cot = np.moveaxis(cot, -1, -3)
  cot = cot.reshape(-1, c_count, ph_count, pw_count)
  if mode == "max":
    _, winners = roi_align(
      features,
      rois,
      output_size,
      spatial_scale,
      sampling_ratio,
      aligned,
      "max",
      layout,
      coord_dtype=ct,
    )
    if layout == "NHWC":
      winners = np.moveaxis(winners, -2, -4)
    winners = winners.reshape(-1, c_count, ph_count, pw_count, 2)
  grad_f = np.zeros_like(f)
  grad_r = np.zeros((cot.shape[0], rois.shape[-1]))
  col = rois.shape[-1] - 4  # column of x1: then y1, x2, y2
  s = float(ct(spatial_scale))
  for k, image, box in iter_rois(rois, n):
    if image < 0:
      continue
    geom = _align_geometry(box, output_size, spatial_scale, sampling_ratio, aligned, ct)
    if geom is None:
      continue
    plane, grad_plane = f[image], grad_f[image]
    dbin_h = 0.0 if geom.h_min else s / ph_count  # dbin_h/dy2 = -dbin_h/dy1
    dbin_w = 0.0 if geom.w_min else s / pw_count
    count = float(geom.count)
    for ph in range(ph_count):
      for pw in range(pw_count):
        g = cot[k, :, ph, pw]
        if mode == "avg":
          # every in-range sample: g*w_i/count (times its multiplicity)
          y_samples, x_samples = _bin_axes(geom, ph, pw, h_size, w_size, ct)
          picks = [
            (iy, my, ya, ix, mx, xa, slice(None), g * (my * mx) / count)
            for iy, my, ya in y_samples
            for ix, mx, xa in x_samples
            if ya is not None and xa is not None
          ]
        else:
          # the winning sample of each channel: g*w_i
          picks = []
          for c in range(c_count):
            iy, ix = winners[k, c, ph, pw]
            if iy < 0:
              continue
            ya = _axis_interp(_sample_coord(geom.ys, ph, geom.bin_h, iy, geom.gh, ct), h_size, ct)
            xa = _axis_interp(_sample_coord(geom.xs, pw, geom.bin_w, ix, geom.gw, ct), w_size, ct)
            picks.append((iy, 1, ya, ix, 1, xa, [c], g[[c]]))
        for iy, my, ya, ix, mx, xa, chan, gs in picks:
          gy, gx = _backprop_sample(grad_plane, plane, chan, gs, ya, xa)
          # t = ph + (iy+.5)/gh, averaged over a run of my indices (linear in iy)
          ty = ph + (iy + (my - 1) / 2 + 0.5) / geom.gh
          tx = pw + (ix + (mx - 1) / 2 + 0.5) / geom.gw
          grad_r[k, col + 0] += gx * (s - tx * dbin_w)  # x1
          grad_r[k, col + 1] += gy * (s - ty * dbin_h)  # y1
          grad_r[k, col + 2] += gx * (tx * dbin_w)  # x2
          grad_r[k, col + 3] += gy * (ty * dbin_h)  # y2
  grad_f = grad_f if layout == "NCHW" else grad_f.transpose(0, 2, 3, 1)
  return grad_f, grad_r.reshape(rois.shape)


# ---------------------------------------------------------------------------
# Position-sensitive ops (torchvision ps_roi_pool / ps_roi_align)
# ---------------------------------------------------------------------------


def ps_input_channel(c, ph, pw, output_size):
  """The input channel bin (ph, pw) of output channel c reads."""
  return (c * output_size[0] + ph) * output_size[1] + pw


def _ps_pool_bins(box, output_size, spatial_scale, h_size, w_size, ct):
  """ps_roi_pool's windows of one RoI: rows[ph], cols[pw] as (start, end),
  None for a NaN box. start = round(x1*s), size max(end - start, 1) (no +1),
  bin edges floor/ceil, clipped to [0, size - 1]."""
  s = ct(spatial_scale)
  scaled = [ct(v) * s for v in box]
  if any(math.isnan(float(v)) for v in scaled):
    return None
  x1, y1, x2, y2 = (int(max(-COORD_LIMIT, min(COORD_LIMIT, c_round(float(v))))) for v in scaled)
  roi_w, roi_h = max(x2 - x1, 1), max(y2 - y1, 1)
  bin_h = ct(roi_h) / ct(output_size[0])
  bin_w = ct(roi_w) / ct(output_size[1])

  def window(p, bin_size, start, size):
    lo = int(math.floor(float(ct(p) * bin_size))) + start
    hi = int(math.ceil(float(ct(p + 1) * bin_size))) + start
    top = size - 1
    return min(max(lo, 0), top), min(max(hi, 0), top)

  rows = [window(ph, bin_h, y1, h_size) for ph in range(output_size[0])]
  cols = [window(pw, bin_w, x1, w_size) for pw in range(output_size[1])]
  return rows, cols


@np.errstate(all="ignore")
def ps_roi_pool(
  features, rois, output_size, spatial_scale=1.0, layout="NCHW", box_order="xyxy", coord_dtype=None
):
  """ps_roi_pool forward (float64), in the layout's order."""
  f = to_nchw(features, layout).astype(np.float64)
  n, c_in, h_size, w_size = f.shape
  ph_count, pw_count = output_size
  c_out = c_in // (ph_count * pw_count)
  rois = np.asarray(rois)
  ct = _coord_type(rois, coord_dtype)
  lead = rois.shape[:-1]
  out = np.zeros((int(np.prod(lead)), c_out, ph_count, pw_count))
  for k, image, box in iter_rois(rois, n, box_order):
    if image < 0 or h_size == 0 or w_size == 0:
      continue
    bins = _ps_pool_bins(box, output_size, spatial_scale, h_size, w_size, ct)
    if bins is None:
      continue
    rows, cols = bins
    for c in range(c_out):
      for ph in range(ph_count):
        for pw in range(pw_count):
          (h0, h1), (w0, w1) = rows[ph], cols[pw]
          if h1 <= h0 or w1 <= w0:
            continue
          plane = f[image, ps_input_channel(c, ph, pw, output_size)]
          total = 0.0
          for hh in range(h0, h1):
            for ww in range(w0, w1):
              total += plane[hh, ww]
          out[k, c, ph, pw] = total / ((h1 - h0) * (w1 - w0))
  return from_nchw_pooled(out.reshape(lead + out.shape[1:]), layout)


def _rotated_samples(
  rois,
  n,
  output_size,
  spatial_scale,
  sampling_ratio,
  aligned,
  angle_unit,
  clockwise,
  angle_dtype=np.float64,
):
  """Yields (k, image, ph, pw, y, x, count) for every sample of every bin of
  every non-empty rotated RoI, written from detectron2's formulas. The angle
  in radians is computed as detectron2 does (angle * pi / 180 in double) and
  rounded to the boxes' dtype, `angle_dtype` (its cosine is then that of a
  float32 number for float32 boxes: the same to float64 rounding)."""
  ph_count, pw_count = output_size
  rows = rois.reshape(-1, rois.shape[-1])
  for k, row in enumerate(rows):
    if rois.ndim == 3:
      image, box = k // rois.shape[1], row
    else:
      v = row[0]
      image = int(v) if (-1 < v < n) else -1
      box = row[1:]
    if image < 0:
      continue
    offset = 0.5 if aligned else 0.0
    cx = box[0] * spatial_scale - offset
    cy = box[1] * spatial_scale - offset
    roi_w, roi_h = box[2] * spatial_scale, box[3] * spatial_scale
    sign = -1.0 if clockwise else 1.0
    theta = sign * box[4] * math.pi / 180.0 if angle_unit == "degrees" else box[4] * sign
    theta = float(angle_dtype(theta))
    if not aligned:
      roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
    if not all(math.isfinite(v) for v in (cx, cy, roi_w, roi_h, theta)):
      continue
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    bin_h, bin_w = roi_h / ph_count, roi_w / pw_count
    grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(bin_h)
    grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(bin_w)
    count = max(grid_h * grid_w, 1)
    for ph in range(ph_count):
      for pw in range(pw_count):
        for iy in range(max(grid_h, 0)):
          yy = -roi_h / 2 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
          for ix in range(max(grid_w, 0)):
            xx = -roi_w / 2 + pw * bin_w + (ix + 0.5) * bin_w / grid_w
            yield (
              k,
              image,
              ph,
              pw,
              yy * cos_t - xx * sin_t + cy,
              yy * sin_t + xx * cos_t + cx,
              count,
            )


def _bilinear_weights(h, w, y, x):
  """[(row, col, weight)] of torchvision's bilinear rule (empty outside)."""
  if not (-1.0 <= y <= h and -1.0 <= x <= w) or h == 0 or w == 0:
    return []
  y, x = max(y, 0.0), max(x, 0.0)
  y_low, x_low = int(y), int(x)
  if y_low >= h - 1:
    y_low = y_high = h - 1
    y = float(y_low)
  else:
    y_high = y_low + 1
  if x_low >= w - 1:
    x_low = x_high = w - 1
    x = float(x_low)
  else:
    x_high = x_low + 1
  ly, lx = y - y_low, x - x_low
  hy, hx = 1.0 - ly, 1.0 - lx
  return [
    (y_low, x_low, hy * hx),
    (y_low, x_high, hy * lx),
    (y_high, x_low, ly * hx),
    (y_high, x_high, ly * lx),
  ]


@np.errstate(all="ignore")
def roi_align_rotated(
  features,
  rois,
  output_size,
  spatial_scale=1.0,
  sampling_ratio=-1,
  aligned=True,
  angle_unit="degrees",
  clockwise=False,
  layout="NCHW",
):
  """Rotated RoIAlign (detectron2's ROIAlignRotated; mmcv's with radians /
  clockwise / aligned=False), every sample of every bin visited, in float64.
  rois: (K, 6) rows [batch_index, cx, cy, w, h, angle] or (N, R, 5) boxes.
  Returns the layout's per-RoI output order with leading dims rois.shape[:-1]."""
  f = to_nchw(features, layout).astype(np.float64)
  n, c_count, h_size, w_size = f.shape
  angle_dtype = np.float32 if np.asarray(rois).dtype == np.float32 else np.float64
  rois = np.asarray(rois, np.float64)
  lead = rois.shape[:-1]
  out = np.zeros((int(np.prod(lead)), c_count) + tuple(output_size))
  for k, image, ph, pw, y, x, count in _rotated_samples(
    rois, n, output_size, spatial_scale, sampling_ratio, aligned, angle_unit, clockwise, angle_dtype
  ):
    for row, col, wt in _bilinear_weights(h_size, w_size, y, x):
      out[k, :, ph, pw] += wt * f[image, :, row, col] / count
  return from_nchw_pooled(out.reshape(lead + out.shape[1:]), layout)


@np.errstate(all="ignore")
def ps_roi_pool_grad(
  features_shape, rois, cotangent, output_size, spatial_scale=1.0, layout="NCHW", coord_dtype=None
):
  """The true derivative of ps_roi_pool's forward (features' layout): each
  bin's cotangent divided by its area, added to every pixel it averages."""
  shape = tuple(features_shape)
  nchw = shape if layout == "NCHW" else (shape[0], shape[3], shape[1], shape[2])
  n, c_in, h_size, w_size = nchw
  ph_count, pw_count = output_size
  c_out = c_in // (ph_count * pw_count)
  grad = np.zeros(nchw)
  rois = np.asarray(rois)
  ct = _coord_type(rois, coord_dtype)
  cot = np.asarray(cotangent, np.float64)
  cot = (cot if layout == "NCHW" else np.moveaxis(cot, -1, -3)).reshape(
    -1, c_out, ph_count, pw_count
  )
  for k, image, box in iter_rois(rois, n):
    if image < 0 or h_size == 0 or w_size == 0:
      continue
    bins = _ps_pool_bins(box, output_size, spatial_scale, h_size, w_size, ct)
    if bins is None:
      continue
    rows, cols = bins
    for c in range(c_out):
      for ph in range(ph_count):
        for pw in range(pw_count):
          (h0, h1), (w0, w1) = rows[ph], cols[pw]
          if h1 <= h0 or w1 <= w0:
            continue
          grad[image, ps_input_channel(c, ph, pw, output_size), h0:h1, w0:w1] += cot[
            k, c, ph, pw
          ] / ((h1 - h0) * (w1 - w0))
  return grad if layout == "NCHW" else grad.transpose(0, 2, 3, 1)


def _ps_select(full_nchw, output_size):
  """(..., C_in, PH, PW) of every input channel -> (..., C_out, PH, PW): bin
  (ph, pw) of output channel c from input channel ps_input_channel(c, ph, pw)."""
  ph_count, pw_count = output_size
  c_out = full_nchw.shape[-3] // (ph_count * pw_count)
  out = np.zeros(full_nchw.shape[:-3] + (c_out, ph_count, pw_count))
  for c in range(c_out):
    for ph in range(ph_count):
      for pw in range(pw_count):
        out[..., c, ph, pw] = full_nchw[..., ps_input_channel(c, ph, pw, output_size), ph, pw]
  return out


def ps_roi_align(
  features,
  rois,
  output_size,
  spatial_scale=1.0,
  sampling_ratio=-1,
  layout="NCHW",
  box_order="xyxy",
  coord_dtype=None,
):
  """ps_roi_align forward (float64): roi_align (aligned, avg; a bin without
  samples is 0) of every input channel, then each output bin's channel."""
  full, _ = roi_align(
    features,
    rois,
    output_size,
    spatial_scale,
    sampling_ratio,
    True,
    "avg",
    "NCHW" if layout == "NCHW" else layout,
    box_order,
    coord_dtype,
  )
  full = full if layout == "NCHW" else np.moveaxis(full, -1, -3)
  return from_nchw_pooled(_ps_select(full, output_size), layout)


def ps_roi_align_grad(
  features,
  rois,
  cotangent,
  output_size,
  spatial_scale=1.0,
  sampling_ratio=-1,
  layout="NCHW",
  coord_dtype=None,
):
  """Gradients of sum(ps_roi_align(...) * cotangent) w.r.t. the features and
  the rois: roi_align_grad with the cotangent placed on each output bin's
  input channel (zero on every other channel)."""
  ph_count, pw_count = output_size
  cot = np.asarray(cotangent, np.float64)
  cot = cot if layout == "NCHW" else np.moveaxis(cot, -1, -3)
  c_out = cot.shape[-3]
  full = np.zeros(cot.shape[:-3] + (c_out * ph_count * pw_count, ph_count, pw_count))
  for c in range(c_out):
    for ph in range(ph_count):
      for pw in range(pw_count):
        full[..., ps_input_channel(c, ph, pw, output_size), ph, pw] = cot[..., c, ph, pw]
  return roi_align_grad(
    features,
    rois,
    from_nchw_pooled(full, layout),
    output_size,
    spatial_scale,
    sampling_ratio,
    True,
    "avg",
    layout,
    coord_dtype,
  )


@np.errstate(all="ignore")
def roi_align_rotated_grad(
  features_shape,
  rois,
  cot,
  output_size,
  spatial_scale=1.0,
  sampling_ratio=-1,
  aligned=True,
  angle_unit="degrees",
  clockwise=False,
  layout="NCHW",
):
  """The feature gradient of sum(roi_align_rotated(...) * cot), float64, in
  the layout of the features."""
  shape = tuple(features_shape)
  n, c_count, h_size, w_size = (
    shape if layout == "NCHW" else (shape[0], shape[3], shape[1], shape[2])
  )
  angle_dtype = np.float32 if np.asarray(rois).dtype == np.float32 else np.float64
  rois = np.asarray(rois, np.float64)
  g = np.asarray(cot, np.float64)
  g = g if layout == "NCHW" else np.moveaxis(g, -1, -3)
  g = g.reshape((-1, c_count) + tuple(output_size))
  grad = np.zeros((n, c_count, h_size, w_size))
  for k, image, ph, pw, y, x, count in _rotated_samples(
    rois, n, output_size, spatial_scale, sampling_ratio, aligned, angle_unit, clockwise, angle_dtype
  ):
    for row, col, wt in _bilinear_weights(h_size, w_size, y, x):
      grad[image, :, row, col] += wt * g[k, :, ph, pw] / count
  return grad if layout == "NCHW" else grad.transpose(0, 2, 3, 1)


# --- prroi_pool ---------------------------------------------------------------
# Precise RoI Pooling by quadrature, independent of the kernels' closed form:
# the surface f(y, x) is evaluated point by point (bilinear interpolation of
# the pixels with every grid point outside the map counting as 0), and each
# bin's integral is a sum of Gauss-Legendre rules over the pieces of the bin
# between consecutive integers (f is bilinear there, so `nodes` >= 2 points
# per piece and axis integrate it exactly up to rounding).


def _prroi_surface(plane: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
  """f at the points y (m,) x x (n,) of a (C, H, W) plane: (C, m, n)."""
  c, h, w = plane.shape
  padded = np.zeros((c, h + 2, w + 2))
  padded[:, 1:-1, 1:-1] = plane  # grid point i at padded index i + 1
  y0 = np.floor(y).astype(np.int64)
  x0 = np.floor(x).astype(np.int64)
  fy, fx = y - y0, x - x0
  out = np.zeros((c, y.size, x.size))
  for dy, wy in ((0, 1 - fy), (1, fy)):
    iy = np.clip(y0 + dy + 1, 0, h + 1)
    for dx, wx in ((0, 1 - fx), (1, fx)):
      ix = np.clip(x0 + dx + 1, 0, w + 1)
      out += padded[:, iy][:, :, ix] * wy[None, :, None] * wx[None, None, :]
  return out


def _prroi_nodes(a: float, b: float, size: int, nodes: int):
  """Quadrature points and weights of [a, b] clipped to [-1, size] (f is 0
  outside), split at every integer."""
  t, wt = np.polynomial.legendre.leggauss(nodes)
  lo, hi = max(a, -1.0), min(b, float(size))
  if not hi > lo:
    return np.zeros(0), np.zeros(0)
  cuts = [lo] + [float(i) for i in range(math.floor(lo) + 1, math.ceil(hi))] + [hi]
  pts, wts = [], []
  for u, v in zip(cuts[:-1], cuts[1:]):
    pts.append((u + v) / 2 + (v - u) / 2 * t)
    wts.append((v - u) / 2 * wt)
  return np.concatenate(pts), np.concatenate(wts)


def prroi_pool(
  features, rois, output_size, spatial_scale=1.0, layout="NCHW", box_order="xyxy", nodes=3
):
  """Precise RoI Pooling in float64: (K, C, PH, PW) in the layout's order."""
  x = to_nchw(np.asarray(features, np.float64), layout)
  n, c, h, w = x.shape
  ph_count, pw_count = output_size
  rows = list(iter_rois(rois, n, box_order))
  out = np.zeros((len(rows), c, ph_count, pw_count))
  for k, image, box in rows:
    x1, y1, x2, y2 = (float(v) * spatial_scale for v in box)
    if image < 0 or not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
      continue
    bin_h = max(y2 - y1, 0.0) / ph_count
    bin_w = max(x2 - x1, 0.0) / pw_count
    area = bin_h * bin_w
    if not (area > 0 and math.isfinite(area)):
      continue
    for ph in range(ph_count):
      ys, wy = _prroi_nodes(y1 + ph * bin_h, y1 + (ph + 1) * bin_h, h, nodes)
      for pw in range(pw_count):
        xs, wx = _prroi_nodes(x1 + pw * bin_w, x1 + (pw + 1) * bin_w, w, nodes)
        if ys.size == 0 or xs.size == 0:
          continue
        f = _prroi_surface(x[image], ys, xs)
        out[k, :, ph, pw] = np.einsum("cmn,m,n->c", f, wy, wx) / area
  out = out.reshape(tuple(np.asarray(rois).shape[:-1]) + out.shape[1:])
  return from_nchw_pooled(out, layout)
