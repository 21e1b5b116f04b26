"""Rotated RoIAlign through its kernels (csrc/roi_align_rotated/): the FFI
targets' specs and the VJP wiring."""

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
  forward_results,
  like_operand,
)
from jax_roi._roi_align_rotated import xla
from jax_roi._roi_align_rotated.config import RotatedConfig

FORWARD = "jax_roi_roi_align_rotated_fwd_v1"  # features, rois -> output
BACKWARD = "jax_roi_roi_align_rotated_bwd_v1"  # grad_output, rois -> grad_features
BOX_GRAD = "jax_roi_roi_align_rotated_box_grad_v1"  # features, rois, grad_output -> grad_rois


def forward(features, rois, config: RotatedConfig):
  k = Kernel(FORWARD, (IMAGE, ROIS), (ROI,), forward_results(0, False), config.attrs())
  (out,) = kernel.call(k, [features[0].shape], features[0], rois)
  return out


def backward(g, rois, saved, config: RotatedConfig):
  """(feature gradient,), in the accumulation dtype."""
  k = Kernel(BACKWARD, (ROI, ROIS), (IMAGE,), feature_grad_results, config.attrs())
  return kernel.call(k, [config.base.image_shape], g, rois)


def box_grad(features, rois, g, saved, config: RotatedConfig):
  """Gradient of sum(output * g) w.r.t. the rois (rois' shape)."""
  k = Kernel(BOX_GRAD, (IMAGE, ROIS, ROI), (ROIS,), like_operand(1), config.attrs())
  (grad,) = kernel.call(k, [features[0].shape], features[0], rois, g)
  return grad


roi_align_rotated = differentiable(
  VjpRules(
    name="roi_align_rotated",
    forward=forward,
    forward_saving=None,
    saves=lambda c: False,
    feature_grad=backward,
    # The feature gradient is linear in g; its VJP is the op itself.
    feature_grad_vjp=lambda gg, rois, saved, config: roi_align_rotated(gg, rois, config),  # type: ignore[has-type]
    box_grad=box_grad,
  )
)

# The op: this kernel where compiled, else the pure-JAX version.
OP = Op("roi_align_rotated", roi_align_rotated, xla.roi_align_rotated)
