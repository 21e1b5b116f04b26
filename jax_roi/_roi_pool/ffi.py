"""RoIPool through its kernels (csrc/roi_pool/): the FFI targets' specs and
the VJP wiring."""

from __future__ import annotations

import numpy as np

from jax_roi._core import kernel
from jax_roi._core.autodiff import VjpRules, differentiable
from jax_roi._core.dispatch import Op
from jax_roi._core.spec import IMAGE, NONE, ROI, ROIS, Kernel, feature_grad_results, forward_results
from jax_roi._roi_pool import xla
from jax_roi._roi_pool.config import RoiPoolConfig

FORWARD = "jax_roi_roi_pool_fwd_v1"  # features, rois -> output, argmax (or empty)
BACKWARD = "jax_roi_roi_pool_bwd_v1"  # grad_output, argmax, rois -> grad_features
# The same, the same bits on every run (CUDA: no atomics); needs spatial_scale.
BACKWARD_DETERMINISTIC = "jax_roi_roi_pool_bwd_deterministic_v1"


def forward(features, rois, config: RoiPoolConfig, with_argmax: bool):
  """(output, argmax); argmax is an empty placeholder unless asked for."""
  k = Kernel(
    FORWARD,
    (IMAGE, ROIS),
    (ROI, ROI if with_argmax else NONE),
    forward_results(1, with_argmax),
    config.attrs(),
  )
  return kernel.call(k, [features.shape], features, rois)


def backward(g, argmax, rois, config: RoiPoolConfig):
  """(feature gradient,), in the accumulation dtype."""
  if config.deterministic:
    k = Kernel(
      BACKWARD_DETERMINISTIC,
      (ROI, ROI, ROIS),
      (IMAGE,),
      feature_grad_results,
      (("layout", config.layout), ("spatial_scale", np.float64(config.base.spatial_scale))),
    )
  else:
    k = Kernel(
      BACKWARD, (ROI, ROI, ROIS), (IMAGE,), feature_grad_results, (("layout", config.layout),)
    )
  return kernel.call(k, [config.base.image_shape], g, argmax, rois)


def _forward_saving(features, rois, config):
  out, argmax = forward(features[0], rois, config, with_argmax=True)
  return out, (argmax,)


roi_pool = differentiable(
  VjpRules(
    name="roi_pool",
    # Undifferentiated calls skip the argmax output.
    forward=lambda f, r, c: forward(f[0], r, c, with_argmax=False)[0],
    forward_saving=_forward_saving,
    saves=lambda c: True,
    feature_grad=lambda g, r, saved, c: backward(g, saved[0], r, c),
    # Linear in g: its VJP gathers through the argmax.
    feature_grad_vjp=lambda gg, r, saved, c: xla.gather_argmax(gg[0], saved[0], r, c.base),
    box_grad=None,  # piecewise constant in the boxes
  )
)

# The op: this kernel where compiled, else the pure-JAX version.
OP = Op("roi_pool", roi_pool, xla.roi_pool)
