"""ps_roi_align through its kernels (csrc/ps_roi/): the FFI targets' specs
and the VJP wiring."""

from __future__ import annotations

from jax_roi._core import kernel
from jax_roi._core.autodiff import VjpRules, differentiable
from jax_roi._core.dispatch import Op
from jax_roi._core.spec import IMAGE, ROI, ROIS, Kernel, feature_grad_results, like_operand
from jax_roi._ps_roi_align import xla
from jax_roi._ps_roi_align.config import PsRoiAlignConfig
from jax_roi._ps_roi_pool.ffi import ps_output_results

FORWARD = "jax_roi_ps_roi_align_fwd_v1"  # features, rois -> output
BACKWARD = "jax_roi_ps_roi_align_bwd_v1"  # grad_output, rois -> grad_features
BOX_GRAD = "jax_roi_ps_roi_align_box_grad_v1"  # features, rois, grad_output -> grad_rois


def forward(features, rois, config: PsRoiAlignConfig):
  k = Kernel(FORWARD, (IMAGE, ROIS), (ROI,), ps_output_results, config.attrs(), config.channel_bins)
  (out,) = kernel.call(k, [features.shape], features, rois)
  return out


def backward(g, rois, config: PsRoiAlignConfig):
  """(feature gradient,), in the accumulation dtype."""
  k = Kernel(
    BACKWARD, (ROI, ROIS), (IMAGE,), feature_grad_results, config.attrs(), config.channel_bins
  )
  return kernel.call(k, [config.base.image_shape], g, rois)


def box_grad(features, rois, g, saved, config: PsRoiAlignConfig):
  """Gradient of sum(output * g) w.r.t. the rois (rois' shape)."""
  k = Kernel(
    BOX_GRAD, (IMAGE, ROIS, ROI), (ROIS,), like_operand(1), config.attrs(), config.channel_bins
  )
  (grad,) = kernel.call(k, [features[0].shape], features[0], rois, g)
  return grad


ps_roi_align = differentiable(
  VjpRules(
    name="ps_roi_align",
    forward=lambda f, r, c: forward(f[0], r, c),
    forward_saving=None,
    saves=lambda c: False,
    feature_grad=lambda g, r, saved, c: backward(g, r, c),
    # Linear in the features, the backward its transpose: the backward's VJP
    # is the forward.
    feature_grad_vjp=lambda gg, r, saved, c: forward(gg[0], r, c),
    box_grad=box_grad,
  )
)

# The op: this kernel where compiled, else the pure-JAX version.
OP = Op("ps_roi_align", ps_roi_align, xla.ps_roi_align)
