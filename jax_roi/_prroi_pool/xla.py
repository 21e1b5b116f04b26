"""Precise RoI Pooling written with jnp (``implementation="xla"``).

It follows the kernels' semantics (csrc/prroi_pool/) and runs on any
platform: the automatic fallback where no kernel is compiled and the
benchmarks' baseline. The integral of the bilinear surface over a bin is
separable: ``sum_ij F[i, j] * wy(i) * wx(j)``, with ``wy(i)`` the integral
of ``tri(y - i)`` over the bin's rows (likewise ``wx``). Each RoI's weights
are dense ``(PH, H)`` and ``(PW, W)`` matrices and the output two
contractions with its image, RoI chunk by RoI chunk; JAX differentiates it
(the closed form is differentiable in the bin edges, so the box gradient is
exact too). Imports no compiled code.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from jax_roi._core.jnp_utils import exact_div, map_rois
from jax_roi._core.layout import acc_dtype, from_kchw, pooled_shape, roi_images
from jax_roi._prroi_pool.config import PrRoiPoolConfig

_CHUNK = 8  # RoIs per lax.map step (each gathers its image)


def _weights(a: jax.Array, b: jax.Array, size: int) -> jax.Array:
  """wy(i) for every grid point i < size: (..., size) for bin edges a <= b
  (...,): the cells [i - 1, i] and [i, i + 1] of the closed form
  (csrc prroi_weight).

  The clamps keep the bin edge on ties (``where``, not ``maximum``, which
  would split the derivative), and an empty piece has no derivative: so
  that JAX's derivative is the exact one also where an edge falls on a grid
  point (there each edge's derivative comes from one cell).
  """
  dtype = a.dtype
  i = jnp.arange(size, dtype=dtype)
  a, b = a[..., None], b[..., None]

  def piece(c0, c1):  # [a, b] within the cell [c0, c1], as offsets from c0
    lo = jnp.where(a >= c0, a, c0)
    hi = jnp.where(b <= c1, b, c1)
    return hi > lo, lo - c0, hi - c0

  live, u0, u1 = piece(i - 1, i)
  rise = jnp.where(live, (u1 - u0) * ((u0 + u1) * 0.5), 0)
  live, u0, u1 = piece(i, i + 1)
  fall = jnp.where(live, (u1 - u0) * (1 - (u0 + u1) * 0.5), 0)
  return (rise + fall).astype(dtype)


def _geometry(rois: jax.Array, config: PrRoiPoolConfig):
  """Per-RoI (images, empty, start_y, start_x, bin_h, bin_w, area), RoIs
  flattened (csrc prroi_roi)."""
  base = config.base
  dtype = rois.dtype
  boxes = rois[..., -4:].reshape(-1, 4)
  images = roi_images(rois, base.image_shape[0]).reshape(-1)
  scale = jnp.asarray(base.spatial_scale, dtype)
  ph_count, pw_count = base.output_size

  def frame(boxes):
    x1, y1, x2, y2 = (boxes[:, i] * scale for i in range(4))
    roi_w = jnp.maximum(x2 - x1, 0)
    roi_h = jnp.maximum(y2 - y1, 0)
    bin_h, bin_w = exact_div(roi_h, ph_count), exact_div(roi_w, pw_count)
    return x1, y1, x2, y2, bin_h, bin_w, bin_h * bin_w

  parts = frame(lax.stop_gradient(boxes))
  finite = jnp.isfinite(parts[0])
  for p in parts[1:4] + parts[6:]:
    finite &= jnp.isfinite(p)
  empty = (images < 0) | ~finite | ~(parts[6] > 0)
  # Empty RoIs get a harmless box before the differentiable computation, so
  # that no NaN reaches the gradient through the masked branches.
  safe = jnp.asarray([0, 0, 1, 1], dtype)
  x1, y1, _, _, bin_h, bin_w, area = frame(jnp.where(empty[:, None], safe, boxes))
  area = jnp.where(empty, jnp.ones_like(area), area)
  return jnp.where(empty, 0, images), empty, y1, x1, bin_h, bin_w, area


def prroi_pool(operands: tuple, rois: jax.Array, config: PrRoiPoolConfig) -> jax.Array:
  """Precise RoI Pooling with jax_roi's semantics, written with jnp."""
  (features,) = operands
  base = config.base
  lead = rois.shape[:-1]
  hwc = features if base.layout == "NHWC" else jnp.moveaxis(features, 1, 3)
  n, h, w, c = hwc.shape
  k = math.prod(lead)
  if k == 0 or c == 0 or n == 0:
    return jnp.zeros(pooled_shape(lead, c, base.output_size, base.layout), features.dtype)
  acc = acc_dtype(hwc.dtype)
  ph_count, pw_count = base.output_size
  geo = _geometry(rois, config)

  def chunk(g):
    images, empty, y1, x1, bin_h, bin_w, area = g
    ph = jnp.arange(ph_count, dtype=y1.dtype)
    pw = jnp.arange(pw_count, dtype=x1.dtype)
    y0 = y1[:, None] + ph[None, :] * bin_h[:, None]  # (k, PH)
    x0 = x1[:, None] + pw[None, :] * bin_w[:, None]  # (k, PW)
    wy = _weights(y0, y0 + bin_h[:, None], h).astype(acc)  # (k, PH, H)
    wx = _weights(x0, x0 + bin_w[:, None], w).astype(acc)  # (k, PW, W)
    f = hwc[images].astype(acc)  # (k, H, W, C)
    rows = jnp.einsum("kph,khwc->kpwc", wy, f, precision=lax.Precision.HIGHEST)
    out = jnp.einsum("kqw,kpwc->kpqc", wx, rows, precision=lax.Precision.HIGHEST)
    out = out / area.astype(acc)[:, None, None, None]
    return jnp.where(empty[:, None, None, None], jnp.zeros_like(out), out)  # (k, PH, PW, C)

  out = map_rois(chunk, geo, _CHUNK)
  out = jnp.moveaxis(out, 3, 1)  # (K, C, PH, PW)
  return from_kchw(out.astype(features.dtype), lead, base.layout)
