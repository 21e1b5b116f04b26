"""Flax NNX layers of jax_roi: the twins of :mod:`jax_roi.linen`.

Channels-last by default; no parameters and no state, so they need no
``rngs``. See :mod:`jax_roi.ops` for the exact semantics.
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence

import jax
from flax import nnx

from jax_roi import ops


class RoIPool(nnx.Module):
  """RoI max pooling (Fast/Faster R-CNN): :func:`jax_roi.roi_pool`.

  Example usage::

    >>> import jax.numpy as jnp
    >>> from jax_roi import nnx as roi_nnx
    >>> layer = roi_nnx.RoIPool(7, spatial_scale=1 / 16)
    >>> features = jnp.ones((2, 38, 50, 64))  # NHWC
    >>> rois = jnp.array([[0, 0.0, 0.0, 320.0, 240.0], [1, 80.0, 16.0, 400.0, 600.0]])
    >>> layer(features, rois).shape
    (2, 7, 7, 64)

  Args:
    output_size: PH = PW, or (PH, PW).
    spatial_scale: feature-map pixels per input pixel.
    layout: "NHWC" (default) or "NCHW".
    box_order: "xyxy" (default) or "yxyx".
    implementation: None (the kernel where compiled), "ffi" or "xla".
  """

  def __init__(self, output_size: int | Sequence[int], *, spatial_scale: float = 1.0,
               layout: Literal["NCHW", "NHWC"] = "NHWC",
               box_order: Literal["xyxy", "yxyx"] = "xyxy",
               implementation: Optional[str] = None):
    self.output_size = output_size
    self.spatial_scale = spatial_scale
    self.layout = layout
    self.box_order = box_order
    self.implementation = implementation

  def __call__(self, features: jax.Array, rois: jax.Array) -> jax.Array:
    return ops.roi_pool(features, rois, self.output_size, spatial_scale=self.spatial_scale,
                        layout=self.layout, box_order=self.box_order,
                        implementation=self.implementation)


class RoIAlign(nnx.Module):
  """RoIAlign (Mask R-CNN), avg or max mode: :func:`jax_roi.roi_align`.

  Example usage::

    >>> import jax.numpy as jnp
    >>> from jax_roi import nnx as roi_nnx
    >>> layer = roi_nnx.RoIAlign(7, spatial_scale=1 / 4, sampling_ratio=2, aligned=True)
    >>> features = jnp.ones((2, 50, 68, 16))
    >>> boxes = jnp.array([[[8.0, 8.0, 120.0, 96.0]], [[30.0, 4.0, 60.0, 180.0]]])
    >>> layer(features, boxes).shape
    (2, 1, 7, 7, 16)

  Args:
    output_size: PH = PW, or (PH, PW).
    spatial_scale: feature-map pixels per input pixel.
    sampling_ratio: samples per bin axis; <= 0 means adaptive.
    aligned: half-pixel offset (detectron2's ROIAlignV2).
    mode: "avg" (default) or "max".
    layout: "NHWC" (default) or "NCHW".
    box_order: "xyxy" (default) or "yxyx".
    implementation: None (the kernel where compiled), "ffi" or "xla".
  """

  def __init__(self, output_size: int | Sequence[int], *, spatial_scale: float = 1.0,
               sampling_ratio: int = -1, aligned: bool = False,
               mode: Literal["avg", "max"] = "avg",
               layout: Literal["NCHW", "NHWC"] = "NHWC",
               box_order: Literal["xyxy", "yxyx"] = "xyxy",
               implementation: Optional[str] = None):
    self.output_size = output_size
    self.spatial_scale = spatial_scale
    self.sampling_ratio = sampling_ratio
    self.aligned = aligned
    self.mode = mode
    self.layout = layout
    self.box_order = box_order
    self.implementation = implementation

  def __call__(self, features: jax.Array, rois: jax.Array) -> jax.Array:
    return ops.roi_align(features, rois, self.output_size, spatial_scale=self.spatial_scale,
                         sampling_ratio=self.sampling_ratio, aligned=self.aligned,
                         mode=self.mode, layout=self.layout, box_order=self.box_order,
                         implementation=self.implementation)


class MultiScaleRoIAlign(nnx.Module):
  """RoIAlign over FPN levels in one fused kernel: :func:`jax_roi.multi_scale_roi_align`.

  Example usage::

    >>> import jax.numpy as jnp
    >>> from jax_roi import nnx as roi_nnx
    >>> layer = roi_nnx.MultiScaleRoIAlign(7, spatial_scales=(1 / 4, 1 / 8), sampling_ratio=2)
    >>> levels = [jnp.ones((1, 64, 64, 8)), jnp.ones((1, 32, 32, 8))]
    >>> rois = jnp.array([[0, 10.0, 10.0, 40.0, 40.0], [0, 0.0, 0.0, 250.0, 250.0]])
    >>> layer(levels, rois).shape
    (2, 7, 7, 8)

  Args:
    output_size: PH = PW, or (PH, PW).
    spatial_scales: one scale per level; None infers them from image_size.
    image_size: (H, W) of the input images, needed without spatial_scales.
    sampling_ratio: samples per bin axis; <= 0 means adaptive.
    aligned: half-pixel offset.
    canonical_scale: the level mapping's canonical box size (224).
    canonical_level: the level of a canonical box (4).
    layout: "NHWC" (default) or "NCHW".
    box_order: "xyxy" (default) or "yxyx".
    implementation: None (the kernel where compiled), "ffi" or "xla".
  """

  def __init__(self, output_size: int | Sequence[int], *,
               spatial_scales: Optional[Sequence[float]] = None,
               image_size: Optional[Sequence[int]] = None, sampling_ratio: int = -1,
               aligned: bool = False, canonical_scale: float = 224,
               canonical_level: float = 4, layout: Literal["NCHW", "NHWC"] = "NHWC",
               box_order: Literal["xyxy", "yxyx"] = "xyxy",
               implementation: Optional[str] = None):
    self.output_size = output_size
    self.spatial_scales = None if spatial_scales is None else tuple(spatial_scales)
    self.image_size = None if image_size is None else tuple(image_size)
    self.sampling_ratio = sampling_ratio
    self.aligned = aligned
    self.canonical_scale = canonical_scale
    self.canonical_level = canonical_level
    self.layout = layout
    self.box_order = box_order
    self.implementation = implementation

  def __call__(self, features: Sequence[jax.Array], rois: jax.Array) -> jax.Array:
    return ops.multi_scale_roi_align(
        list(features), rois, self.output_size, spatial_scales=self.spatial_scales,
        image_size=self.image_size, sampling_ratio=self.sampling_ratio, aligned=self.aligned,
        canonical_scale=self.canonical_scale, canonical_level=self.canonical_level,
        layout=self.layout, box_order=self.box_order, implementation=self.implementation)
