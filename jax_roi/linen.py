"""Flax linen layers of jax_roi (``layout`` is required: "NHWC" or "NCHW").

The layers hold no parameters: they are thin dataclasses over the ops in
:mod:`jax_roi.ops`, whose docstrings give the exact semantics. Each layer's
attributes are the op's static arguments (see jax_roi._layers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax

from jax_roi import _layers, ops


def _layer(op: Callable, name: str, summary: str, example: str) -> type:
  attrs = _layers.attributes(op)
  namespace: dict[str, Any] = {
    "__module__": __name__,
    "__qualname__": name,
    "__doc__": _layers.docstring(summary, example, attrs, "Attributes"),
    "__annotations__": {a.name: a.annotation for a in attrs},
  }
  namespace.update({a.name: a.default for a in attrs if not a.required})

  def __call__(
    self: nn.Module, features: jax.Array | Sequence[jax.Array], rois: jax.Array
  ) -> jax.Array:
    """Pools ``features`` ((N, H, W, C) for NHWC, or the levels of a pyramid)
    over ``rois`` ((K, 5) rows or (N, R, 4) boxes)."""
    return _layers.call_op(op, attrs, self, features, rois)

  namespace["__call__"] = nn.compact(__call__)
  return type(name, (nn.Module,), namespace)


RoIPool = _layer(
  ops.roi_pool,
  "RoIPool",
  "RoI max pooling (Fast/Faster R-CNN): :func:`jax_roi.roi_pool`.",
  """
    >>> import jax, jax.numpy as jnp
    >>> from jax_roi import linen as roi_nn
    >>> layer = roi_nn.RoIPool(output_size=7, spatial_scale=1 / 16, layout="NHWC")
    >>> features = jnp.ones((2, 38, 50, 64))  # (N, H, W, C): NHWC
    >>> rois = jnp.array([[0, 0.0, 0.0, 320.0, 240.0], [1, 80.0, 16.0, 400.0, 600.0]])
    >>> variables = layer.init(jax.random.key(0), features, rois)
    >>> jax.tree_util.tree_leaves(variables)  # no parameters
    []
    >>> layer.apply(variables, features, rois).shape
    (2, 7, 7, 64)
    """,
)

RoIAlign = _layer(
  ops.roi_align,
  "RoIAlign",
  "RoIAlign (Mask R-CNN), avg or max mode: :func:`jax_roi.roi_align`.",
  """
    >>> import jax, jax.numpy as jnp
    >>> from jax_roi import linen as roi_nn
    >>> layer = roi_nn.RoIAlign(output_size=7, spatial_scale=1 / 4, sampling_ratio=2,
    ...                         aligned=True, layout="NHWC")
    >>> features = jnp.ones((2, 50, 68, 16))  # NHWC
    >>> boxes = jnp.array([[[8.0, 8.0, 120.0, 96.0]], [[30.0, 4.0, 60.0, 180.0]]])  # (N, R, 4)
    >>> variables = layer.init(jax.random.key(0), features, boxes)
    >>> out = layer.apply(variables, features, boxes)
    >>> out.shape
    (2, 1, 7, 7, 16)
    >>> float(out.mean())
    1.0
    """,
)

MultiScaleRoIAlign = _layer(
  ops.multi_scale_roi_align,
  "MultiScaleRoIAlign",
  "RoIAlign over FPN levels in one fused kernel: :func:`jax_roi.multi_scale_roi_align`.",
  """
    >>> import jax, jax.numpy as jnp
    >>> from jax_roi import linen as roi_nn
    >>> layer = roi_nn.MultiScaleRoIAlign(output_size=7, spatial_scales=(1 / 4, 1 / 8),
    ...                                   sampling_ratio=2, layout="NHWC")
    >>> levels = [jnp.ones((1, 64, 64, 8)), jnp.ones((1, 32, 32, 8))]  # NHWC, finest first
    >>> rois = jnp.array([[0, 10.0, 10.0, 40.0, 40.0], [0, 0.0, 0.0, 250.0, 250.0]])
    >>> variables = layer.init(jax.random.key(0), levels, rois)
    >>> layer.apply(variables, levels, rois).shape
    (2, 7, 7, 8)
    """,
)

PSRoIPool = _layer(
  ops.ps_roi_pool,
  "PSRoIPool",
  "Position-sensitive RoI average pooling (R-FCN): :func:`jax_roi.ps_roi_pool`.",
  """
    >>> import jax, jax.numpy as jnp
    >>> from jax_roi import linen as roi_nn
    >>> layer = roi_nn.PSRoIPool(output_size=7, spatial_scale=1 / 16, layout="NHWC")
    >>> features = jnp.ones((1, 38, 50, 7 * 7 * 21))  # NHWC: 7x7 bins x 21 classes
    >>> rois = jnp.array([[0, 0.0, 0.0, 320.0, 240.0], [0, 80.0, 16.0, 400.0, 600.0]])
    >>> variables = layer.init(jax.random.key(0), features, rois)
    >>> layer.apply(variables, features, rois).shape
    (2, 7, 7, 21)
    """,
)

PSRoIAlign = _layer(
  ops.ps_roi_align,
  "PSRoIAlign",
  "Position-sensitive RoIAlign: :func:`jax_roi.ps_roi_align`.",
  """
    >>> import jax, jax.numpy as jnp
    >>> from jax_roi import linen as roi_nn
    >>> layer = roi_nn.PSRoIAlign(output_size=3, spatial_scale=1 / 4, sampling_ratio=2,
    ...                           layout="NHWC")
    >>> features = jnp.ones((2, 50, 68, 3 * 3 * 4))  # NHWC: 3x3 bins x 4 channels
    >>> boxes = jnp.array([[[8.0, 8.0, 120.0, 96.0]], [[30.0, 4.0, 60.0, 180.0]]])  # (N, R, 4)
    >>> variables = layer.init(jax.random.key(0), features, boxes)
    >>> layer.apply(variables, features, boxes).shape
    (2, 1, 3, 3, 4)
    """,
)

RoIAlignRotated = _layer(
  ops.roi_align_rotated,
  "RoIAlignRotated",
  "RoIAlign over oriented boxes (detectron2's ROIAlignRotated): :func:`jax_roi.roi_align_rotated`.",
  """
    >>> import jax, jax.numpy as jnp
    >>> from jax_roi import linen as roi_nn
    >>> layer = roi_nn.RoIAlignRotated(output_size=7, spatial_scale=1 / 8, sampling_ratio=2,
    ...                                layout="NHWC")
    >>> features = jnp.ones((1, 64, 64, 16))  # NHWC
    >>> rois = jnp.array([[0, 256.0, 256.0, 120.0, 40.0, 30.0]])  # [b, cx, cy, w, h, degrees]
    >>> variables = layer.init(jax.random.key(0), features, rois)
    >>> out = layer.apply(variables, features, rois)
    >>> out.shape
    (1, 7, 7, 16)
    >>> float(out.mean())
    1.0
    """,
)

PrRoIPool = _layer(
  ops.prroi_pool,
  "PrRoIPool",
  "Precise RoI Pooling (IoU-Net's PrRoIPool): :func:`jax_roi.prroi_pool`.",
  """
    >>> import jax, jax.numpy as jnp
    >>> from jax_roi import linen as roi_nn
    >>> layer = roi_nn.PrRoIPool(output_size=7, spatial_scale=1 / 8, layout="NHWC")
    >>> features = jnp.ones((1, 64, 64, 16))  # NHWC
    >>> rois = jnp.array([[0, 16.0, 24.0, 200.0, 120.0]])  # [b, x1, y1, x2, y2]
    >>> variables = layer.init(jax.random.key(0), features, rois)
    >>> out = layer.apply(variables, features, rois)
    >>> out.shape
    (1, 7, 7, 16)
    >>> round(float(out.mean()), 5)  # the integral of a constant map, over the bins' areas
    1.0
    """,
)
