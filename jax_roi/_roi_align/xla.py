"""RoIAlign written with jnp (``implementation="xla"``).

It follows the kernels' semantics (avg and max modes) and runs on any
platform: the automatic fallback where no kernel is compiled, the
benchmarks' baseline, and (:func:`align_at_winners`) the VJP of the max-mode
kernel's backward. Gradients come from JAX autodiff. Imports no compiled
code.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jax_roi._core.jnp_utils import FLT_MAX, exact_div, map_rois, vary_like
from jax_roi._core.layout import acc_dtype, from_kchw, pooled_shape, roi_images, to_kchw, to_nchw
from jax_roi._roi_align.config import RoiAlignConfig

MAX_GRID = 2**31 - 1  # csrc kMaxGrid
_ALIGN_CHUNK = 16  # RoIs per lax.map step
# Up to this sampling ratio every sample is gathered at once; beyond it (and
# for adaptive sampling) the separable (avg) or search (max) forms are used.
_GATHER_MAX_SR = 4


class AlignGeometry(NamedTuple):
  images: jax.Array  # (K,) int32, -1 for padding
  empty: jax.Array  # (K,) bool: no samples at all
  start_h: jax.Array  # (K,) in the coordinate dtype
  start_w: jax.Array
  bin_h: jax.Array
  bin_w: jax.Array
  grid_h: jax.Array  # (K,) int32, <= 0: no samples
  grid_w: jax.Array
  count: jax.Array  # type: ignore[assignment]  # (K,) coordinate dtype


def align_geometry(rois: jax.Array, args) -> AlignGeometry:
  """Per-RoI geometry of RoIAlign (csrc align_roi), RoIs flattened."""
  base = args.base
  dtype = rois.dtype
  boxes = rois[..., -4:].reshape(-1, 4)
  images = roi_images(rois, base.image_shape[0]).reshape(-1)
  offset = jnp.asarray(0.5 if args.aligned else 0.0, dtype)
  scaled = boxes * jnp.asarray(base.spatial_scale, dtype) - offset
  start_w, start_h, end_w, end_h = (scaled[:, i] for i in range(4))
  roi_w = end_w - start_w
  roi_h = end_h - start_h
  if not args.aligned:  # clamped first, as torchvision: x2 = -inf is a 1-pixel RoI
    roi_w = jnp.where(roi_w < 1, jnp.ones_like(roi_w), roi_w)
    roi_h = jnp.where(roi_h < 1, jnp.ones_like(roi_h), roi_h)
  finite = jnp.isfinite(start_w) & jnp.isfinite(start_h) & jnp.isfinite(roi_w) & jnp.isfinite(roi_h)
  empty = (images < 0) | ~finite
  ph_count, pw_count = base.output_size
  bin_h = exact_div(roi_h, ph_count)
  bin_w = exact_div(roi_w, pw_count)

  def grid(bin_size):
    if args.sampling_ratio > 0:
      return jnp.full(bin_size.shape, args.sampling_ratio, jnp.int32)
    g = jnp.clip(jnp.ceil(jnp.where(finite, bin_size, 0)), -MAX_GRID, MAX_GRID)
    return g.astype(jnp.int32)

  grid_h = jnp.where(empty, 0, grid(bin_h))
  grid_w = jnp.where(empty, 0, grid(bin_w))
  product = grid_h.astype(dtype) * grid_w.astype(dtype)
  count = jnp.where(product > 1, product, jnp.ones_like(product))
  zero = jnp.zeros_like(start_h)
  return AlignGeometry(
    images,
    empty,
    jnp.where(empty, zero, start_h),
    jnp.where(empty, zero, start_w),
    jnp.where(empty, zero, bin_h),
    jnp.where(empty, zero, bin_w),
    grid_h,
    grid_w,
    count,
  )


def sample_coord(start, p, bin_size, i, grid):
  """start + p * bin + ((i + 0.5f) * bin) / grid, broadcasting."""
  dtype = start.dtype
  half = (i.astype(jnp.float32) + 0.5).astype(dtype)
  return (start + p.astype(dtype) * bin_size) + exact_div(
    half * bin_size, jnp.maximum(grid, 1).astype(dtype)
  )


def sample_range(start, p, bin_size, grid, size):
  """[first, last): the samples of a bin whose coordinate is in [-1, size]
  (csrc sample_range), by bisection; start/bin/grid broadcast with p."""
  start, p, bin_size, grid = jnp.broadcast_arrays(start, p, bin_size, grid)
  increasing = bin_size >= 0
  low, high = -1.0, float(size)

  def first_true(pred):
    lo = vary_like(jnp.zeros(grid.shape, jnp.int32), start, bin_size, grid)
    hi = vary_like(jnp.maximum(grid, 0), start, bin_size, grid)

    def step(_, bounds):
      lo, hi = bounds
      mid = lo + (hi - lo) // 2
      t = pred(sample_coord(start, p, bin_size, mid, grid))
      active = lo < hi
      return (jnp.where(active & ~t, mid + 1, lo), jnp.where(active & t, mid, hi))

    lo, _ = lax.fori_loop(0, 32, step, (lo, hi))
    return lo

  first = jnp.where(increasing, first_true(lambda c: c >= low), first_true(lambda c: c <= high))
  last = jnp.where(increasing, first_true(lambda c: c > high), first_true(lambda c: c < low))
  usable = (grid > 0) & (size > 0)
  first = jnp.where(usable, first, 0)
  last = jnp.where(usable, jnp.maximum(last, first), 0)
  return first, last


def axis_weights(coord, size):
  """One axis of torchvision's bilinear rule: (valid, low, high, w_low, w_high)
  for sample coordinates `coord` on an axis of `size` pixels."""
  dtype = coord.dtype
  valid = (coord >= -1) & (coord <= size) & (size > 0)
  c = jnp.where(coord <= 0, jnp.zeros_like(coord), coord)
  c = jnp.where(valid, c, jnp.zeros_like(c))
  low = jnp.clip(c, 0, max(size - 1, 0)).astype(jnp.int32)
  edge = low >= size - 1
  low = jnp.where(edge, size - 1, low)
  high = jnp.where(edge, size - 1, low + 1)
  c = jnp.where(edge, low.astype(dtype), c)
  frac = c - low.astype(dtype)
  return valid, jnp.maximum(low, 0), jnp.maximum(high, 0), 1 - frac, frac


def _sample_values(chw, geo_k, ys, xs, acc):
  """Bilinear values of samples (K, PH, GY) x (K, PW, GX) of every channel:
  (K, PH, GY, PW, GX, C), zero outside the sampling region; and validity."""
  h, w = chw.shape[2], chw.shape[3]
  vy, ylo, yhi, hy, ly = axis_weights(ys, h)
  vx, xlo, xhi, hx, lx = axis_weights(xs, w)
  img = jnp.maximum(geo_k.images, 0)[:, None, None, None, None]
  e = (slice(None), slice(None), slice(None), None, None)  # (K, PH, GY) -> 5-D
  f = (slice(None), None, None, slice(None), slice(None))  # (K, PW, GX) -> 5-D

  def at(yi, xi):
    return chw[img, :, yi[e], xi[f]].astype(acc)  # (K, PH, GY, PW, GX, C)

  w1 = (hy[e] * hx[f]).astype(acc)[..., None]
  w2 = (hy[e] * lx[f]).astype(acc)[..., None]
  w3 = (ly[e] * hx[f]).astype(acc)[..., None]
  w4 = (ly[e] * lx[f]).astype(acc)[..., None]
  v = w1 * at(ylo, xlo) + w2 * at(ylo, xhi) + w3 * at(yhi, xlo) + w4 * at(yhi, xhi)
  valid = (vy[e] & vx[f])[..., None]
  return jnp.where(valid, v, jnp.zeros_like(v)), valid


def roi_align(operands: tuple, rois: jax.Array, args: RoiAlignConfig) -> jax.Array:
  """RoIAlign (avg and max modes) with jax_roi's semantics, written with jnp."""
  (features,) = operands
  base = args.base
  lead = rois.shape[:-1]
  chw = to_nchw(features, base.layout)
  n, c, h, w = chw.shape
  geo = align_geometry(rois, args)
  k = geo.images.shape[0]
  if k == 0 or c == 0 or n == 0:  # No output, or every RoI is padding.
    return jnp.zeros(pooled_shape(lead, c, base.output_size, base.layout), features.dtype)
  if 0 < args.sampling_ratio <= _GATHER_MAX_SR:
    out = _align_fixed_grid(chw, geo, args)
  elif args.mode == "avg":
    out = _align_separable_avg(chw, geo, args)
  else:
    out = _align_search_max(features, chw, rois, geo, args)
  return from_kchw(out.astype(features.dtype), lead, base.layout)


