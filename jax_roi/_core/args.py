"""Validation and canonicalisation of the arguments every op shares.

Everything here runs at trace time, before any kernel: bad input raises a
``TypeError`` or ``ValueError`` that names the argument.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

LAYOUTS = ("NCHW", "NHWC")
BOX_ORDERS = ("xyxy", "yxyx")
IMPLEMENTATIONS = (None, "ffi", "xla")
FEATURE_DTYPES = tuple(np.dtype(d) for d in (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64))


class RoiArgs(NamedTuple):
  """The static part of a call that every op shares (hashable)."""

  output_size: tuple[int, int]
  spatial_scale: float
  layout: str
  image_shape: tuple[int, ...]  # the features' shape
  dtype: np.dtype  # the features' dtype


def _concrete(*dims) -> bool:
  """Whether dims are numbers (not jax.export symbolic dimensions, whose
  bounds the kernels check when they run)."""
  return all(isinstance(d, (int, np.integer)) for d in dims)


def _as_array(x: Any, name: str) -> jax.Array:
  if isinstance(x, (jax.Array, np.ndarray)) or hasattr(x, "__jax_array__"):
    return jnp.asarray(x)
  try:
    return jnp.asarray(x)
  except (TypeError, ValueError) as e:
    raise TypeError(f"{name} must be an array, got {type(x).__name__}") from e


def _per_image_boxes(rois: Any, box_size: int) -> list | None:
  """The arrays of torchvision's list format, or None for another value.

  A Python list or tuple whose items are all 2-D (arrays, or nested lists)
  is one ``(L_i, box_size)`` array of boxes per image, ragged or not. A list
  of number rows (``[[0, x1, y1, x2, y2], ...]``) keeps meaning one
  ``(K, 5)`` array, as before."""
  if not isinstance(rois, (list, tuple)):
    return None
  items = []
  for i, item in enumerate(rois):
    if not (hasattr(item, "shape") or isinstance(item, (list, tuple))):
      return None  # numbers: a nested-list array
    try:
      arr = jnp.asarray(item)
    except (TypeError, ValueError) as e:
      raise TypeError(f"rois[{i}] must be an array, got {type(item).__name__}") from e
    if arr.ndim != 2:
      if i == 0 and arr.ndim == 1:
        return None  # a list of rows
      raise ValueError(
        f"rois given as a list must hold one (L_i, {box_size}) array of boxes per image"
        f" (torchvision's format); rois[{i}] has shape {arr.shape}"
      )
    items.append(arr)
  return items


def rois_from_list(rois: Any, box_size: int = 4, num_images: int | None = None) -> Any:
  """torchvision's list of per-image boxes as ``(K, box_size + 1)`` rows.

  ``rois`` as a list or tuple of ``(L_i, box_size)`` arrays (one per image,
  ragged or not) becomes the rows ``[i, box...]`` of image 0's boxes, then
  image 1's, ..., so an op returns ``(K, ...)`` with ``K = sum(L_i)`` in that
  order, as torchvision's ``convert_boxes_to_roi_format`` does. The lengths
  are static shapes, so this works under ``jit`` (the list is a pytree of
  arrays). Any other value is returned unchanged (an ``(N, R, box_size)``
  array stays the batched format)."""
  items = _per_image_boxes(rois, box_size)
  if items is None:
    return rois
  if num_images is not None and len(items) > num_images:
    raise ValueError(
      f"rois given as a list holds boxes for {len(items)} images, but the features"
      f" have {num_images}"
    )
  for i, arr in enumerate(items):
    if arr.shape[1] != box_size:
      raise ValueError(
        f"rois given as a list must hold one (L_i, {box_size}) array of boxes per image"
        f" (torchvision's format); rois[{i}] has shape {arr.shape}"
      )
    if not jnp.issubdtype(arr.dtype, jnp.floating):
      raise TypeError(f"rois[{i}] must have a floating dtype, got {arr.dtype}")
  if not items:
    return jnp.zeros((0, box_size + 1), jnp.float32)
  dtype = jnp.result_type(*items)
  return jnp.concatenate(
    [
      jnp.concatenate([jnp.full((arr.shape[0], 1), i, dtype), arr.astype(dtype)], axis=1)
      for i, arr in enumerate(items)
    ],
    axis=0,
  )


def output_size_pair(output_size: Any) -> tuple[int, int]:
  """An int or a pair of ints, each >= 1."""
  if isinstance(output_size, (tuple, list)):
    if len(output_size) != 2:
      raise ValueError(f"output_size must be an int or a pair (PH, PW), got {output_size!r}")
    items = tuple(output_size)
  else:
    items = (output_size, output_size)
  pair = []
  for v in items:
    if isinstance(v, (bool, np.bool_)):
      raise TypeError(f"output_size must hold ints, got {output_size!r}")
    try:
      pair.append(operator.index(v))
    except TypeError as e:
      raise TypeError(f"output_size must be an int or a pair of ints, got {output_size!r}") from e
  if pair[0] <= 0 or pair[1] <= 0:
    raise ValueError(f"output_size must be positive, got {output_size!r}")
  if pair[0] * pair[1] >= 2**31:
    raise ValueError(f"output_size PH * PW must be below 2**31, got {output_size!r}")
  return pair[0], pair[1]


def static_float(value: Any, name: str) -> float:
  """A static (Python or numpy) real number."""
  if isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be a static Python number, got {value!r}")
  try:
    return float(value)  # A tracer raises a (TypeError) ConcretizationError.
  except (TypeError, ValueError) as e:
    raise TypeError(f"{name} must be a static Python number, got {value!r}") from e


def spatial_scale_value(spatial_scale: Any) -> float:
  s = static_float(spatial_scale, "spatial_scale")
  if not math.isfinite(s) or s < 0:
    raise ValueError(f"spatial_scale must be finite and non-negative, got {spatial_scale!r}")
  return s


def choice(value: Any, name: str, allowed: tuple) -> Any:
  if value not in allowed:
    shown = ", ".join(repr(a) for a in allowed)
    raise ValueError(f"{name} must be one of {shown}; got {value!r}")
  return value


def canonicalize(
  features: Any,
  rois: Any,
  output_size: Any,
  *,
  spatial_scale: Any,
  layout: Any,
  box_order: Any,
  implementation: Any,
  name: str = "features",
  box_size: int = 4,
  box_doc: str = "[x1, y1, x2, y2]",
):
  """Validates the arguments shared by every op.

  Returns ``(features, rois, args)`` with rois in xyxy order and in float32
  or float64, and a hashable :class:`RoiArgs`.

  ``rois`` may also be torchvision's list of per-image ``(L_i, box_size)``
  arrays (:func:`rois_from_list`): it becomes ``(K, box_size + 1)`` rows.

  ``box_size``: values per box (4: ``[x1, y1, x2, y2]``; an op with other
  boxes, e.g. rotated ``[cx, cy, w, h, angle]``, passes its own size and
  ``box_doc``, and "xyxy" as box_order): rois are ``(K, box_size + 1)`` or
  ``(N, R, box_size)``.
  """
  if not isinstance(layout, str):
    raise TypeError(f"layout must be a string, got {layout!r}")
  choice(layout, "layout", LAYOUTS)
  choice(box_order, "box_order", BOX_ORDERS)
  choice(implementation, "implementation", IMPLEMENTATIONS)
  pooled = output_size_pair(output_size)
  scale = spatial_scale_value(spatial_scale)

  features = _as_array(features, name)
  if features.dtype not in FEATURE_DTYPES:
    raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {features.dtype}")
  if features.ndim != 4:
    expected = "(N, C, H, W)" if layout == "NCHW" else "(N, H, W, C)"
    raise ValueError(
      f"{name} must have rank 4, {expected} for layout {layout!r}; got shape {features.shape}"
    )
  h, w = features.shape[2:4] if layout == "NCHW" else features.shape[1:3]
  if _concrete(h, w) and h * w >= 2**31:
    raise ValueError(f"{name} height * width must be below 2**31, got {h} * {w}")

  rois = _as_array(rois_from_list(rois, box_size, features.shape[0]), "rois")
  if not jnp.issubdtype(rois.dtype, jnp.floating):
    raise TypeError(f"rois must have a floating dtype, got {rois.dtype}")
  if rois.dtype not in (np.float32, np.float64):
    rois = rois.astype(jnp.float32)  # float16/bfloat16 widen exactly.
  if rois.ndim == 2 and rois.shape[1] == box_size + 1:
    pass
  elif rois.ndim == 3 and rois.shape[2] == box_size:
    if rois.shape[0] != features.shape[0]:
      raise ValueError(
        f"batched rois of shape {rois.shape} need one row of boxes per image:"
        f" rois.shape[0] must equal the {features.shape[0]} images of {name}"
      )
  else:
    raise ValueError(
      f"rois must have shape (K, {box_size + 1}) with rows [batch_index,"
      f" {box_doc[1:]}, or (N, R, {box_size}) with boxes per image; got shape {rois.shape}"
    )
  if box_order == "yxyx":
    perm = [0, 2, 1, 4, 3] if rois.shape[-1] == 5 else [1, 0, 3, 2]
    rois = rois[..., np.array(perm)]
  args = RoiArgs(pooled, scale, layout, tuple(features.shape), np.dtype(features.dtype))
  return features, rois, args


def int_value(value: Any, name: str) -> int:
  if isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be an int, got {value!r}")
  try:
    return operator.index(value)
  except TypeError as e:
    raise TypeError(f"{name} must be an int, got {value!r}") from e


def bool_value(value: Any, name: str) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be a bool, got {value!r}")
  return bool(value)


MAX_SAMPLING_RATIO = 1024  # csrc kMaxSamplingRatio


DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops"


def deterministic_value(value: Any) -> bool:
  """``deterministic``: a bool, or None for XLA's own switch: True when the
  environment's ``XLA_FLAGS`` sets ``--xla_gpu_deterministic_ops`` (``=true``,
  ``=1`` or bare), as jax reads it."""
  if value is None:
    on = False
    for token in os.environ.get("XLA_FLAGS", "").split():
      flag, _, setting = token.partition("=")
      if flag == DETERMINISTIC_FLAG:
        on = setting.lower() in ("", "true", "1")
    return on
  return bool_value(value, "deterministic")


def sampling_ratio_value(value: Any) -> int:
  """An int; <= 0 means adaptive; above 1024 is rejected (bounded work)."""
  sr = int_value(value, "sampling_ratio")
  if sr > MAX_SAMPLING_RATIO:
    raise ValueError(
      f"sampling_ratio must be at most {MAX_SAMPLING_RATIO} (samples per bin axis;"
      f" <= 0 for adaptive), got {sr}"
    )
  return sr


@dataclasses.dataclass(frozen=True)
class OpConfig:
  """Base of every op's configuration: the hashable static part of one
  call (a jit static argument), used by both the kernel and the pure-JAX
  paths. Ops subclass it (frozen dataclasses) with their own fields."""

  base: RoiArgs

  @property
  def layout(self) -> str:
    return self.base.layout

  @property
  def dtype(self) -> np.dtype:
    return self.base.dtype

  def with_image_shapes(self, shapes: tuple) -> OpConfig:
    """The configuration for other (e.g. per-shard) feature shapes."""
    return dataclasses.replace(self, base=self.base._replace(image_shape=tuple(shapes[0])))
