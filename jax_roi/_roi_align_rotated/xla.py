"""Rotated RoIAlign written with jnp (``implementation="xla"``).

It follows the kernels' semantics (csrc/roi_align_rotated/) and runs on any
platform: the automatic fallback where no kernel is compiled and the
benchmarks' baseline. Two forms:

* a fixed ``sampling_ratio`` up to 4: every sample of every bin gathered at
  once, differentiated by JAX itself;
* adaptive sampling (or a larger ratio): a loop over the samples of each bin
  that can land on the map (data-dependent trip counts, so a ``custom_vjp``:
  the feature gradient is the same loop scattering the cotangent, the box
  gradient five forward-mode derivatives, one per box parameter).

Imports no compiled code.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jax_roi._core.jnp_utils import exact_div, vary_like
from jax_roi._core.layout import acc_dtype, from_kchw, pooled_shape, roi_images, spatial_of
from jax_roi._roi_align_rotated.config import RotatedConfig

MAX_GRID = 2**31 - 1  # csrc kMaxGrid
_GATHER_MAX_SR = 4
_CHUNK = 16  # RoIs per step


class Geometry(NamedTuple):
  """Per-RoI geometry (csrc rotated_roi), RoIs flattened: (K,) arrays."""

  images: jax.Array  # int32, -1 for padding (and for empty RoIs' reads: 0)
  empty: jax.Array
  cy: jax.Array
  cx: jax.Array
  cos: jax.Array
  sin: jax.Array
  start_h: jax.Array
  start_w: jax.Array
  bin_h: jax.Array
  bin_w: jax.Array
  grid_h: jax.Array  # int32, <= 0: no samples
  grid_w: jax.Array
  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count
  yy_lo: jax.Array  # box-frame bounds of the sampling region (with a margin)
  yy_hi: jax.Array
  xx_lo: jax.Array
  xx_hi: jax.Array


def _nhwc(features, layout):
  return features if layout == "NHWC" else jnp.moveaxis(features, 1, 3)


def geometry(rois: jax.Array, config: RotatedConfig) -> Geometry:
  base = config.base
  dtype = rois.dtype
  boxes = rois[..., -5:].reshape(-1, 5)
  images = roi_images(rois, base.image_shape[0], indexed=rois.ndim == 2).reshape(-1)
  h_map, w_map = spatial_of(base.image_shape, base.layout)
  scale = jnp.asarray(base.spatial_scale, dtype)
  offset = jnp.asarray(0.5 if config.aligned else 0.0, dtype)
  sign = -1.0 if config.clockwise else 1.0

  def frame(boxes):
    cx = boxes[:, 0] * scale - offset
    cy = boxes[:, 1] * scale - offset
    roi_w = boxes[:, 2] * scale
    roi_h = boxes[:, 3] * scale
    angle = boxes[:, 4]
    if config.angle_unit == "degrees":
      wide = jnp.float64 if jax.config.read("jax_enable_x64") else dtype
      # As the kernels: (angle * pi) / 180 in double, correctly rounded
      # (exact_div: XLA would multiply by 1/180).
      theta = exact_div(angle.astype(wide) * (sign * math.pi), 180.0).astype(dtype)
    else:
      theta = angle * jnp.asarray(sign, dtype)
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    if not config.aligned:
      roi_w = jnp.where(roi_w < 1, jnp.ones_like(roi_w), roi_w)
      roi_h = jnp.where(roi_h < 1, jnp.ones_like(roi_h), roi_h)
    return cx, cy, roi_w, roi_h, cos, sin

  parts = frame(lax.stop_gradient(boxes))
  finite = functools.reduce(jnp.logical_and, [jnp.isfinite(a) for a in parts])
  empty = (images < 0) | ~finite
  # Empty RoIs get a harmless box before the differentiable computation, so
  # that no NaN reaches the gradient through the masked branches.
  safe = jnp.asarray([0, 0, 1, 1, 0], dtype)
  cx, cy, roi_w, roi_h, cos, sin = frame(jnp.where(empty[:, None], safe, boxes))
  ph_count, pw_count = base.output_size
  bin_h = exact_div(roi_h, ph_count)
  bin_w = exact_div(roi_w, pw_count)

  def grid(bin_size):
    if config.sampling_ratio > 0:
      return jnp.full(bin_size.shape, config.sampling_ratio, jnp.int32)
    return jnp.clip(jnp.ceil(bin_size), -MAX_GRID, MAX_GRID).astype(jnp.int32)

  grid_h = jnp.where(empty, 0, grid(bin_h))
  grid_w = jnp.where(empty, 0, grid(bin_w))
  product = grid_h.astype(dtype) * grid_w.astype(dtype)
  count = jnp.where(product > 1, product, jnp.ones_like(product))
  # Box-frame bounds of the sampling region [-1, H] x [-1, W] (csrc rotated_roi).
  sg = lax.stop_gradient
  c, s, ycen, xcen = sg(cos), sg(sin), sg(cy), sg(cx)
  ys = (-1.0 - ycen, h_map - ycen)
  xs = (-1.0 - xcen, w_map - xcen)
  yy = [a * c + b * s for a in ys for b in xs]
  xx = [b * c - a * s for a in ys for b in xs]
  mag = functools.reduce(jnp.maximum, [jnp.abs(a) + jnp.abs(b) for a in ys for b in xs])
  margin = 2.0 + 1e-4 * (mag + jnp.abs(ycen) + jnp.abs(xcen))
  yy_lo = functools.reduce(jnp.minimum, yy) - margin
  yy_hi = functools.reduce(jnp.maximum, yy) + margin
  xx_lo = functools.reduce(jnp.minimum, xx) - margin
  xx_hi = functools.reduce(jnp.maximum, xx) + margin
  return Geometry(
    jnp.where(empty, 0, images),
    empty,
    cy,
    cx,
    cos,
    sin,
    -(roi_h / 2),
    -(roi_w / 2),
    bin_h,
    bin_w,
    grid_h,
    grid_w,
    count,
    yy_lo,
    yy_hi,
    xx_lo,
    xx_hi,
  )


def sample_coord(start, p, bin_size, i, grid):
  """start + p * bin + ((i + 0.5f) * bin) / grid, broadcasting."""
  dtype = start.dtype
  half = (i.astype(jnp.float32) + 0.5).astype(dtype)
  return (start + p.astype(dtype) * bin_size) + exact_div(
    half * bin_size, jnp.maximum(grid, 1).astype(dtype)
  )


def _sample_range(start, p, bin_size, grid, lo, hi):
  """[first, last): the grid indices whose box-frame coordinate lies in
  [lo, hi] (csrc rotated_sample_range), by bisection; broadcasting."""
  start, p, bin_size, grid, lo, hi = jnp.broadcast_arrays(start, p, bin_size, grid, lo, hi)
  increasing = bin_size >= 0

  def first_true(pred):
    a = vary_like(jnp.zeros(grid.shape, jnp.int32), start, bin_size, grid)
    b = vary_like(jnp.maximum(grid, 0), start, bin_size, grid)

    def step(_, bounds):
      a, b = bounds
      mid = a + (b - a) // 2
      t = pred(sample_coord(start, p, bin_size, mid, grid))
      active = a < b
      return jnp.where(active & ~t, mid + 1, a), jnp.where(active & t, mid, b)

    a, _ = lax.fori_loop(0, 32, step, (a, b))
    return a

  first = jnp.where(increasing, first_true(lambda v: v >= lo), first_true(lambda v: v <= hi))
  last = jnp.where(increasing, first_true(lambda v: v > hi), first_true(lambda v: v < lo))
  usable = grid > 0
  first = jnp.where(usable, first, 0)
  return first, jnp.where(usable, jnp.maximum(last, first), 0)


def _axis(coord, size):
  """One axis of torchvision's bilinear rule: (valid, low, high, w_low, w_high)."""
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


