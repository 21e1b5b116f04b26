"""RoIAlign through its kernels (csrc/roi_align/): the FFI targets' specs
and the VJP wiring."""

from __future__ import annotations

from jax_roi._core import kernel
from jax_roi._core.autodiff import VjpRules, differentiable
from jax_roi._core.dispatch import Op
from jax_roi._core.spec import (
  IMAGE,
  NONE,
  ROI,
  ROIS,
  Kernel,
  feature_grad_results,
  forward_results,
  like_operand,
)
from jax_roi._roi_align import xla
from jax_roi._roi_align.config import RoiAlignConfig

FORWARD = "jax_roi_roi_align_fwd_v1"  # features, rois -> output, argmax_y, argmax_x
BACKWARD = "jax_roi_roi_align_bwd_v1"  # grad_output, rois, argmax_y, argmax_x -> grad_features
# The same, the same bits on every run (CUDA: no atomics).
BACKWARD_DETERMINISTIC = "jax_roi_roi_align_bwd_deterministic_v1"
BOX_GRAD = (
  "jax_roi_roi_align_box_grad_v1"  # features, rois, grad_output, argmax_y, argmax_x -> grad_rois
)


def _argmax_roles(config: RoiAlignConfig):
  return (ROI, ROI) if config.mode == "max" else (NONE, NONE)


def forward(features, rois, config: RoiAlignConfig, with_argmax: bool):
  """(output, argmax_y, argmax_x); the argmax pair (max mode) is an empty
  placeholder unless asked for."""
  with_argmax = with_argmax and config.mode == "max"
  roles = (ROI, ROI) if with_argmax else (NONE, NONE)
  k = Kernel(
    FORWARD, (IMAGE, ROIS), (ROI,) + roles, forward_results(2, with_argmax), config.attrs()
  )
  return kernel.call(k, [features.shape], features, rois)


def _argmax_pair(saved):
  """The saved argmax pair, or empty placeholders (avg mode)."""
  return saved if saved else (kernel.empty_operand(), kernel.empty_operand())


def backward(g, rois, saved, config: RoiAlignConfig):
  """(feature gradient,), in the accumulation dtype."""
  k = Kernel(
    BACKWARD_DETERMINISTIC if config.deterministic else BACKWARD,
    (ROI, ROIS) + _argmax_roles(config),
    (IMAGE,),
    feature_grad_results,
    config.attrs(),
  )
  return kernel.call(k, [config.base.image_shape], g, rois, *_argmax_pair(saved))


def box_grad(features, rois, g, saved, config: RoiAlignConfig):
  """Gradient of sum(output * g) w.r.t. the rois (rois' shape)."""
  k = Kernel(
    BOX_GRAD, (IMAGE, ROIS, ROI) + _argmax_roles(config), (ROIS,), like_operand(1), config.attrs()
  )
  (grad,) = kernel.call(k, [features[0].shape], features[0], rois, g, *_argmax_pair(saved))
  return grad


def _forward_saving(features, rois, config):
  out, argmax_y, argmax_x = forward(features[0], rois, config, with_argmax=True)
  return out, (argmax_y, argmax_x)


def _feature_grad_vjp(gg, rois, saved, config):
  """The feature gradient is linear in g; its VJP is the op itself (avg), or
  the bilinear value of the cotangent at each winning sample (max)."""
  if config.mode == "avg":
    return roi_align(gg, rois, config)
  return xla.align_at_winners(gg[0], rois, *saved, config)


roi_align = differentiable(
  VjpRules(
    name="roi_align",
    forward=lambda f, r, c: forward(f[0], r, c, with_argmax=False)[0],
    forward_saving=_forward_saving,
    saves=lambda c: c.mode == "max",  # the winners
    feature_grad=backward,
    feature_grad_vjp=_feature_grad_vjp,
    box_grad=box_grad,
  )
)

# The op: this kernel where compiled, else the pure-JAX version.
OP = Op("roi_align", roi_align, xla.roi_align)
