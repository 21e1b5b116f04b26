"""Multi-scale RoIAlign's static configuration and its canonicalisation."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from jax_roi._core import args
from jax_roi._core.args import OpConfig
from jax_roi._core.layout import channels_of
from jax_roi._roi_align.config import RoiAlignConfig


@dataclasses.dataclass(frozen=True)
class MultiScaleConfig(OpConfig):
  """Everything static of a multi_scale_roi_align call; ``base`` describes
  level 0."""

  spatial_scales: tuple[float, ...]
  sampling_ratio: int
  aligned: bool
  canonical_scale: float
  canonical_level: float
  k_min: int
  k_max: int
  image_shapes: tuple[tuple[int, ...], ...]
  deterministic: bool = False  # the backward's kernel

  def with_image_shapes(self, shapes: tuple) -> MultiScaleConfig:
    shapes = tuple(tuple(s) for s in shapes)
    return dataclasses.replace(
      self, base=self.base._replace(image_shape=shapes[0]), image_shapes=shapes
    )

  def level(self, l: int) -> RoiAlignConfig:
    """roi_align's configuration (avg mode) for level l."""
    base = self.base._replace(
      spatial_scale=self.spatial_scales[l], image_shape=self.image_shapes[l]
    )
    return RoiAlignConfig(base, self.sampling_ratio, self.aligned, "avg", self.deterministic)

  def attrs(self) -> tuple[tuple[str, object], ...]:
    """The FFI attributes of every multi_scale_roi_align target."""
    return (
      ("spatial_scales", tuple(float(v) for v in self.spatial_scales)),
      ("pooled_height", np.int64(self.base.output_size[0])),
      ("pooled_width", np.int64(self.base.output_size[1])),
      ("sampling_ratio", np.int64(self.sampling_ratio)),
      ("aligned", bool(self.aligned)),
      ("layout", self.base.layout),
      ("canonical_scale", np.float64(self.canonical_scale)),
      ("canonical_level", np.float64(self.canonical_level)),
      ("k_min", np.int64(self.k_min)),
      ("k_max", np.int64(self.k_max)),
    )


MAX_LEVELS = 8


def pyramid_scales(features, spatial_scales: Any, image_size: Any, layout: str):
  """The per-level spatial scales: given, or inferred as torchvision's
  MultiScaleRoIAlign does (2 ** round(log2(feature size / image size)))."""
  if spatial_scales is not None:
    if isinstance(spatial_scales, (str, bytes)) or not hasattr(spatial_scales, "__len__"):
      raise TypeError(f"spatial_scales must be a sequence of numbers, got {spatial_scales!r}")
    scales = tuple(args.spatial_scale_value(s) for s in spatial_scales)
    if len(scales) != len(features):
      raise ValueError(
        f"spatial_scales needs one scale per level: {len(features)} levels, got"
        f" {len(scales)} scales"
      )
    if any(s <= 0 for s in scales):
      raise ValueError(f"spatial_scales must be positive, got {spatial_scales!r}")
    return scales
  if image_size is None:
    raise ValueError(
      "multi_scale_roi_align needs spatial_scales, or image_size (H, W) of the input"
      " images to infer them as torchvision does"
    )
  img_h, img_w = args.output_size_pair(image_size)
  inferred: list[float] = []
  for level, f in enumerate(features):
    h, w = (f.shape[2], f.shape[3]) if layout == "NCHW" else (f.shape[1], f.shape[2])
    if h == 0 or w == 0:
      raise ValueError(f"features[{level}] has an empty spatial size {(h, w)}")
    sh = 2.0 ** round(math.log2(h / img_h))
    sw = 2.0 ** round(math.log2(w / img_w))
    if sh != sw:
      raise ValueError(
        f"cannot infer the scale of features[{level}]: {(h, w)} vs image {(img_h, img_w)}"
        f" gives {sh} along H and {sw} along W; pass spatial_scales"
      )
    inferred.append(sh)
  return tuple(inferred)


def level_range(scales) -> tuple[int, int]:
  """torchvision's k_min, k_max: int(-log2(scale)) of the first and last
  levels, computed in float32; the levels must be consecutive."""
  levels = [int(-np.log2(np.float32(s))) for s in scales]
  k_min, k_max = levels[0], levels[-1]
  if levels != list(range(k_min, k_min + len(scales))):
    raise ValueError(
      f"spatial_scales {tuple(scales)} must halve from level to level (one level per"
      f" power of two): levels {k_min}..{k_max} for {len(scales)} feature maps"
    )
  return k_min, k_max


def canonicalize(
  features,
  rois,
  output_size,
  *,
  spatial_scales,
  image_size,
  sampling_ratio,
  aligned,
  canonical_scale,
  canonical_level,
  layout,
  box_order,
  implementation,
  deterministic=False,
):
  """Validates multi_scale_roi_align's arguments; returns (levels, rois,
  config) with rois in xyxy order and float32/float64."""
  if not isinstance(features, (list, tuple)):
    raise TypeError("features must be a list or tuple of feature maps (FPN levels)")
  if not 1 <= len(features) <= MAX_LEVELS:
    raise ValueError(f"features must hold 1 to {MAX_LEVELS} levels, got {len(features)}")
  sampling_ratio = args.sampling_ratio_value(sampling_ratio)
  aligned = args.bool_value(aligned, "aligned")
  canonical_scale = args.static_float(canonical_scale, "canonical_scale")
  canonical_level = args.static_float(canonical_level, "canonical_level")
  if not (math.isfinite(canonical_scale) and canonical_scale > 0):
    raise ValueError(f"canonical_scale must be positive and finite, got {canonical_scale}")
  if not math.isfinite(canonical_level):
    raise ValueError(f"canonical_level must be finite, got {canonical_level}")
  levels = []
  base = rois_c = None
  for l, f in enumerate(features):
    f, r, b = args.canonicalize(
      f,
      rois,
      output_size,
      spatial_scale=1.0,
      layout=layout,
      box_order=box_order,
      implementation=implementation,
      name=f"features[{l}]",
    )
    if l == 0:
      base, rois_c = b, r
    elif (
      f.dtype != base.dtype
      or f.shape[0] != base.image_shape[0]
      or channels_of(f.shape, layout) != channels_of(base.image_shape, layout)
    ):
      raise ValueError(
        f"features[{l}] must have the dtype, batch size and channels of features[0]:"
        f" {f.dtype}{f.shape} vs {base.dtype}{base.image_shape}"
      )
    levels.append(f)
  scales = pyramid_scales(levels, spatial_scales, image_size, layout)
  k_min, k_max = level_range(scales)
  config = MultiScaleConfig(
    base,
    scales,
    sampling_ratio,
    aligned,
    canonical_scale,
    canonical_level,
    k_min,
    k_max,
    tuple(tuple(f.shape) for f in levels),
    args.deterministic_value(deterministic),
  )
  return tuple(levels), rois_c, config
