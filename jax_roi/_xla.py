"""Pure-JAX implementations (``implementation="xla"``).

They follow the kernels' semantics and run on any platform: they are the
automatic fallback where no kernel is compiled (``lax.platform_dependent``)
and the baseline of the benchmarks. Gradients come from JAX autodiff.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jax_roi._args import RoiArgs
from jax_roi._ffi import acc_dtype, roi_images

# Rounded box coordinates are clamped to this magnitude before integer
# arithmetic, as in the kernels (roi_math.h kCoordLimit).
COORD_LIMIT = 2.0**40
FLT_MAX = float(np.finfo(np.float32).max)
# RoIs processed together inside lax.map: bounds the memory of the
# per-RoI (C, H, PW, W) masked reductions.
_MAP_BATCH = 8


def round_half_away(v: jax.Array) -> jax.Array:
  """Rounds halves away from zero (C's round), exactly; jnp.round does not."""
  a = jnp.abs(v)
  r = jnp.floor(a)
  r = r + (a - r >= 0.5).astype(v.dtype)
  return jnp.copysign(r, v)


def true_divide(num: jax.Array, den: int) -> jax.Array:
  """num / den, correctly rounded.

  XLA rewrites a division by a constant or broadcast divisor into a
  multiplication by its reciprocal, which is not correctly rounded and moves
  floor/ceil bin edges. The optimisation barrier hides the divisor.
  """
  d = lax.optimization_barrier(jnp.full(num.shape, den, num.dtype))
  return num / d


def pool_windows(rois: jax.Array, args: RoiArgs):
  """RoIPool bins of every RoI (flattened to K).

  Returns images (K,), row bounds (K, PH) x 2 and column bounds (K, PW) x 2,
  as int32 half-open ranges clipped to the map (empty for padding and NaN).
  """
  n = args.image_shape[0]
  h, w = _spatial(args)
  ph_count, pw_count = args.output_size
  dtype = rois.dtype
  boxes = rois[..., -4:].reshape(-1, 4)
  images = roi_images(rois, n).reshape(-1)
  scaled = boxes * jnp.asarray(args.spatial_scale, dtype)
  nan = jnp.isnan(scaled).any(axis=-1)
  empty = nan | (images < 0)
  r = jnp.clip(round_half_away(jnp.where(nan[:, None], 0, scaled)), -COORD_LIMIT,
               COORD_LIMIT)
  xs, ys, xe, ye = r[:, 0], r[:, 1], r[:, 2], r[:, 3]
  roi_w = jnp.maximum(xe - xs + 1, 1)
  roi_h = jnp.maximum(ye - ys + 1, 1)

  def bins(count, roi_size, start, size):
    bin_size = true_divide(roi_size, count)[:, None]
    p = jnp.arange(count, dtype=dtype)[None, :]
    lo = jnp.floor(p * bin_size) + start[:, None]
    hi = jnp.ceil((p + 1) * bin_size) + start[:, None]
    lo = jnp.where(empty[:, None], 0, jnp.clip(lo, 0, size)).astype(jnp.int32)
    hi = jnp.where(empty[:, None], 0, jnp.clip(hi, 0, size)).astype(jnp.int32)
    return lo, hi

  rows = bins(ph_count, roi_h, ys, h)
  cols = bins(pw_count, roi_w, xs, w)
  return images, rows, cols


def _spatial(args: RoiArgs) -> tuple[int, int]:
  s = args.image_shape
  return (s[2], s[3]) if args.layout == "NCHW" else (s[1], s[2])


def roi_pool(features: jax.Array, rois: jax.Array, args: RoiArgs) -> jax.Array:
  """RoIPool with torchvision's semantics, written with jnp."""
  rois = lax.stop_gradient(rois)
  lead = rois.shape[:-1]
  ph_count, pw_count = args.output_size
  h, w = _spatial(args)
  chw = features if args.layout == "NCHW" else jnp.moveaxis(features, 3, 1)
  c = chw.shape[1]
  images, (row_lo, row_hi), (col_lo, col_hi) = pool_windows(rois, args)
  k = images.shape[0]
  if k == 0 or c == 0 or h == 0 or w == 0:  # Every bin is empty.
    return jnp.zeros(_out_shape(lead, c, args), features.dtype)
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

  h_star, w_star, found = lax.map(one_roi, (images, row_lo, row_hi, col_lo, col_hi),
                                  batch_size=min(_MAP_BATCH, k))
  # Gather the winners from the features so that autodiff sends each output's
  # cotangent to exactly its argmax pixel, as the kernels do.
  img = jnp.maximum(images, 0)[:, None, None, None]
  ch = jnp.arange(c)[None, :, None, None]
  picked = chw[img, ch, h_star, w_star]  # (K, C, PH, PW)
  nonempty = ((row_hi > row_lo)[:, None, :, None] & (col_hi > col_lo)[:, None, None, :])
  fill = jnp.where(nonempty, -FLT_MAX, 0).astype(features.dtype)
  out = jnp.where(found, picked, fill)
  if args.layout == "NHWC":
    out = jnp.moveaxis(out, 1, 3)
  return out.reshape(_out_shape(lead, c, args))


def _out_shape(lead, c, args: RoiArgs):
  ph_count, pw_count = args.output_size
  tail = (c, ph_count, pw_count) if args.layout == "NCHW" else (ph_count, pw_count, c)
  return tuple(lead) + tail


def gather_argmax(grad_features: jax.Array, argmax: jax.Array, rois: jax.Array,
                  args: RoiArgs) -> jax.Array:
  """grad_features at each output's argmax pixel (0 where argmax is -1).

  The VJP of the RoIPool backward (which is linear in its cotangent).
  """
  n = args.image_shape[0]
  h, w = _spatial(args)
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
