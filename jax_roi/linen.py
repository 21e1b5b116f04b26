"""Flax linen layers of jax_roi (channels-last by default, as Flax is).

The layers hold no parameters: they are thin dataclasses over the ops in
:mod:`jax_roi.ops`, whose docstrings give the exact semantics.
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence

import flax.linen as nn
import jax

from jax_roi import ops


class RoIPool(nn.Module):
  """RoI max pooling (Fast/Faster R-CNN): :func:`jax_roi.roi_pool`.

  Example usage::

    >>> import jax, jax.numpy as jnp
    >>> from jax_roi import linen as roi_nn
    >>> layer = roi_nn.RoIPool(output_size=7, spatial_scale=1 / 16)
    >>> features = jnp.ones((2, 38, 50, 64))  # (N, H, W, C): NHWC
    >>> rois = jnp.array([[0, 0.0, 0.0, 320.0, 240.0], [1, 80.0, 16.0, 400.0, 600.0]])
    >>> variables = layer.init(jax.random.key(0), features, rois)
    >>> jax.tree_util.tree_leaves(variables)  # no parameters
    []
    >>> layer.apply(variables, features, rois).shape
    (2, 7, 7, 64)

  Attributes:
    output_size: PH = PW, or (PH, PW).
    spatial_scale: feature-map pixels per input pixel (1/16 for stride 16).
    layout: "NHWC" (default, Flax's) or "NCHW".
    box_order: "xyxy" (default) or "yxyx".
    implementation: None (the kernel where compiled), "ffi" or "xla".
  """

  output_size: int | Sequence[int]
  spatial_scale: float = 1.0
  layout: Literal["NCHW", "NHWC"] = "NHWC"
  box_order: Literal["xyxy", "yxyx"] = "xyxy"
  implementation: Optional[str] = None

  @nn.compact
  def __call__(self, features: jax.Array, rois: jax.Array) -> jax.Array:
    """Pools ``features`` over ``rois`` ((K, 5) rows or (N, R, 4) boxes).

    Args:
      features: (N, H, W, C) (or (N, C, H, W) with layout="NCHW").
      rois: (K, 5) rows [batch_index, x1, y1, x2, y2] or (N, R, 4) boxes.

    Returns:
      (K, PH, PW, C) or (N, R, PH, PW, C) (channels first for NCHW).
    """
    return ops.roi_pool(features, rois, self.output_size, spatial_scale=self.spatial_scale,
                        layout=self.layout, box_order=self.box_order,
                        implementation=self.implementation)


class RoIAlign(nn.Module):
  """RoIAlign (Mask R-CNN), avg or max mode: :func:`jax_roi.roi_align`.

  Example usage::

    >>> import jax, jax.numpy as jnp
    >>> from jax_roi import linen as roi_nn
    >>> layer = roi_nn.RoIAlign(output_size=7, spatial_scale=1 / 4, sampling_ratio=2,
    ...                         aligned=True)
    >>> features = jnp.ones((2, 50, 68, 16))  # NHWC
    >>> boxes = jnp.array([[[8.0, 8.0, 120.0, 96.0]], [[30.0, 4.0, 60.0, 180.0]]])  # (N, R, 4)
    >>> variables = layer.init(jax.random.key(0), features, boxes)
    >>> out = layer.apply(variables, features, boxes)
    >>> out.shape
    (2, 1, 7, 7, 16)
    >>> float(out.mean())
    1.0

  Attributes:
    output_size: PH = PW, or (PH, PW).
    spatial_scale: feature-map pixels per input pixel.
    sampling_ratio: samples per bin axis; <= 0 means adaptive.
    aligned: half-pixel offset (detectron2's ROIAlignV2).
    mode: "avg" (default) or "max".
    layout: "NHWC" (default, Flax's) or "NCHW".
    box_order: "xyxy" (default) or "yxyx".
    implementation: None (the kernel where compiled), "ffi" or "xla".
  """

  output_size: int | Sequence[int]
  spatial_scale: float = 1.0
  sampling_ratio: int = -1
  aligned: bool = False
  mode: Literal["avg", "max"] = "avg"
  layout: Literal["NCHW", "NHWC"] = "NHWC"
  box_order: Literal["xyxy", "yxyx"] = "xyxy"
  implementation: Optional[str] = None

  @nn.compact
  def __call__(self, features: jax.Array, rois: jax.Array) -> jax.Array:
    """Aligns ``features`` over ``rois``; differentiable w.r.t. both.

    Args:
      features: (N, H, W, C) (or (N, C, H, W) with layout="NCHW").
      rois: (K, 5) rows [batch_index, x1, y1, x2, y2] or (N, R, 4) boxes.

    Returns:
      (K, PH, PW, C) or (N, R, PH, PW, C) (channels first for NCHW).
    """
    return ops.roi_align(features, rois, self.output_size, spatial_scale=self.spatial_scale,
                         sampling_ratio=self.sampling_ratio, aligned=self.aligned,
                         mode=self.mode, layout=self.layout, box_order=self.box_order,
                         implementation=self.implementation)


class MultiScaleRoIAlign(nn.Module):
  """RoIAlign over FPN levels in one fused kernel: :func:`jax_roi.multi_scale_roi_align`.

  Example usage::

    >>> import jax, jax.numpy as jnp
    >>> from jax_roi import linen as roi_nn
    >>> layer = roi_nn.MultiScaleRoIAlign(output_size=7, spatial_scales=(1 / 4, 1 / 8),
    ...                                   sampling_ratio=2)
    >>> levels = [jnp.ones((1, 64, 64, 8)), jnp.ones((1, 32, 32, 8))]  # NHWC, finest first
    >>> rois = jnp.array([[0, 10.0, 10.0, 40.0, 40.0], [0, 0.0, 0.0, 250.0, 250.0]])
    >>> variables = layer.init(jax.random.key(0), levels, rois)
    >>> layer.apply(variables, levels, rois).shape
    (2, 7, 7, 8)

  Attributes:
    output_size: PH = PW, or (PH, PW).
    spatial_scales: one scale per level, halving from level to level; None
      infers them from ``image_size`` as torchvision does.
    image_size: (H, W) of the input images, needed without spatial_scales.
    sampling_ratio: samples per bin axis; <= 0 means adaptive.
    aligned: half-pixel offset (torchvision's MultiScaleRoIAlign uses False).
    canonical_scale: the level mapping's canonical box size (224).
    canonical_level: the level of a canonical box (4).
    layout: "NHWC" (default, Flax's) or "NCHW".
    box_order: "xyxy" (default) or "yxyx".
    implementation: None (the kernel where compiled), "ffi" or "xla".
  """

  output_size: int | Sequence[int]
  spatial_scales: Optional[Sequence[float]] = None
  image_size: Optional[Sequence[int]] = None
  sampling_ratio: int = -1
  aligned: bool = False
  canonical_scale: float = 224
  canonical_level: float = 4
  layout: Literal["NCHW", "NHWC"] = "NHWC"
  box_order: Literal["xyxy", "yxyx"] = "xyxy"
  implementation: Optional[str] = None

  @nn.compact
  def __call__(self, features: Sequence[jax.Array], rois: jax.Array) -> jax.Array:
    """Pools each RoI from its FPN level.

    Args:
      features: the levels, finest first, each (N, H_l, W_l, C) (NHWC).
      rois: (K, 5) rows [batch_index, x1, y1, x2, y2] or (N, R, 4) boxes.

    Returns:
      (K, PH, PW, C) or (N, R, PH, PW, C) (channels first for NCHW).
    """
    return ops.multi_scale_roi_align(
        list(features), rois, self.output_size,
        spatial_scales=None if self.spatial_scales is None else tuple(self.spatial_scales),
        image_size=None if self.image_size is None else tuple(self.image_size),
        sampling_ratio=self.sampling_ratio, aligned=self.aligned,
        canonical_scale=self.canonical_scale, canonical_level=self.canonical_level,
        layout=self.layout, box_order=self.box_order, implementation=self.implementation)
