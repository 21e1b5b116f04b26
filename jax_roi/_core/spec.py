"""The description of one kernel call, and result-type helpers."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple, cast

import jax
import jax.numpy as jnp

from jax_roi._core.layout import acc_dtype, channels_of, pooled_shape

# Operand and result roles, used by the batching rule and the sharding rule:
IMAGE = "image"  # leading axis: the N images (features, feature gradients)
ROI = "roi"  # leading axes: rois.shape[:-1], i.e. (K,) or (N, R)
ROIS = "rois"  # the boxes: (K, 5) or (N, R, 4)
NONE = "none"  # an unbatched operand or result (an empty placeholder)

# Computes the result types from the operands, the image shapes (the shapes
# of the feature maps, one per level, whose first entry the batching rule may
# change) and the attributes.
ResultFn = Callable[[Sequence[jax.Array], tuple, dict], Sequence[jax.ShapeDtypeStruct]]


class Kernel(NamedTuple):
  """One FFI target call: its name, the role of each operand and result,
  the result types, and the static attributes."""

  target: str
  arg_roles: tuple[str, ...]
  result_roles: tuple[str, ...]
  results: ResultFn
  # Static attributes, as (name, value) pairs of exactly typed numpy scalars
  # or strings (they must match the C++ binding's Attr<T> types); a tuple of
  # floats becomes a float64 array attribute. Must include "layout".
  attrs: tuple[tuple[str, object], ...]
  # Input channels per output channel: 1, or PH * PW for the
  # position-sensitive ops (their output channel c reads the input channels
  # [c * PH * PW, (c + 1) * PH * PW)); the sharding rule splits them alike.
  channel_bins: int = 1

  @property
  def layout(self) -> str:
    return cast(str, dict(self.attrs)["layout"])


# ---------------------------------------------------------------------------
# Result types that recur across ops (helpers for Kernel.results)
# ---------------------------------------------------------------------------


def pooled_result(rois: jax.Array, image_shapes: tuple, attrs: dict, dtype) -> jax.ShapeDtypeStruct:
  """A per-RoI output: rois.shape[:-1] + (C, PH, PW) or (PH, PW, C)."""
  layout = attrs["layout"]
  shape = pooled_shape(
    rois.shape[:-1],
    channels_of(image_shapes[0], layout),
    (int(attrs["pooled_height"]), int(attrs["pooled_width"])),
    layout,
  )
  return jax.ShapeDtypeStruct(shape, dtype)


EMPTY = jax.ShapeDtypeStruct((0,), jnp.int32)  # an empty result placeholder


@functools.cache
def forward_results(argmax_count: int, with_argmax: bool) -> ResultFn:
  """A forward's results: the pooled output in the features' dtype (operand
  0; operand 1 the rois), then `argmax_count` int32 arrays of its shape (the
  winners the backward needs), or empty placeholders when not asked for.
  Cached: equal arguments give the same function (Kernel specs compare it)."""

  def results(args, image_shapes, attrs):
    out = pooled_result(args[1], image_shapes, attrs, args[0].dtype)
    argmax = out.update(dtype=jnp.int32) if with_argmax else EMPTY
    return (out,) + (argmax,) * argmax_count

  return results


def feature_grad_results(args, image_shapes, attrs):
  """Gradients of every feature map (one per level), in the accumulation
  dtype of the cotangent, operand 0."""
  return tuple(jax.ShapeDtypeStruct(s, acc_dtype(args[0].dtype)) for s in image_shapes)


@functools.cache
def like_operand(index: int) -> ResultFn:
  """One result with the shape and dtype of operand `index` (a box gradient).
  Cached, like forward_results."""

  def results(args, image_shapes, attrs):
    return (jax.ShapeDtypeStruct(args[index].shape, args[index].dtype),)

  return results
