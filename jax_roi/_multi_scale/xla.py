"""Multi-scale RoIAlign written with jnp: roi_align's pure-JAX version per
level, each RoI keeping its own level's output. Imports no compiled code."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jax_roi._multi_scale.config import MultiScaleConfig
from jax_roi._roi_align.xla import roi_align


def roi_levels(rois: jax.Array, config: MultiScaleConfig) -> jax.Array:
  """torchvision's LevelMapper (csrc roi_level): level per RoI, (K,)."""
  boxes = rois[..., -4:].reshape(-1, 4)
  dtype = rois.dtype
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  target = jnp.floor(
    jnp.asarray(config.canonical_level, dtype)
    + jnp.log2(jnp.sqrt(area) / jnp.asarray(config.canonical_scale, dtype))
    + jnp.asarray(1e-6, dtype)
  )
  lo, hi = float(config.k_min), float(config.k_max)
  level = jnp.where(target > lo, jnp.minimum(target, hi), lo) - lo  # NaN -> level 0
  return jnp.clip(level, 0, len(config.spatial_scales) - 1).astype(jnp.int32)


def multi_scale_roi_align(features: tuple, rois: jax.Array, config: MultiScaleConfig) -> jax.Array:
  """Per-level roi_align (pure JAX), each RoI keeping its own level's output."""
  levels = roi_levels(lax.stop_gradient(rois), config)
  lead = rois.shape[:-1]
  out: jax.Array | None = None
  for l, f in enumerate(features):
    o = roi_align((f,), rois, config.level(l))
    mine = (levels == l).reshape(lead + (1,) * (o.ndim - len(lead)))
    o = jnp.where(mine, o, jnp.zeros_like(o))
    out = o if out is None else out + o
  assert out is not None  # config validation: at least one level
  return out
