"""Flax NNX layers of jax_roi: the twins of :mod:`jax_roi.linen`.

``layout`` is required (no default); no parameters and no state, so they need no
``rngs``. See :mod:`jax_roi.ops` for the exact semantics; each layer's
arguments are the op's static arguments (see jax_roi._layers).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
from flax import nnx

from jax_roi import _layers, ops


def _layer(op: Callable, name: str, summary: str, example: str) -> type:
  attrs = _layers.attributes(op)

  def __init__(self: nnx.Module, *args: Any, **kwargs: Any) -> None:
    bound = __init__.__signature__.bind(self, *args, **kwargs)  # type: ignore[attr-defined]
    bound.apply_defaults()
    for a in attrs:
      setattr(self, a.name, _layers.static(bound.arguments[a.name]))
    _layers.check_layout(self)

  first, *rest = attrs
  P = inspect.Parameter
  init_signature = __init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [
      P("self", P.POSITIONAL_ONLY),
      P(first.name, P.POSITIONAL_OR_KEYWORD, annotation=first.annotation),
    ]
    + [P(a.name, P.KEYWORD_ONLY, default=a.default, annotation=a.annotation) for a in rest]
  )

  def __call__(
    self: nnx.Module, features: jax.Array | Sequence[jax.Array], rois: jax.Array
  ) -> jax.Array:
    """Pools ``features`` over ``rois``."""
    return _layers.call_op(op, attrs, self, features, rois)

  return type(
    name,
    (nnx.Module,),
    {
      "__module__": __name__,
      "__qualname__": name,
      "__doc__": _layers.docstring(summary, example, attrs, "Args"),
      "__init__": __init__,
      "__call__": __call__,
      # The constructor's signature for inspect.signature(cls) and help()
      # (nnx.Module's metaclass defines __call__, which would hide it).
      "__signature__": init_signature.replace(
        parameters=list(init_signature.parameters.values())[1:]
      ),
    },
  )


RoIPool = _layer(
  ops.roi_pool,
  "RoIPool",
  "RoI max pooling (Fast/Faster R-CNN): :func:`jax_roi.roi_pool`.",
  """
    >>> import jax.numpy as jnp
    >>> from jax_roi import nnx as roi_nnx
    >>> layer = roi_nnx.RoIPool(7, spatial_scale=1 / 16, layout="NHWC")
    >>> features = jnp.ones((2, 38, 50, 64))  # NHWC
    >>> rois = jnp.array([[0, 0.0, 0.0, 320.0, 240.0], [1, 80.0, 16.0, 400.0, 600.0]])
    >>> layer(features, rois).shape
    (2, 7, 7, 64)
    """,
)

RoIAlign = _layer(
  ops.roi_align,
  "RoIAlign",
  "RoIAlign (Mask R-CNN), avg or max mode: :func:`jax_roi.roi_align`.",
  """
    >>> import jax.numpy as jnp
    >>> from jax_roi import nnx as roi_nnx
    >>> layer = roi_nnx.RoIAlign(7, spatial_scale=1 / 4, sampling_ratio=2, aligned=True,
    ...                          layout="NHWC")
    >>> features = jnp.ones((2, 50, 68, 16))
    >>> boxes = jnp.array([[[8.0, 8.0, 120.0, 96.0]], [[30.0, 4.0, 60.0, 180.0]]])
    >>> layer(features, boxes).shape
    (2, 1, 7, 7, 16)
    """,
)

MultiScaleRoIAlign = _layer(
  ops.multi_scale_roi_align,
  "MultiScaleRoIAlign",
  "RoIAlign over FPN levels in one fused kernel: :func:`jax_roi.multi_scale_roi_align`.",
  """
    >>> import jax.numpy as jnp
    >>> from jax_roi import nnx as roi_nnx
    >>> layer = roi_nnx.MultiScaleRoIAlign(7, spatial_scales=(1 / 4, 1 / 8), sampling_ratio=2,
    ...                                    layout="NHWC")
    >>> levels = [jnp.ones((1, 64, 64, 8)), jnp.ones((1, 32, 32, 8))]
    >>> rois = jnp.array([[0, 10.0, 10.0, 40.0, 40.0], [0, 0.0, 0.0, 250.0, 250.0]])
    >>> layer(levels, rois).shape
    (2, 7, 7, 8)
    """,
)

PSRoIPool = _layer(
  ops.ps_roi_pool,
  "PSRoIPool",
  "Position-sensitive RoI average pooling (R-FCN): :func:`jax_roi.ps_roi_pool`.",
  """
    >>> import jax.numpy as jnp
    >>> from jax_roi import nnx as roi_nnx
    >>> layer = roi_nnx.PSRoIPool(7, spatial_scale=1 / 16, layout="NHWC")
    >>> features = jnp.ones((1, 38, 50, 7 * 7 * 21))  # NHWC: 7x7 bins x 21 classes
    >>> rois = jnp.array([[0, 0.0, 0.0, 320.0, 240.0], [0, 80.0, 16.0, 400.0, 600.0]])
    >>> layer(features, rois).shape
    (2, 7, 7, 21)
    """,
)

PSRoIAlign = _layer(
  ops.ps_roi_align,
  "PSRoIAlign",
  "Position-sensitive RoIAlign: :func:`jax_roi.ps_roi_align`.",
  """
    >>> import jax.numpy as jnp
    >>> from jax_roi import nnx as roi_nnx
    >>> layer = roi_nnx.PSRoIAlign(3, spatial_scale=1 / 4, sampling_ratio=2, layout="NHWC")
    >>> features = jnp.ones((2, 50, 68, 3 * 3 * 4))  # NHWC: 3x3 bins x 4 channels
    >>> boxes = jnp.array([[[8.0, 8.0, 120.0, 96.0]], [[30.0, 4.0, 60.0, 180.0]]])  # (N, R, 4)
    >>> layer(features, boxes).shape
    (2, 1, 3, 3, 4)
    """,
)

RoIAlignRotated = _layer(
  ops.roi_align_rotated,
  "RoIAlignRotated",
  "RoIAlign over oriented boxes (detectron2's ROIAlignRotated): :func:`jax_roi.roi_align_rotated`.",
  """
    >>> import jax.numpy as jnp
    >>> from jax_roi import nnx as roi_nnx
    >>> layer = roi_nnx.RoIAlignRotated(7, spatial_scale=1 / 8, angle_unit="radians",
    ...                                 layout="NHWC")
    >>> features = jnp.ones((1, 64, 64, 16))  # NHWC
    >>> boxes = jnp.array([[[256.0, 256.0, 120.0, 40.0, 0.5]]])  # (N, R, 5)
    >>> layer(features, boxes).shape
    (1, 1, 7, 7, 16)
    """,
)

PrRoIPool = _layer(
  ops.prroi_pool,
  "PrRoIPool",
  "Precise RoI Pooling (IoU-Net's PrRoIPool): :func:`jax_roi.prroi_pool`.",
  """
    >>> import jax.numpy as jnp
    >>> from jax_roi import nnx as roi_nnx
    >>> layer = roi_nnx.PrRoIPool(7, spatial_scale=1 / 8, layout="NHWC")
    >>> features = jnp.ones((2, 64, 64, 16))  # NHWC
    >>> boxes = jnp.array([[[16.0, 24.0, 200.0, 120.0]], [[8.0, 8.0, 64.0, 480.0]]])  # (N, R, 4)
    >>> layer(features, boxes).shape
    (2, 1, 7, 7, 16)
    """,
)
