"""The vmap rule of a kernel call: the vmapped axis is folded into the
image axis (or the RoI axis) of the operands, so that ``jax.vmap`` of any op
is ONE kernel launch, never a sequential loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jax_roi._core.layout import roi_images
from jax_roi._core.spec import IMAGE, NONE, ROI, ROIS, Kernel


def _merge_leading(x: jax.Array) -> jax.Array:
  return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def fold(k: Kernel, image_shapes: tuple, size: int, batched: list[bool], args: list[jax.Array]):
  """Folds the vmapped axis (axis 0 of batched operands) into the operands.

  Returns the new operands, the new image shapes, and a function that maps
  the folded call's results back to vmapped results (with out_batched).
  """
  roles = k.arg_roles
  rois_at = roles.index(ROIS)
  # (K, F) rows with a batch index have rank 2 (3 when vmapped), per-image
  # boxes (N, R, F - 1) rank 3 (4).
  indexed = args[rois_at].ndim - int(batched[rois_at]) == 2
  n = image_shapes[0][0]
  fold_images = any(b for b, r in zip(batched, roles) if r == IMAGE) or IMAGE in k.result_roles

  def expand(x, b):
    x = jnp.asarray(x)
    return x if b else jnp.broadcast_to(x, (size,) + x.shape)

  if fold_images:
    # Every image gets its own slot: images (size * N, ...), RoIs point at
    # image v * N + n (padding stays padding).
    out_args = []
    for x, b, role in zip(args, batched, roles):
      if role == IMAGE:
        out_args.append(_merge_leading(expand(x, b)))
      elif role == NONE:
        out_args.append(x)
      elif role == ROIS and indexed:
        x = expand(x, batched[rois_at])
        images = roi_images(x, n, indexed=True)
        offset = (jnp.arange(size, dtype=jnp.int32) * n)[:, None]
        first = jnp.where(images >= 0, images + offset, -1).astype(x.dtype)
        out_args.append(_merge_leading(x.at[..., 0].set(first)))
      else:  # ROI operands, batched (N, R, 4) boxes: merge the two leading axes
        out_args.append(_merge_leading(expand(x, b)))
    new_image_shapes = tuple((size * n,) + tuple(s[1:]) for s in image_shapes)

    def unfold(outs):
      res = []
      for y, role in zip(outs, k.result_roles):
        res.append(y if role == NONE else y.reshape((size, y.shape[0] // size) + y.shape[1:]))
      return tuple(res), tuple(role != NONE for role in k.result_roles)

    return out_args, new_image_shapes, unfold

  # Only RoI-side operands are batched and no result is per image: the
  # images stay as they are and the vmapped axis joins the RoI axis.
  rois = expand(args[rois_at], batched[rois_at])
  if indexed:
    roi_lead = 2  # (size, K)
    new_rois = _merge_leading(rois)
  else:
    roi_lead = 3  # (size, N, R): switch to (size * N * R, F + 1) indexed rows
    images = jnp.broadcast_to(roi_images(rois[0], n, indexed=False), rois.shape[:-1])
    new_rois = jnp.concatenate([images[..., None].astype(rois.dtype), rois], axis=-1).reshape(
      -1, rois.shape[-1] + 1
    )
  out_args = []
  for x, b, role in zip(args, batched, roles):
    if role == ROIS:
      out_args.append(new_rois)
    elif role == ROI:
      x = expand(x, b)
      out_args.append(x.reshape((-1,) + x.shape[roi_lead:]))
    else:
      out_args.append(x)
  lead_shape = rois.shape[:roi_lead]

  def unfold_rois(outs):
    res = []
    for y, role in zip(outs, k.result_roles):
      if role == NONE:
        res.append(y)
        continue
      y = y.reshape(lead_shape + y.shape[1:])
      if role == ROIS and not indexed:
        y = y[..., 1:]  # (size, N, R, F + 1) rows back to the (size, N, R, F) boxes
      res.append(y)
    return tuple(res), tuple(role != NONE for role in k.result_roles)

  return out_args, image_shapes, unfold_rois
