"""RoI pooling operators for JAX: the public API.

Shape letters used below:

* ``N``: images, ``C``: channels, ``H, W``: feature-map height and width;
* ``K``: RoIs in the ``(K, 5)`` format, ``R``: RoIs per image in the batched
  ``(N, R, 4)`` format;
* ``PH, PW``: the pooled output size.

Every op takes the features in ``layout="NCHW"`` (torchvision's, the default)
or ``"NHWC"`` (Flax's), handled natively by the kernels (no transposes), and
the RoIs in either of two formats:

* ``(K, 5)`` rows ``[batch_index, x1, y1, x2, y2]`` (torchvision's), giving
  outputs ``(K, C, PH, PW)`` (NCHW) or ``(K, PH, PW, C)`` (NHWC). The batch
  index is truncated toward zero (1.7 means image 1). A row whose truncated
  index falls outside ``[0, N)`` (for example -1), or is NaN, is *padding*:
  its output is zero and it receives no gradient; it never reads memory.
* ``(N, R, 4)`` boxes ``[x1, y1, x2, y2]`` per image, giving outputs
  ``(N, R, C, PH, PW)`` or ``(N, R, PH, PW, C)``: the static-shape format of
  JAX pipelines (pad with any box and ignore those outputs).

``box_order="yxyx"`` reads the coordinates as ``[y1, x1, y2, x2]`` instead
(TensorFlow's and ChainerCV's order). Box coordinates are in input-image
pixels; ``spatial_scale`` maps them to feature-map pixels (a 1/16-stride
backbone has ``spatial_scale=1/16``).
"""

from __future__ import annotations

import functools
from typing import Literal, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jax_roi import _args, _ffi, _xla
from jax_roi._args import RoiArgs

Layout = Literal["NCHW", "NHWC"]
BoxOrder = Literal["xyxy", "yxyx"]
Implementation = Literal["ffi", "xla"] | None


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 5))
def _dispatch(implementation, ffi_fn, xla_fn, features, rois, args: RoiArgs):
  """Runs the kernel where one is compiled, else the pure-JAX version.

  Jitted (with the static configuration) so that eager calls compile once.
  """

  def ffi_impl(f, r):
    return ffi_fn(f, r, args)

  def xla_impl(f, r):
    return xla_fn(f, r, args)

  if implementation == "ffi":
    return ffi_impl(features, rois)
  if implementation == "xla":
    return xla_impl(features, rois)
  kernels = {"cpu": ffi_impl}
  if _ffi.WITH_CUDA:
    kernels["cuda"] = ffi_impl
  return lax.platform_dependent(features, rois, default=xla_impl, **kernels)


# ---------------------------------------------------------------------------
# RoIPool
# ---------------------------------------------------------------------------