def _taps(y, x, h, w):
  """The four neighbours (index pairs) and weights of samples at (y, x), and
  their validity."""
  vy, ylo, yhi, hy, ly = _axis(y, h)
  vx, xlo, xhi, hx, lx = _axis(x, w)
  return vy & vx, (
    (ylo, xlo, hy * hx),
    (ylo, xhi, hy * lx),
    (yhi, xlo, ly * hx),
    (yhi, xhi, ly * lx),
  )


def _positions(geo, yy, xx):
  """Map positions of box-frame samples yy (K, ..., 1) and xx (K, 1, ...)."""
  col = lambda a: a.reshape(a.shape + (1,) * (yy.ndim - 1))
  y = yy * col(geo.cos) - xx * col(geo.sin) + col(geo.cy)
  x = yy * col(geo.sin) + xx * col(geo.cos) + col(geo.cx)
  return y, x


def _gather(hwc, img, y, x, acc):
  """Bilinear values (..., C) of samples (y, x) of image img (broadcast),
  zero outside the sampling region."""
  h, w = hwc.shape[1], hwc.shape[2]
  valid, taps = _taps(y, x, h, w)
  v = sum(wt.astype(acc)[..., None] * hwc[img, yi, xi].astype(acc) for yi, xi, wt in taps)
  return jnp.where(valid[..., None], v, jnp.zeros_like(v))