def _bins(ph_count, pw_count):
  """Bin indices (1, PH, 1) and (1, PW, 1), and a per-RoI value to (K, 1, 1)."""
  ph = jnp.arange(ph_count)[None, :, None]
  pw = jnp.arange(pw_count)[None, :, None]
  col = lambda a: a[:, None, None]
  return ph, pw, col


def _align_fixed_grid(chw, geo, args):
  """sampling_ratio > 0: every sample of every bin at once, RoI chunk by chunk."""
  acc = acc_dtype(chw.dtype)
  ph_count, pw_count = args.base.output_size
  sr = args.sampling_ratio
  grid_index = jnp.arange(sr)[None, None, :]

  def chunk(geo_k):
    ph, pw, col = _bins(ph_count, pw_count)
    ys = sample_coord(col(geo_k.start_h), ph, col(geo_k.bin_h), grid_index, col(geo_k.grid_h))
    xs = sample_coord(col(geo_k.start_w), pw, col(geo_k.bin_w), grid_index, col(geo_k.grid_w))
    v, valid = _sample_values(chw, geo_k, ys, xs, acc)  # (K, PH, S, PW, S, C)
    v = jnp.where(geo_k.empty[:, None, None, None, None, None], jnp.zeros_like(v), v)
    kk = v.shape[0]
    if args.mode == "avg":
      out = v.sum(axis=(2, 4)) / col(geo_k.count).astype(acc)[..., None]
    else:
      # Grid order (iy, ix): first maximum wins; out-of-range samples are 0.
      flat = jnp.moveaxis(v, 3, 2).reshape(kk, ph_count, pw_count, sr * sr, -1)
      key = jnp.where(flat > -FLT_MAX, flat, -jnp.inf)
      best = lax.stop_gradient(jnp.argmax(key, axis=3))
      top = jnp.take_along_axis(flat, best[:, :, :, None], axis=3)[:, :, :, 0]
      found = lax.stop_gradient(jnp.max(key, axis=3)) > -jnp.inf
      out = jnp.where(found, top, jnp.asarray(-FLT_MAX, acc))
      out = jnp.where(geo_k.empty[:, None, None, None], jnp.zeros_like(out), out)
    return jnp.moveaxis(out, 3, 1)  # (K, C, PH, PW)

  return map_rois(chunk, geo, _ALIGN_CHUNK)


