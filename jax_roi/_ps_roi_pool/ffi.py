"""ps_roi_pool through its kernels (csrc/ps_roi/): the FFI targets' specs
and the VJP wiring."""

from __future__ import annotations

import jax

from jax_roi._core import kernel
from jax_roi._core.autodiff import VjpRules, differentiable
from jax_roi._core.dispatch import Op
from jax_roi._core.layout import channels_of, pooled_shape
from jax_roi._core.spec import IMAGE, ROI, ROIS, Kernel, feature_grad_results
from jax_roi._ps_roi_pool import xla
from jax_roi._ps_roi_pool.config import PsRoiPoolConfig

FORWARD = "jax_roi_ps_roi_pool_fwd_v1"  # features, rois -> output
BACKWARD = "jax_roi_ps_roi_pool_bwd_v1"  # grad_output, rois -> grad_features


def ps_output_results(args, image_shapes, attrs):
  """The pooled output of a position-sensitive op: C / (PH * PW) channels,
  the features' (operand 0) dtype; operand 1 the rois."""
  layout = attrs["layout"]
  pooled = (int(attrs["pooled_height"]), int(attrs["pooled_width"]))
  channels = channels_of(image_shapes[0], layout) // (pooled[0] * pooled[1])
  shape = pooled_shape(args[1].shape[:-1], channels, pooled, layout)
  return (jax.ShapeDtypeStruct(shape, args[0].dtype),)


def forward(features, rois, config: PsRoiPoolConfig):
  k = Kernel(FORWARD, (IMAGE, ROIS), (ROI,), ps_output_results, config.attrs(), config.channel_bins)
  (out,) = kernel.call(k, [features.shape], features, rois)
  return out


def backward(g, rois, config: PsRoiPoolConfig):
  """(feature gradient,), in the accumulation dtype."""
  k = Kernel(
    BACKWARD, (ROI, ROIS), (IMAGE,), feature_grad_results, config.attrs(), config.channel_bins
  )
  return kernel.call(k, [config.base.image_shape], g, rois)


ps_roi_pool = differentiable(
  VjpRules(
    name="ps_roi_pool",
    forward=lambda f, r, c: forward(f[0], r, c),
    forward_saving=None,
    saves=lambda c: False,
    feature_grad=lambda g, r, saved, c: backward(g, r, c),
    # The forward is linear in the features and the backward is its
    # transpose: the backward's VJP is the forward.
    feature_grad_vjp=lambda gg, r, saved, c: forward(gg[0], r, c),
    box_grad=None,  # piecewise constant in the boxes
  )
)

# The op: this kernel where compiled, else the pure-JAX version.
OP = Op("ps_roi_pool", ps_roi_pool, xla.ps_roi_pool)