def _col(a, ndim):
  return a.reshape(a.shape + (1,) * (ndim - 1))


def _fixed_grid(hwc, geo, config):
  """0 < sampling_ratio <= 4: every sample at once, RoI chunk by chunk."""
  acc = acc_dtype(hwc.dtype)
  ph_count, pw_count = config.base.output_size
  sr = config.sampling_ratio
  idx = jnp.arange(sr)

  def chunk(g):
    ph = jnp.arange(ph_count)[None, :, None]
    pw = jnp.arange(pw_count)[None, :, None]
    c3 = lambda a: a[:, None, None]
    yy = sample_coord(c3(g.start_h), ph, c3(g.bin_h), idx[None, None, :], c3(g.grid_h))
    xx = sample_coord(c3(g.start_w), pw, c3(g.bin_w), idx[None, None, :], c3(g.grid_w))
    y, x = _positions(g, yy[:, :, :, None, None], xx[:, None, None, :, :])  # (K, PH, S, PW, S)
    img = g.images[:, None, None, None, None]
    v = _gather(hwc, img, y, x, acc)  # (K, PH, S, PW, S, C)
    v = jnp.where(g.empty[:, None, None, None, None, None], jnp.zeros_like(v), v)
    return v.sum(axis=(2, 4)) / g.count.astype(acc)[:, None, None, None]  # (K, PH, PW, C)

  k = geo.images.shape[0]

  def one(x):
    return jax.tree.map(lambda a: a[0], chunk(jax.tree.map(lambda a: a[None], x)))

  return lax.map(jax.checkpoint(one), geo, batch_size=min(_CHUNK, k))


def _bin_ranges(geo, config):
  ph_count, pw_count = config.base.output_size
  sg = lax.stop_gradient
  c2 = lambda a: sg(a)[:, None]
  fy, ly = _sample_range(
    c2(geo.start_h),
    jnp.arange(ph_count)[None, :],
    c2(geo.bin_h),
    geo.grid_h[:, None],
    c2(geo.yy_lo),
    c2(geo.yy_hi),
  )
  fx, lx = _sample_range(
    c2(geo.start_w),
    jnp.arange(pw_count)[None, :],
    c2(geo.bin_w),
    geo.grid_w[:, None],
    c2(geo.xx_lo),
    c2(geo.xx_hi),
  )
  return fy, ly - fy, fx, lx - fx


def _loop(geo, ranges, config, body, init):
  """Runs body(state, y, x, live, g) for every sample slot of one RoI's bins
  (y, x: (PH, PW) map positions; live: the slot holds a sample), the RoI's
  geometry g; returns the final state."""
  ph_count, pw_count = config.base.output_size
  fy, ny, fx, nx = ranges
  nx_max = jnp.maximum(jnp.max(nx), 1)
  steps = jnp.max(ny) * nx_max
  ph = jnp.arange(ph_count)
  pw = jnp.arange(pw_count)

  def step(j, state):
    oy, ox = j // nx_max, j % nx_max
    yy = sample_coord(geo.start_h, ph, geo.bin_h, fy + oy, geo.grid_h)  # (PH,)
    xx = sample_coord(geo.start_w, pw, geo.bin_w, fx + ox, geo.grid_w)  # (PW,)
    y = yy[:, None] * geo.cos - xx[None, :] * geo.sin + geo.cy
    x = yy[:, None] * geo.sin + xx[None, :] * geo.cos + geo.cx
    live = (oy < ny)[:, None] & (ox < nx)[None, :]
    return body(state, y, x, live)

  return lax.fori_loop(0, steps, step, init)