def _axis_weight_matrix(start, bin_size, grid, size, p_count, candidates):
  """Separable RoIAlign weights along one axis: (K, P, size), the sum over the
  bin's samples of their bilinear weights on each pixel row (or column)."""
  p = jnp.arange(p_count)[None, :]
  first, last = sample_range(start[:, None], p, bin_size[:, None], grid[:, None], size)
  j = jnp.arange(candidates)[None, None, :]
  i = first[..., None] + j  # (K, P, G)
  coord = sample_coord(
    start[:, None, None], p[..., None], bin_size[:, None, None], i, grid[:, None, None]
  )
  valid, low, high, w_low, w_high = axis_weights(coord, size)
  use = valid & (i < last[..., None])
  zero = jnp.zeros_like(w_low)
  w_low = jnp.where(use, w_low, zero)
  w_high = jnp.where(use, w_high, zero)
  k = start.shape[0]
  kk = jnp.broadcast_to(jnp.arange(k)[:, None, None], i.shape)
  pp = jnp.broadcast_to(p[..., None], i.shape)
  m = jnp.zeros((k, p_count, max(size, 1)), w_low.dtype)
  m = m.at[kk, pp, low].add(w_low).at[kk, pp, high].add(w_high)
  return m[..., :size]


def _align_separable_avg(chw, geo, args):
  """avg with large or adaptive grids: separable weights, then one
  contraction per RoI. Bounded work for any grid: with adaptive sampling at
  most 2 * size + 3 samples per axis land in the sampling region (samples are
  at least half a pixel apart), with a fixed ratio at most that ratio."""
  acc = acc_dtype(chw.dtype)
  _, _, h, w = chw.shape
  ph_count, pw_count = args.base.output_size
  sr = args.sampling_ratio
  wy = _axis_weight_matrix(
    geo.start_h, geo.bin_h, geo.grid_h, h, ph_count, sr if sr > 0 else 2 * h + 3
  )
  wx = _axis_weight_matrix(
    geo.start_w, geo.bin_w, geo.grid_w, w, pw_count, sr if sr > 0 else 2 * w + 3
  )

  def chunk(xs):
    image, ay, ax, count = xs
    f = chw[jnp.maximum(image, 0)].astype(acc)  # (K, C, H, W)
    t = jnp.einsum("kqw,kchw->kchq", ax.astype(acc), f)
    return jnp.einsum("kph,kchq->kcpq", ay.astype(acc), t) / count.astype(acc)[:, None, None, None]

  return map_rois(chunk, (geo.images, wy, wx, geo.count), 4)


