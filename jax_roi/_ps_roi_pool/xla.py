"""ps_roi_pool written with jnp (``implementation="xla"``).

It follows the kernels' semantics and runs on any platform: the automatic
fallback where no kernel is compiled and the benchmarks' baseline. Each bin
is a masked mean, so JAX's autodiff gives the true derivative of the
forward, as the kernels do. Imports no compiled code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jax_roi._core.jnp_utils import COORD_LIMIT, exact_div, map_rois, round_half_away
from jax_roi._core.layout import acc_dtype, from_kchw, pooled_shape, roi_images, spatial_of, to_nchw
from jax_roi._ps_roi_pool.config import PsRoiPoolConfig

_CHUNK = 8  # RoIs per lax.map step: bounds the (K, C, H, W) gathers


def ps_pool_windows(rois: jax.Array, config: PsRoiPoolConfig):
  """Bins of every RoI (flattened to K): images (K,), row bounds (K, PH) x 2
  and column bounds (K, PW) x 2, int32 half-open ranges clipped to
  [0, H - 1] / [0, W - 1] (csrc ps_pool_roi, ps_pool_bin)."""
  args = config.base
  n = args.image_shape[0]
  h, w = spatial_of(args.image_shape, args.layout)
  ph_count, pw_count = args.output_size
  dtype = rois.dtype
  boxes = rois[..., -4:].reshape(-1, 4)
  images = roi_images(rois, n).reshape(-1)
  scaled = boxes * jnp.asarray(args.spatial_scale, dtype)
  nan = jnp.isnan(scaled).any(axis=-1)
  empty = nan | (images < 0)
  r = jnp.clip(round_half_away(jnp.where(nan[:, None], 0, scaled)), -COORD_LIMIT, COORD_LIMIT)
  xs, ys, xe, ye = r[:, 0], r[:, 1], r[:, 2], r[:, 3]
  roi_w = jnp.maximum(xe - xs, 1)  # no +1, unlike roi_pool
  roi_h = jnp.maximum(ye - ys, 1)

  def bins(count, roi_size, start, size):
    bin_size = exact_div(roi_size, count)[:, None]
    p = jnp.arange(count, dtype=dtype)[None, :]
    lo = jnp.floor(p * bin_size) + start[:, None]
    hi = jnp.ceil((p + 1) * bin_size) + start[:, None]
    top = max(size - 1, 0)
    lo = jnp.where(empty[:, None] | (size == 0), 0, jnp.clip(lo, 0, top)).astype(jnp.int32)
    hi = jnp.where(empty[:, None] | (size == 0), 0, jnp.clip(hi, 0, top)).astype(jnp.int32)
    return lo, hi

  return images, bins(ph_count, roi_h, ys, h), bins(pw_count, roi_w, xs, w)


def ps_roi_pool(operands: tuple, rois: jax.Array, config: PsRoiPoolConfig) -> jax.Array:
  """ps_roi_pool with torchvision's forward, written with jnp."""
  (features,), args = operands, config.base
  rois = lax.stop_gradient(rois)
  lead = rois.shape[:-1]
  ph_count, pw_count = args.output_size
  chw = to_nchw(features, args.layout)
  n, c, h, w = chw.shape
  cout = c // (ph_count * pw_count)
  images, (row_lo, row_hi), (col_lo, col_hi) = ps_pool_windows(rois, config)
  k = images.shape[0]
  if k == 0 or cout == 0 or h == 0 or w == 0 or n == 0:
    return jnp.zeros(pooled_shape(lead, cout, args.output_size, args.layout), features.dtype)
  acc = acc_dtype(features.dtype)
  f6 = chw.reshape(n, cout, ph_count, pw_count, h, w)
  rows = (jnp.arange(h)[None, None, :] >= row_lo[..., None]) & (
    jnp.arange(h)[None, None, :] < row_hi[..., None]
  )  # (K, PH, H)
  cols = (jnp.arange(w)[None, None, :] >= col_lo[..., None]) & (
    jnp.arange(w)[None, None, :] < col_hi[..., None]
  )  # (K, PW, W)
  area = ((row_hi - row_lo)[:, :, None] * (col_hi - col_lo)[:, None, :]).astype(acc)

  def chunk(xs):
    image, rm, cm, ar = xs
    f = f6[jnp.maximum(image, 0)].astype(acc)  # (k, C_out, PH, PW, H, W)
    s = jnp.einsum(
      "kph,kqw,kcpqhw->kcpq", rm.astype(acc), cm.astype(acc), f, precision=lax.Precision.HIGHEST
    )
    ar = ar[:, None]
    return jnp.where(ar > 0, s / jnp.where(ar > 0, ar, 1), 0)

  out = map_rois(chunk, (images, rows, cols, area), _CHUNK)
  out = jnp.where((images >= 0)[:, None, None, None], out, 0)
  return from_kchw(out.astype(features.dtype), lead, args.layout)
