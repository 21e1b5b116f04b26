"""Builds the Flax layers (jax_roi.linen, jax_roi.nnx) from the ops.

A layer is the op with its static arguments (every parameter after
``features`` and ``rois``) held as attributes. ``layout`` has no default in
the layers: NCHW features given to a channels-last layer (or the reverse)
would pool the wrong axes without any error, so every layer states its
layout (:func:`check_layout`). The attributes, their defaults and their documentation come from
the op's signature and :data:`ATTRIBUTE_DOCS`, so a new op gets its layers
from one registration line in each of linen.py and nnx.py.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

# One line of documentation per op argument that layers hold.
ATTRIBUTE_DOCS = {
  "output_size": "PH = PW, or (PH, PW).",
  "spatial_scale": "feature-map pixels per input pixel (1/16 for stride 16).",
  "spatial_scales": (
    "one scale per level, halving from level to level; None infers them"
    " from ``image_size`` as torchvision does."
  ),
  "image_size": "(H, W) of the input images, needed without spatial_scales.",
  "sampling_ratio": "samples per bin axis; <= 0 means adaptive.",
  "aligned": "half-pixel offset (detectron2's ROIAlignV2).",
  "mode": '"avg" (default) or "max".',
  "canonical_scale": "the level mapping's canonical box size (224).",
  "canonical_level": "the level of a canonical box (4).",
  "layout": (
    'required: "NHWC" (features (N, H, W, C), Flax\'s convention) or "NCHW"'
    " ((N, C, H, W), torchvision's)."
  ),
  "box_order": '"xyxy" (default) or "yxyx".',
  "implementation": 'None (the kernel where compiled), "ffi" or "xla".',
  "deterministic": (
    "the same feature-gradient bits on every run (the CUDA backward without"
    " atomics); None: on when XLA_FLAGS sets --xla_gpu_deterministic_ops."
  ),
}
ATTRIBUTE_DOCS.update(
  {  # roi_align_rotated
    "angle_unit": '"degrees" (default, detectron2\'s) or "radians" (mmcv\'s).',
    "clockwise": "the angle turns clockwise (mmcv's option): it is negated.",
  }
)

REQUIRED = None  # the layers' layout "default": none, it must be given


class Attribute:
  def __init__(self, name: str, annotation: Any, default: Any):
    self.name, self.annotation, self.default = name, annotation, default

  @property
  def required(self) -> bool:
    return self.default is inspect.Parameter.empty


def attributes(op: Callable) -> list[Attribute]:
  """The op's static parameters (all but features and rois); layout without
  a default (None stands for "not given")."""
  params = list(inspect.signature(op).parameters.values())[2:]
  return [
    Attribute(p.name, p.annotation, REQUIRED if p.name == "layout" else p.default) for p in params
  ]


def check_layout(layer) -> None:
  """Raises unless the layer was given its layout explicitly."""
  if getattr(layer, "layout", REQUIRED) is REQUIRED:
    name = type(layer).__name__
    raise TypeError(
      f'{name} needs layout="NHWC" (features (N, H, W, C), Flax\'s convention) or'
      f' layout="NCHW" ((N, C, H, W), torchvision\'s): the layers have no default'
      f" layout, since features in the other layout would be pooled over the wrong"
      f" axes without any error (jax_roi 0.1 layers assumed NHWC:"
      f' add layout="NHWC" to keep that behaviour)'
    )


def static(value):
  """Sequences given as lists or 1-D numpy arrays (e.g. from a config file)
  become tuples: static and hashable, as the ops take them."""
  if isinstance(value, list) or (isinstance(value, np.ndarray) and value.ndim == 1):
    return tuple(value)
  return value


def call_op(op: Callable, attrs: list[Attribute], layer, features, rois):
  """op(features, rois, output_size, **the layer's other attributes).
  Feature maps given as another iterable than a list or tuple (the levels
  of a pyramid) are passed as a list."""
  check_layout(layer)
  if not (hasattr(features, "shape") or isinstance(features, (list, tuple))):
    features = list(features)
  first, *rest = attrs
  return op(
    features,
    rois,
    static(getattr(layer, first.name)),
    **{a.name: static(getattr(layer, a.name)) for a in rest},
  )


def docstring(summary: str, example: str, attrs: list[Attribute], section: str) -> str:
  lines = [summary, "", "Example usage::", ""]
  lines += ["  " + line if line else "" for line in inspect.cleandoc(example).splitlines()]
  lines += ["", f"{section}:"]
  lines += [f"  {a.name}: {ATTRIBUTE_DOCS[a.name]}" for a in attrs]
  return "\n".join(lines) + "\n"