def align_at_winners(features, rois, argmax_y, argmax_x, args):
  """Bilinear value of `features` at each output's winning sample (argmax
  grid indices, -1: none -> 0): the max-mode output given its winners,
  differentiable w.r.t. features and rois."""
  base = args.base
  chw = to_nchw(features, base.layout)
  n, c, h, w = chw.shape
  geo = align_geometry(rois, args)
  ph_count, pw_count = base.output_size
  lead = rois.shape[:-1]
  if n == 0 or geo.images.shape[0] == 0:
    return jnp.zeros(pooled_shape(lead, c, base.output_size, base.layout), features.dtype)

  ay = to_kchw(argmax_y, lead, base.layout)  # (K, C, PH, PW)
  ax = to_kchw(argmax_x, lead, base.layout)
  col = lambda a: a[:, None, None, None]
  ph = jnp.arange(ph_count)[None, None, :, None]
  pw = jnp.arange(pw_count)[None, None, None, :]
  ys = sample_coord(col(geo.start_h), ph, col(geo.bin_h), jnp.maximum(ay, 0), col(geo.grid_h))
  xs = sample_coord(col(geo.start_w), pw, col(geo.bin_w), jnp.maximum(ax, 0), col(geo.grid_w))
  vy, ylo, yhi, hy, ly = axis_weights(ys, h)
  vx, xlo, xhi, hx, lx = axis_weights(xs, w)
  acc = acc_dtype(features.dtype)
  img = jnp.maximum(geo.images, 0)[:, None, None, None]
  ch = jnp.arange(c)[None, :, None, None]

  def at(yi, xi):
    return chw[img, ch, yi, xi].astype(acc)

  v = (
    (hy * hx).astype(acc) * at(ylo, xlo)
    + (hy * lx).astype(acc) * at(ylo, xhi)
    + (ly * hx).astype(acc) * at(yhi, xlo)
    + (ly * lx).astype(acc) * at(yhi, xhi)
  )
  use = (ay >= 0) & (ax >= 0) & vy & vx & ~col(geo.empty)
  out = jnp.where(use, v, jnp.zeros_like(v))
  return from_kchw(out, lead, base.layout)