def roi_pool(features: jax.Array,
             rois: jax.Array,
             output_size: int | Sequence[int],
             *,
             spatial_scale: float = 1.0,
             layout: Layout = "NCHW",
             box_order: BoxOrder = "xyxy",
             implementation: Implementation = None) -> jax.Array:
  """RoI max pooling (Fast/Faster R-CNN), exactly torchvision.ops.roi_pool.

  Each RoI is quantised to whole feature-map pixels and split into a
  ``PH x PW`` grid of bins; each output is the maximum of its bin:

  * start ``xs = round(x1 * s)``, end ``xe = round(x2 * s)`` (``s`` is
    spatial_scale, rounding half away from zero), and likewise for y;
  * the end pixel is included: width ``max(xe - xs + 1, 1)``, so inverted or
    zero-size boxes become 1 pixel wide; bin width ``bw = width / PW``;
  * bin ``pw`` covers columns ``[floor(pw * bw), ceil((pw + 1) * bw))`` plus
    ``xs``, clipped to ``[0, W]`` (bins may overlap by one pixel);
  * an empty bin (after clipping) outputs 0 and receives no gradient;
  * the maximum is a running strict ``>`` from ``-FLT_MAX`` in row-major
    order: ties go to the first maximum, NaN values are skipped, and a bin
    whose values are all ``<= -FLT_MAX`` outputs ``-FLT_MAX`` (``-inf`` in
    float16/bfloat16) and receives no gradient.

  Coordinates are computed in the RoIs' dtype (float32 or float64; float16
  and bfloat16 RoIs are widened to float32), as torchvision computes them in
  its common dtype: with float32 (float64) features and RoIs the outputs are
  bit-identical to torchvision's. A NaN coordinate makes the whole RoI empty
  (zeros, no gradient); rounded coordinates beyond ``2**40`` pixels are
  clamped there, so infinities are defined too.

  The gradient w.r.t. ``features`` sends each output's cotangent to its
  maximum pixel (deterministic on the CPU, atomics on CUDA); the gradient
  w.r.t. ``rois`` is zero (the op is piecewise constant in the boxes).
  Gradients of gradients are supported (the backward is linear in its
  cotangent).

  Args:
    features: ``(N, C, H, W)`` (NCHW) or ``(N, H, W, C)`` (NHWC) feature maps
      of dtype float32, float64, float16 or bfloat16 (half types are
      computed in float32 and returned in their own dtype).
    rois: ``(K, 5)`` rows ``[batch_index, x1, y1, x2, y2]`` or ``(N, R, 4)``
      boxes per image, in input-image pixels; see the module docstring.
    output_size: ``PH`` = ``PW`` as an int, or ``(PH, PW)``.
    spatial_scale: feature-map pixels per input pixel, e.g. 1/16 for a stride
      16 backbone. Static, finite and non-negative. Default: 1.0.
    layout: ``"NCHW"`` (default) or ``"NHWC"``.
    box_order: ``"xyxy"`` (default) or ``"yxyx"``.
    implementation: ``None`` (default) runs the C++/CUDA kernel on platforms
      that have one and the pure-JAX version elsewhere; ``"ffi"`` forces the
      kernel, ``"xla"`` the pure-JAX version.

  Returns:
    ``(K, C, PH, PW)``, ``(K, PH, PW, C)``, ``(N, R, C, PH, PW)`` or
    ``(N, R, PH, PW, C)`` pooled features in the features' dtype.

  Raises:
    TypeError: a non-floating features or rois dtype, a non-integer
      output_size or a non-static spatial_scale.
    ValueError: a wrong rank or trailing dimension, output_size <= 0, an
      unknown layout, box_order or implementation, or a negative or
      non-finite spatial_scale.
  """
  features, rois, args = _args.canonicalize(
      features, rois, output_size, spatial_scale=spatial_scale, layout=layout,
      box_order=box_order, implementation=implementation)
  return _dispatch(implementation, _roi_pool_ffi, _xla.roi_pool, features, rois, args)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _roi_pool_ffi(features, rois, args: RoiArgs):
  # Undifferentiated calls skip the argmax output.
  out, _ = _ffi.roi_pool_forward(
      features, rois, output_size=args.output_size, spatial_scale=args.spatial_scale,
      layout=args.layout, with_argmax=False)
  return out


def _roi_pool_ffi_fwd(features, rois, args: RoiArgs):
  out, argmax = _roi_pool_with_argmax(features, rois, args)
  return out, (argmax, rois)


def _roi_pool_ffi_bwd(args: RoiArgs, residuals, g):
  argmax, rois = residuals
  grad = _roi_pool_grad(g, argmax, rois, args)
  return grad.astype(args.dtype), jnp.zeros_like(rois)


_roi_pool_ffi.defvjp(_roi_pool_ffi_fwd, _roi_pool_ffi_bwd)


# The forward with its argmax, itself differentiable, so that the forward
# pass of a gradient can be differentiated again (gradients of gradients).
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _roi_pool_with_argmax(features, rois, args: RoiArgs):
  return _ffi.roi_pool_forward(
      features, rois, output_size=args.output_size, spatial_scale=args.spatial_scale,
      layout=args.layout, with_argmax=True)


def _roi_pool_with_argmax_fwd(features, rois, args: RoiArgs):
  out, argmax = _roi_pool_with_argmax(features, rois, args)
  return (out, argmax), (argmax, rois)


def _roi_pool_with_argmax_bwd(args: RoiArgs, residuals, cotangents):
  return _roi_pool_ffi_bwd(args, residuals, cotangents[0])


_roi_pool_with_argmax.defvjp(_roi_pool_with_argmax_fwd, _roi_pool_with_argmax_bwd)


# The backward is linear in its cotangent; its own VJP gathers through the
# argmax, which makes gradients of gradients work.
@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _roi_pool_grad(g, argmax, rois, args: RoiArgs):
  return _ffi.roi_pool_backward(g, argmax, rois, image_shape=args.image_shape,
                                layout=args.layout)


def _roi_pool_grad_fwd(g, argmax, rois, args: RoiArgs):
  return _roi_pool_grad(g, argmax, rois, args), (argmax, rois)


def _roi_pool_grad_bwd(args: RoiArgs, residuals, gg):
  argmax, rois = residuals
  return _xla.gather_argmax(gg, argmax, rois, args).astype(args.dtype), None, None


_roi_pool_grad.defvjp(_roi_pool_grad_fwd, _roi_pool_grad_bwd)
