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
# grad_output, features, rois -> grad_features: the winners found again.
BACKWARD_FROM_FEATURES = "jax_roi_roi_pool_bwd_from_features_v1"


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


def backward_from_features(g, features, rois, config: RoiPoolConfig):
  """(feature gradient,) with each bin's winner found again in ``features``:
  the same bits as :func:`backward` with the forward's argmax."""
  k = Kernel(
    BACKWARD_FROM_FEATURES,
    (ROI, IMAGE, ROIS),
    (IMAGE,),
    feature_grad_results,
    (("layout", config.layout), ("spatial_scale", np.float64(config.base.spatial_scale))),
  )
  return kernel.call(k, [config.base.image_shape], g, features, rois)


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

# The CPU's: no argmax. The forward writes only the output, and the backward
# finds each bin's winner again in the features (a residual anyway), which
# stay in cache, instead of writing and reading an int32 per output: 0.5x the
# memory of a residual-saving forward for faster-rcnn's K=300, and
# fwd+bwd NHWC 30.3 -> 16.3 ms there (medians of three runs,
# benchmarks/results/cpu-2026-11-30-roi-pool). The same gradient bits. deterministic=True keeps the argmax targets (the CPU
# backward is deterministic either way).
roi_pool_from_features = differentiable(
  VjpRules(
    name="roi_pool",
    forward=lambda f, r, c: forward(f[0], r, c, with_argmax=False)[0],
    forward_saving=lambda f, r, c: (forward(f[0], r, c, with_argmax=False)[0], (f[0],)),
    saves=lambda c: True,
    feature_grad=lambda g, r, saved, c: backward_from_features(g, saved[0], r, c),
    feature_grad_vjp=lambda gg, r, saved, c: xla.gather_argmax(
      gg[0], forward(saved[0], r, c, with_argmax=True)[1], r, c.base
    ),
    box_grad=None,
  )
)


def _cpu_kernel(features, rois, config: RoiPoolConfig):
  op = roi_pool if config.deterministic else roi_pool_from_features
  return op(features, rois, config)


# The op: these kernels where compiled, else the pure-JAX version.
OP = Op("roi_pool", roi_pool, xla.roi_pool, cpu_kernel=_cpu_kernel)
