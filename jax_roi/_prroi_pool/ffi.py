"""Precise RoI Pooling through its kernels (csrc/prroi_pool/): the FFI
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
from jax_roi._prroi_pool import xla
from jax_roi._prroi_pool.config import PrRoiPoolConfig

FORWARD = "jax_roi_prroi_pool_fwd_v1"  # features, rois -> output
BACKWARD = "jax_roi_prroi_pool_bwd_v1"  # grad_output, rois -> grad_features
BOX_GRAD = "jax_roi_prroi_pool_box_grad_v1"  # features, rois, grad_output -> grad_rois


def forward(features, rois, config: PrRoiPoolConfig):
  k = Kernel(FORWARD, (IMAGE, ROIS), (ROI,), forward_results(0, False), config.attrs())
  (out,) = kernel.call(k, [features[0].shape], features[0], rois)
  return out


def backward(g, rois, saved, config: PrRoiPoolConfig):
  """(feature gradient,), in the accumulation dtype."""
  k = Kernel(BACKWARD, (ROI, ROIS), (IMAGE,), feature_grad_results, config.attrs())
  return kernel.call(k, [config.base.image_shape], g, rois)


def box_grad(features, rois, g, saved, config: PrRoiPoolConfig):
  """Gradient of sum(output * g) w.r.t. the rois (rois' shape)."""
  k = Kernel(BOX_GRAD, (IMAGE, ROIS, ROI), (ROIS,), like_operand(1), config.attrs())
  (grad,) = kernel.call(k, [features[0].shape], features[0], rois, g)
  return grad


def _feature_grad_vjp(gg, rois, saved, config):
  """Linear in the features, the backward its transpose: the backward's VJP
  is the forward."""
  return prroi_pool(gg, rois, config)


prroi_pool = differentiable(
  VjpRules(
    name="prroi_pool",
    forward=forward,
    forward_saving=None,
    saves=lambda c: False,
    feature_grad=backward,
    feature_grad_vjp=_feature_grad_vjp,
    box_grad=box_grad,
  )
)

# The op: this kernel where compiled, else the pure-JAX version.
OP = Op("prroi_pool", prroi_pool, xla.prroi_pool)
