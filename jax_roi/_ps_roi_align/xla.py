"""ps_roi_align written with jnp (``implementation="xla"``).

roi_align's geometry with ``aligned=True`` (its pure-JAX helpers) and its
separable form: per RoI, the bilinear weights of every bin's samples summed
along each axis, (K, PH, H) and (K, PW, W), contracted with the input
channel that each (output channel, bin) reads. Gradients (features and
boxes) come from JAX autodiff. Imports no compiled code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jax_roi._core.jnp_utils import map_rois
from jax_roi._core.layout import acc_dtype, from_kchw, pooled_shape, to_nchw
from jax_roi._ps_roi_align.config import PsRoiAlignConfig
from jax_roi._roi_align.xla import _axis_weight_matrix, align_geometry

_CHUNK = 8  # RoIs per lax.map step


def ps_roi_align(operands: tuple, rois: jax.Array, config: PsRoiAlignConfig) -> jax.Array:
  """ps_roi_align with jax_roi's semantics (0 for a bin without samples)."""
  (features,) = operands
  base = config.base
  lead = rois.shape[:-1]
  ph_count, pw_count = base.output_size
  chw = to_nchw(features, base.layout)
  n, c, h, w = chw.shape
  cout = c // (ph_count * pw_count)
  geo = align_geometry(rois, config)
  k = geo.images.shape[0]
  if k == 0 or cout == 0 or n == 0:
    return jnp.zeros(pooled_shape(lead, cout, base.output_size, base.layout), features.dtype)
  acc = acc_dtype(features.dtype)
  sr = config.sampling_ratio
  wy = _axis_weight_matrix(
    geo.start_h, geo.bin_h, geo.grid_h, h, ph_count, sr if sr > 0 else 2 * h + 3
  )
  wx = _axis_weight_matrix(
    geo.start_w, geo.bin_w, geo.grid_w, w, pw_count, sr if sr > 0 else 2 * w + 3
  )
  f6 = chw.reshape(n, cout, ph_count, pw_count, h, w)

  def chunk(xs):
    image, ay, ax, count, empty = xs
    f = f6[jnp.maximum(image, 0)].astype(acc)  # (k, C_out, PH, PW, H, W)
    s = jnp.einsum(
      "kph,kqw,kcpqhw->kcpq", ay.astype(acc), ax.astype(acc), f, precision=lax.Precision.HIGHEST
    )
    s = s / count.astype(acc)[:, None, None, None]
    return jnp.where(empty[:, None, None, None], jnp.zeros_like(s), s)

  out = map_rois(chunk, (geo.images, wy, wx, geo.count, geo.empty), _CHUNK)
  return from_kchw(out.astype(features.dtype), lead, base.layout)
