"""RoIPool written with jnp (``implementation="xla"``).

It follows the kernels' semantics and runs on any platform: the automatic
fallback where no kernel is compiled, the benchmarks' baseline, and the VJP
of the kernel's backward (:func:`gather_argmax`). Imports no compiled code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jax_roi._core.args import RoiArgs
from jax_roi._core.jnp_utils import COORD_LIMIT, FLT_MAX, exact_div, round_half_away
from jax_roi._core.layout import acc_dtype, from_kchw, pooled_shape, roi_images, spatial_of, to_nchw
from jax_roi._roi_pool.config import RoiPoolConfig

# RoIs processed together inside lax.map: bounds the memory of the
# per-RoI (C, H, PW, W) masked reductions.
_MAP_BATCH = 8


def pool_windows(rois: jax.Array, args: RoiArgs):
  """RoIPool bins of every RoI (flattened to K).

  Returns images (K,), row bounds (K, PH) x 2 and column bounds (K, PW) x 2,
  as int32 half-open ranges clipped to the map (empty for padding and NaN).
  """
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
  roi_w = jnp.maximum(xe - xs + 1, 1)
  roi_h = jnp.maximum(ye - ys + 1, 1)

  def bins(count, roi_size, start, size):
    bin_size = exact_div(roi_size, count)[:, None]
    p = jnp.arange(count, dtype=dtype)[None, :]
    lo = jnp.floor(p * bin_size) + start[:, None]
    hi = jnp.ceil((p + 1) * bin_size) + start[:, None]
    lo = jnp.where(empty[:, None], 0, jnp.clip(lo, 0, size)).astype(jnp.int32)
    hi = jnp.where(empty[:, None], 0, jnp.clip(hi, 0, size)).astype(jnp.int32)
    return lo, hi

  rows = bins(ph_count, roi_h, ys, h)
  cols = bins(pw_count, roi_w, xs, w)
  return images, rows, cols


def roi_pool(operands: tuple, rois: jax.Array, config: RoiPoolConfig) -> jax.Array:
  """RoIPool with torchvision's semantics, written with jnp."""
  (features,), args = operands, config.base
  rois = lax.stop_gradient(rois)
  lead = rois.shape[:-1]
  ph_count, pw_count = args.output_size
  h, w = spatial_of(args.image_shape, args.layout)
  chw = to_nchw(features, args.layout)
  c = chw.shape[1]
  images, (row_lo, row_hi), (col_lo, col_hi) = pool_windows(rois, args)
  k = images.shape[0]
  if k == 0 or c == 0 or h == 0 or w == 0 or args.image_shape[0] == 0:  # All empty.
    return jnp.zeros(pooled_shape(lead, c, args.output_size, args.layout), features.dtype)
  acc = acc_dtype(features.dtype)
  h_range = jnp.arange(h)
  w_range = jnp.arange(w)
  neg_inf = jnp.asarray(-jnp.inf, acc)

  def one_roi(xs):
    image, rlo, rhi, clo, chi = xs
    # Values that can never win torchvision's strict '>' against -FLT_MAX
    # (NaN, values <= -FLT_MAX) become -inf.
    f = chw[jnp.maximum(image, 0)].astype(acc)  # (C, H, W)
    key = jnp.where(f > -FLT_MAX, f, neg_inf)
    col_mask = (w_range >= clo[:, None]) & (w_range < chi[:, None])  # (PW, W)
    t = jnp.where(col_mask[None, None], key[:, :, None, :], neg_inf)  # (C, H, PW, W)
    row_max = t.max(axis=-1)  # (C, H, PW)
    row_arg = t.argmax(axis=-1)  # first maximum
    row_mask = (h_range >= rlo[:, None]) & (h_range < rhi[:, None])  # (PH, H)
    t2 = jnp.where(row_mask[None, :, :, None], row_max[:, None], neg_inf)  # (C, PH, H, PW)
    best = t2.max(axis=2)  # (C, PH, PW)
    h_star = t2.argmax(axis=2)
    w_star = jnp.take_along_axis(row_arg, h_star, axis=1)
    return h_star.astype(jnp.int32), w_star.astype(jnp.int32), best > neg_inf

  h_star, w_star, found = lax.map(
    one_roi, (images, row_lo, row_hi, col_lo, col_hi), batch_size=min(_MAP_BATCH, k)
  )
  # Gather the winners from the features so that autodiff sends each output's
  # cotangent to exactly its argmax pixel, as the kernels do.
  img = jnp.maximum(images, 0)[:, None, None, None]
  ch = jnp.arange(c)[None, :, None, None]
  picked = chw[img, ch, h_star, w_star]  # (K, C, PH, PW)
  nonempty = (row_hi > row_lo)[:, None, :, None] & (col_hi > col_lo)[:, None, None, :]
  fill = jnp.where(nonempty, -FLT_MAX, 0).astype(features.dtype)
  out = jnp.where(found, picked, fill)
  return from_kchw(out, lead, args.layout)


def gather_argmax(
  grad_features: jax.Array, argmax: jax.Array, rois: jax.Array, args: RoiArgs
) -> jax.Array:
  """grad_features at each output's argmax pixel (0 where argmax is -1).

  The VJP of the RoIPool backward (which is linear in its cotangent).
  """
  n = args.image_shape[0]
  h, w = spatial_of(args.image_shape, args.layout)
  images = roi_images(rois, n)
  extra = (None,) * 3
  valid = (argmax >= 0) & (images >= 0)[(...,) + extra]
  img = jnp.maximum(images, 0)[(...,) + extra]
  pixel = jnp.clip(argmax, 0, h * w - 1)
  if args.layout == "NCHW":
    g = grad_features.reshape(n, -1, h * w)
    ch = jnp.arange(g.shape[1])[:, None, None]
    vals = g[img, ch, pixel]
  else:
    g = grad_features.reshape(n, h * w, -1)
    vals = g[img, pixel, jnp.arange(g.shape[2])]
  return jnp.where(valid, vals, 0)
