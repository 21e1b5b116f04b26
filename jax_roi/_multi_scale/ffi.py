"""Multi-scale RoIAlign through its kernels (one fused call per pass over
every level, csrc/multi_scale_roi_align/): the FFI targets' specs and the VJP
wiring."""

from __future__ import annotations

from jax_roi._core import kernel
from jax_roi._core.autodiff import VjpRules, differentiable
from jax_roi._core.dispatch import Op
from jax_roi._core.spec import (
  IMAGE,
  ROI,
  ROIS,
  Kernel,
  feature_grad_results,
  like_operand,
  pooled_result,
)
from jax_roi._multi_scale import xla
from jax_roi._multi_scale.config import MultiScaleConfig

FORWARD = "jax_roi_multi_scale_roi_align_fwd_v1"  # rois, *features -> output
BACKWARD = "jax_roi_multi_scale_roi_align_bwd_v1"  # grad_output, rois -> *grad_features
# The same, the same bits on every run (CUDA: no atomics).
BACKWARD_DETERMINISTIC = "jax_roi_multi_scale_roi_align_bwd_deterministic_v1"
BOX_GRAD = "jax_roi_multi_scale_roi_align_box_grad_v1"  # rois, grad_output, *features -> grad_rois


def _forward_results(args, image_shapes, attrs):
  rois, first = args[0], args[1]
  return (pooled_result(rois, image_shapes, attrs, first.dtype),)


def forward(features: tuple, rois, config: MultiScaleConfig):
  k = Kernel(FORWARD, (ROIS,) + (IMAGE,) * len(features), (ROI,), _forward_results, config.attrs())
  (out,) = kernel.call(k, [f.shape for f in features], rois, *features)
  return out


def backward(g, rois, saved, config: MultiScaleConfig):
  """Feature gradients (accumulation dtype), one per level."""
  k = Kernel(
    BACKWARD_DETERMINISTIC if config.deterministic else BACKWARD,
    (ROI, ROIS),
    (IMAGE,) * len(config.image_shapes),
    feature_grad_results,
    config.attrs(),
  )
  return kernel.call(k, config.image_shapes, g, rois)


def box_grad(features: tuple, rois, g, saved, config: MultiScaleConfig):
  k = Kernel(
    BOX_GRAD, (ROIS, ROI) + (IMAGE,) * len(features), (ROIS,), like_operand(0), config.attrs()
  )
  (grad,) = kernel.call(k, [f.shape for f in features], rois, g, *features)
  return grad


multi_scale_roi_align = differentiable(
  VjpRules(
    name="multi_scale_roi_align",
    forward=forward,
    forward_saving=None,
    saves=lambda c: False,
    feature_grad=backward,
    # Linear in g: its VJP is the op applied to the incoming cotangents.
    feature_grad_vjp=lambda gg, r, saved, c: multi_scale_roi_align(gg, r, c),  # type: ignore[has-type]
    box_grad=box_grad,
  )
)

# The op: this kernel where compiled, else the pure-JAX version.
OP = Op("multi_scale_roi_align", multi_scale_roi_align, xla.multi_scale_roi_align)
