"""Opt-in checks of RoIs.

The ops accept any numbers and give defined results (see the README's input
contract), so nothing inside ``jit`` ever raises on data. These helpers find
the boxes a pipeline probably did not mean to produce: ``validate_rois``
returns per-RoI flags (jit-friendly); ``check_rois`` turns them into
``jax.experimental.checkify`` errors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import checkify

from jax_roi._core import args as _args


def validate_rois(
  rois: jax.Array, num_images: int, *, box_order: str = "xyxy"
) -> dict[str, jax.Array]:
  """Flags suspicious RoIs; every flag has shape ``rois.shape[:-1]``.

  Args:
    rois: ``(K, 5)`` rows ``[batch_index, x1, y1, x2, y2]``, ``(N, R, 4)``
      boxes, or a list of ``(L_i, 4)`` arrays (one per image), as the ops
      take them; a list is flagged as its ``(K, 5)`` rows (flags of shape
      ``(K,)``, image 0's boxes first).
    num_images: N, the features' batch size.
    box_order: "xyxy" or "yxyx".

  Returns:
    A dict of boolean arrays:

    * ``"non_finite"``: a coordinate is NaN or infinite (roi_align pools
      nothing from such a box, except a 1-pixel RoI for an end at -inf
      without ``aligned``; roi_pool clamps infinities);
    * ``"inverted"``: ``x2 < x1`` or ``y2 < y1``;
    * ``"empty"``: zero width or height;
    * ``"bad_index"`` ((K, 5) only): a batch index that is NaN, not an
      integer, or ``>= num_images`` (its row is treated as padding, or as
      the truncated image for fractional values);
    * ``"padding"`` ((K, 5) only): a row marked as padding (index < 0):
      informational, not an error.
  """
  _args.choice(box_order, "box_order", _args.BOX_ORDERS)
  rois = jnp.asarray(_args.rois_from_list(rois, 4, num_images))
  if not ((rois.ndim == 2 and rois.shape[1] == 5) or (rois.ndim == 3 and rois.shape[2] == 4)):
    raise ValueError(f"rois must have shape (K, 5) or (N, R, 4), got {rois.shape}")
  box = rois[..., -4:]
  if box_order == "yxyx":
    box = box[..., jnp.array([1, 0, 3, 2])]
  x1, y1, x2, y2 = (box[..., i] for i in range(4))
  flags = {
    "non_finite": ~jnp.isfinite(box).all(axis=-1),
    "inverted": (x2 < x1) | (y2 < y1),
    "empty": (x2 == x1) | (y2 == y1),
  }
  if rois.shape[-1] == 5:
    index = rois[..., 0]
    flags["padding"] = index < 0
    flags["bad_index"] = (
      jnp.isnan(index) | ((index >= 0) & (index != jnp.floor(index))) | (index >= num_images)
    )
  return flags


def check_rois(
  rois: jax.Array, num_images: int, *, box_order: str = "xyxy", allow_empty: bool = False
) -> None:
  """``checkify`` checks of :func:`validate_rois`'s flags (padding allowed).

  Example::

    from jax.experimental import checkify

    def pooled(features, rois):
      jax_roi.check_rois(rois, features.shape[0])
      return jax_roi.roi_align(features, rois, 7)

    err, out = checkify.checkify(jax.jit(pooled))(features, rois)
    err.throw()  # checkify.JaxRuntimeError naming the first bad RoI
  """
  flags = validate_rois(rois, num_images, box_order=box_order)
  messages = {
    "non_finite": "RoI {} has a NaN or infinite coordinate",
    "inverted": "RoI {} is inverted (x2 < x1 or y2 < y1)",
    "bad_index": "RoI {} has a batch index that is NaN, fractional or >= the number of images",
    "empty": "RoI {} has zero width or height",
  }
  for name, message in messages.items():
    if name not in flags or (name == "empty" and allow_empty):
      continue
    bad = flags[name].reshape(-1)
    if "padding" in flags:
      bad = bad & ~flags["padding"].reshape(-1) if name != "bad_index" else bad
    first = jnp.argmax(bad)
    checkify.check(~bad.any(), message, first)


def validate_rotated_rois(rois: jax.Array, num_images: int) -> dict[str, jax.Array]:
  """Flags suspicious oriented RoIs (:func:`jax_roi.roi_align_rotated`'s);
  every flag has shape ``rois.shape[:-1]``.

  Args:
    rois: ``(K, 6)`` rows ``[batch_index, cx, cy, w, h, angle]``,
      ``(N, R, 5)`` boxes, or a list of ``(L_i, 5)`` arrays (one per image).
    num_images: N, the features' batch size.

  Returns:
    A dict of boolean arrays:

    * ``"non_finite"``: the centre, size or angle is NaN or infinite (the
      RoI pools nothing);
    * ``"negative_size"``: ``w < 0`` or ``h < 0`` (detectron2 rejects these;
      see roi_align_rotated for what they give);
    * ``"empty"``: zero width or height;
    * ``"bad_index"`` and ``"padding"`` ((K, 6) only): as for
      :func:`validate_rois`.
  """
  rois = jnp.asarray(_args.rois_from_list(rois, 5, num_images))
  if not ((rois.ndim == 2 and rois.shape[1] == 6) or (rois.ndim == 3 and rois.shape[2] == 5)):
    raise ValueError(f"rois must have shape (K, 6) or (N, R, 5), got {rois.shape}")
  box = rois[..., -5:]
  w, h = box[..., 2], box[..., 3]
  flags = {
    "non_finite": ~jnp.isfinite(box).all(axis=-1),
    "negative_size": (w < 0) | (h < 0),
    "empty": (w == 0) | (h == 0),
  }
  if rois.shape[-1] == 6:
    index = rois[..., 0]
    flags["padding"] = index < 0
    flags["bad_index"] = (
      jnp.isnan(index) | ((index >= 0) & (index != jnp.floor(index))) | (index >= num_images)
    )
  return flags