def _align_search_max(features, chw, rois, geo, args):
  """max with large or adaptive grids: find each bin's winning sample with a
  loop over the samples in the sampling region (no gradient), then take its
  value differentiably (align_at_winners)."""
  acc = acc_dtype(chw.dtype)
  _, c, h, w = chw.shape
  ph_count, pw_count = args.base.output_size
  p_h = jnp.arange(ph_count)[None, :]
  p_w = jnp.arange(pw_count)[None, :]
  sg = lax.stop_gradient
  start_h, start_w, bin_h, bin_w = (sg(a) for a in (geo.start_h, geo.start_w, geo.bin_h, geo.bin_w))
  fy, ly_ = sample_range(start_h[:, None], p_h, bin_h[:, None], geo.grid_h[:, None], h)
  fx, lx_ = sample_range(start_w[:, None], p_w, bin_w[:, None], geo.grid_w[:, None], w)
  chw_sg = sg(chw)

  def one_roi(xs):
    image, s_h, s_w, b_h, b_w, g_h, g_w, fy, ly_, fx, lx_ = xs
    ny, nx = ly_ - fy, lx_ - fx  # (PH,), (PW,)
    max_nx = jnp.maximum(jnp.max(nx), 1)
    steps = jnp.max(ny) * max_nx
    f = chw_sg[jnp.maximum(image, 0)].astype(acc)  # (C, H, W)

    def body(j, state):
      best, by, bx = state  # (C, PH, PW)
      oy, ox = j // max_nx, j % max_nx
      iy = fy + oy  # (PH,)
      ix = fx + ox  # (PW,)
      yc = sample_coord(s_h, jnp.arange(ph_count), b_h, iy, g_h)
      xc = sample_coord(s_w, jnp.arange(pw_count), b_w, ix, g_w)
      vy, ylo, yhi, hy, lyw = axis_weights(yc, h)
      vx, xlo, xhi, hx, lxw = axis_weights(xc, w)
      at = lambda yi, xi: f[:, yi[:, None], xi[None, :]]
      v = (
        (hy[:, None] * hx[None, :]).astype(acc) * at(ylo, xlo)
        + (hy[:, None] * lxw[None, :]).astype(acc) * at(ylo, xhi)
        + (lyw[:, None] * hx[None, :]).astype(acc) * at(yhi, xlo)
        + (lyw[:, None] * lxw[None, :]).astype(acc) * at(yhi, xhi)
      )
      live = ((oy < ny)[:, None] & (ox < nx)[None, :] & vy[:, None] & vx[None, :])[None]
      better = live & (v > best)
      return (
        jnp.where(better, v, best),
        jnp.where(better, iy[None, :, None], by),
        jnp.where(better, ix[None, None, :], bx),
      )

    init = tuple(
      vary_like(a, f, s_h, s_w, b_h, b_w, fy, fx)
      for a in (
        jnp.full((c, ph_count, pw_count), -FLT_MAX, acc),
        jnp.full((c, ph_count, pw_count), -1, jnp.int32),
        jnp.full((c, ph_count, pw_count), -1, jnp.int32),
      )
    )
    best, by, bx = lax.fori_loop(0, steps, body, init)
    # The zero-valued samples outside the region compete in grid order.
    has = (g_h > 0) & (g_w > 0)
    rows_empty = (ny <= 0)[:, None]
    cols_empty = (nx <= 0)[None, :]
    # Grid position (row, column) of the first such sample, if any.
    at_origin = rows_empty | cols_empty | (fy > 0)[:, None] | (fx > 0)[None, :]
    in_row0 = (lx_ < g_w)[None, :]
    below = (ly_ < g_h)[:, None]
    out_row = jnp.where(at_origin | in_row0, 0, ly_[:, None])
    out_col = jnp.where(at_origin, 0, jnp.where(in_row0, lx_[None, :], 0))
    exists = has & (at_origin | in_row0 | below)
    out_row, out_col, exists = (
      jnp.broadcast_to(a, (ph_count, pw_count))[None] for a in (out_row, out_col, exists)
    )
    earlier = (by < 0) | (out_row < by) | ((out_row == by) & (out_col < bx))
    zero_wins = exists & ((0 > best) | ((best == 0) & earlier))
    by = jnp.where(zero_wins | ~has, -1, by)
    bx = jnp.where(zero_wins | ~has, -1, bx)
    fallback = jnp.where(zero_wins | ~has, 0.0, -FLT_MAX)
    return by, bx, fallback.astype(acc)

  by, bx, fallback = lax.map(
    one_roi, (geo.images, start_h, start_w, bin_h, bin_w, geo.grid_h, geo.grid_w, fy, ly_, fx, lx_)
  )
  # (K, C, PH, PW) winners -> the layout's order for align_at_winners
  lead = rois.shape[:-1]
  layout = args.base.layout
  values = align_at_winners(
    features, rois, from_kchw(by, lead, layout), from_kchw(bx, lead, layout), args
  )
  values = to_kchw(values, lead, layout)
  return jnp.where(by >= 0, values.astype(acc), fallback)