def _loop_forward(hwc, rois, config):
  """Adaptive (or large fixed) grids: (K, PH, PW, C)."""
  acc = acc_dtype(hwc.dtype)
  geo = geometry(rois, config)
  ranges = _bin_ranges(geo, config)
  ph_count, pw_count = config.base.output_size
  c = hwc.shape[3]

  def one_roi(xs):
    g, r = xs
    f = hwc[g.images]  # (H, W, C)

    def body(total, y, x, live):
      v = _gather(f[None], 0, y, x, acc)
      return total + jnp.where(live[..., None], v, jnp.zeros_like(v))

    init = vary_like(jnp.zeros((ph_count, pw_count, c), acc), f, g.cy)
    total = _loop(g, r, config, body, init)
    return total / g.count.astype(acc)

  return lax.map(one_roi, (geo, ranges), batch_size=min(_CHUNK, geo.images.shape[0]))


def _loop_feature_grad(g_out, rois, config, shape):
  """The feature gradient of _loop_forward: (N, H, W, C) in acc."""
  acc = acc_dtype(g_out.dtype)
  geo = geometry(rois, config)
  ranges = _bin_ranges(geo, config)
  n, h, w, c = shape

  def one_roi(grad, xs):
    g, r, cot = xs  # cot: (PH, PW, C)
    cot = cot.astype(acc) / g.count.astype(acc)

    def body(grad, y, x, live):
      valid, taps = _taps(y, x, h, w)
      use = (valid & live & ~g.empty)[..., None]
      for yi, xi, wt in taps:
        grad = grad.at[g.images, yi, xi].add(jnp.where(use, wt.astype(acc)[..., None] * cot, 0))
      return grad

    return _loop(g, r, config, body, grad), None

  grad0 = jnp.zeros((n, h, w, c), acc)
  grad, _ = lax.scan(one_roi, grad0, (geo, ranges, g_out))
  return grad


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _loop_op(hwc, rois, config):
  return _loop_forward(hwc, rois, config)


def _loop_op_fwd(hwc, rois, config):
  return _loop_forward(hwc, rois, config), (hwc, rois)


def _loop_op_bwd(config, res, g):
  hwc, rois = res
  grad = _loop_feature_grad(g, rois, config, hwc.shape).astype(hwc.dtype)
  acc = acc_dtype(hwc.dtype)
  lead = rois.shape[:-1]
  # One forward-mode derivative per box parameter, batched (one loop).
  width = rois.shape[-1]
  tangents = jnp.zeros((5,) + rois.shape, rois.dtype)
  tangents = tangents.at[(jnp.arange(5), Ellipsis, jnp.arange(width - 5, width))].set(1)
  jvp = lambda t: jax.jvp(lambda r: _loop_forward(hwc, r, config), (rois,), (t,))[1]
  dots = jax.vmap(jvp)(tangents)  # (5, K, PH, PW, C)
  d = (dots.astype(acc) * g.astype(acc)[None]).reshape(5, dots.shape[1], -1).sum(axis=2)
  cols = d.T.reshape(lead + (5,)).astype(rois.dtype)
  grad_rois = jnp.zeros_like(rois).at[..., -5:].set(cols)
  return grad, grad_rois


_loop_op.defvjp(_loop_op_fwd, _loop_op_bwd)


def roi_align_rotated(operands: tuple, rois: jax.Array, config: RotatedConfig) -> jax.Array:
  """Rotated RoIAlign with jax_roi's semantics, written with jnp."""
  (features,) = operands
  base = config.base
  lead = rois.shape[:-1]
  hwc = _nhwc(features, base.layout)
  n, h, w, c = hwc.shape
  k = math.prod(lead)
  if k == 0 or c == 0 or n == 0:
    return jnp.zeros(pooled_shape(lead, c, base.output_size, base.layout), features.dtype)
  flat = rois.reshape((k,) + rois.shape[-1:]) if rois.ndim == 2 else rois
  if 0 < config.sampling_ratio <= _GATHER_MAX_SR:
    out = _fixed_grid(hwc, geometry(flat, config), config)
  else:
    out = _loop_op(hwc, rois, config)
  out = jnp.moveaxis(out.reshape((k,) + out.shape[-3:]), 3, 1)  # (K, C, PH, PW)
  return from_kchw(out.astype(features.dtype), lead, base.layout)
