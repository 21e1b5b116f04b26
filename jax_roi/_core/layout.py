"""Shapes and layouts shared by every op (imports only jax and numpy)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def spatial_of(image_shape: tuple, layout: str) -> tuple[int, int]:
  """(H, W) of a feature map's shape."""
  return (image_shape[2], image_shape[3]) if layout == "NCHW" else (image_shape[1], image_shape[2])


def channels_of(image_shape: tuple, layout: str) -> int:
  return image_shape[1] if layout == "NCHW" else image_shape[3]


def pooled_shape(
  lead: tuple, channels: int, pooled: tuple[int, int], layout: str
) -> tuple[int, ...]:
  """Shape of a per-RoI output: lead (rois.shape[:-1]) + (C, PH, PW) or
  (PH, PW, C)."""
  ph, pw = pooled
  tail = (channels, ph, pw) if layout == "NCHW" else (ph, pw, channels)
  return tuple(lead) + tail


def acc_dtype(dtype) -> np.dtype:
  """Accumulation dtype of a features dtype (gradients are returned in it)."""
  return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def to_nchw(features: jax.Array, layout: str) -> jax.Array:
  """Features (N, C, H, W) whatever the layout."""
  return features if layout == "NCHW" else jnp.moveaxis(features, 3, 1)


def from_kchw(out: jax.Array, lead: tuple, layout: str) -> jax.Array:
  """A (K, C, PH, PW) result -> the layout's order with leading dims `lead`."""
  if layout == "NHWC":
    out = jnp.moveaxis(out, 1, 3)
  return out.reshape(tuple(lead) + out.shape[1:])


def to_kchw(out: jax.Array, lead: tuple, layout: str) -> jax.Array:
  """The inverse of from_kchw: a per-RoI array in the layout's order with
  leading dims `lead` -> (K, C, PH, PW)."""
  out = out.reshape((-1,) + out.shape[len(lead) :])
  return out if layout == "NCHW" else jnp.moveaxis(out, 3, 1)


def roi_images(rois: jax.Array, batch: int, indexed: bool | None = None) -> jax.Array:
  """Image index of every RoI, -1 for padding rows; shape rois.shape[:-1].

  For (K, 5) rows: the first column truncated toward zero (torchvision's int
  cast); a truncation outside [0, batch), or NaN, marks padding. For batched
  (N, R, 4) boxes: the row's image. ``indexed``: whether the rows carry a
  batch index (default: rows of 5 values do; ops with other boxes say).
  """
  if indexed is None:
    indexed = rois.shape[-1] == 5
  if indexed:
    v = rois[..., 0]
    valid = (v > -1) & (v < batch) & (batch > 0)
    return jnp.where(valid, jnp.trunc(jnp.where(valid, v, 0)), -1).astype(jnp.int32)
  n, r = rois.shape[:2]
  return jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[:, None], (n, r))
