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
import math
from typing import Literal, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jax.custom_derivatives import SymbolicZero

from jax_roi import _args, _ffi, _xla
from jax_roi._args import RoiArgs
from jax_roi._ffi import AlignOptions, MultiScaleOptions

Layout = Literal["NCHW", "NHWC"]
BoxOrder = Literal["xyxy", "yxyx"]
Implementation = Literal["ffi", "xla"] | None


def _select(implementation, ffi_impl, xla_impl, features, rois):
  """The kernel where one is compiled (per platform), else pure JAX."""
  if implementation == "ffi":
    return ffi_impl(features, rois)
  if implementation == "xla":
    return xla_impl(features, rois)
  kernels = {"cpu": ffi_impl}
  if _ffi.WITH_CUDA:
    kernels["cuda"] = ffi_impl
  return lax.platform_dependent(features, rois, default=xla_impl, **kernels)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 5))
def _dispatch(implementation, ffi_fn, xla_fn, features, rois, args):
  """Runs one op (jitted with its static configuration, so that eager calls
  compile once); shard by shard under an explicit-axes mesh."""

  def run(f, r, args):
    return _select(implementation, lambda f, r: ffi_fn(f, r, args),
                   lambda f, r: xla_fn(f, r, args), f, r)

  plan = _explicit_plan([features], rois, _layout(args))
  if plan is None:
    return run(features, rois, args)
  mesh, (f_spec,), r_spec, out_spec, local = plan
  local_args = _with_image_shapes(args, local)
  return jax.shard_map(lambda f, r: run(f, r, local_args), mesh=mesh,
                       in_specs=(f_spec, r_spec), out_specs=out_spec)(
                           jax.reshard(features, f_spec), jax.reshard(rois, r_spec))


def _layout(args):
  return getattr(args, "base", args).layout


def _with_image_shapes(args, shapes):
  """The static configuration with per-shard feature shapes."""
  if isinstance(args, RoiArgs):
    return args._replace(image_shape=shapes[0])
  if isinstance(args, MultiScaleArgs):
    return args._replace(base=args.base._replace(image_shape=shapes[0]),
                         image_shapes=tuple(shapes))
  return args._replace(base=args.base._replace(image_shape=shapes[0]))


def _explicit_plan(features, rois, layout):
  """Under a mesh with Explicit axes (jax.make_mesh / jax.set_mesh), the
  shard_map that runs an op shard by shard: the batch axis of features and
  (N, R, 4) boxes, the RoI axis of the boxes and the channel axis of the
  features are kept split; spatial axes, box coordinates and the image axis
  of (K, 5) RoIs (which name images by value) are replicated first. Returns
  None when no operand is sharded over explicit axes."""
  from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

  shardings = [getattr(jax.typeof(x), "sharding", None) for x in (*features, rois)]
  mesh = next((s.mesh for s in shardings if isinstance(s, NamedSharding)
               and any(t == AxisType.Explicit for t in getattr(s.mesh, "axis_types", ()))
               and any(e is not None for e in s.spec)), None)
  if mesh is None:
    return None
  spec = lambda s, rank: _ffi._spec_of(s, rank)
  f_spec = spec(shardings[0], 4)
  r_spec = spec(shardings[-1], rois.ndim)
  c_dim = 1 if layout == "NCHW" else 3
  used = set()

  def take(entry):
    axes = set(_ffi._axes(entry))
    if not axes or axes & used:
      return None
    used.update(axes)
    return entry

  indexed = rois.ndim == 2
  n = None if indexed else take(f_spec[0])
  k = take(r_spec[0]) if indexed else take(r_spec[1])
  c = take(f_spec[c_dim])
  feat = [n, c, None, None] if layout == "NCHW" else [n, None, None, c]
  pooled = [c, None, None] if layout == "NCHW" else [None, None, c]
  r_out = P(k, None) if indexed else P(n, k, None)
  out = P(*([k] + pooled)) if indexed else P(*([n, k] + pooled))
  local = tuple(_ffi._local_shape(f.shape, feat, mesh) for f in features)
  return mesh, tuple(P(*feat) for _ in features), r_out, out, local


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


# ---------------------------------------------------------------------------
# RoIAlign
# ---------------------------------------------------------------------------


class AlignArgs(NamedTuple):
  """Static configuration of a roi_align call (hashable)."""

  base: RoiArgs
  sampling_ratio: int
  aligned: bool
  mode: str

  @property
  def options(self) -> AlignOptions:
    b = self.base
    return AlignOptions(b.output_size, b.spatial_scale, self.sampling_ratio, self.aligned,
                        self.mode, b.layout)


def roi_align(features: jax.Array,
              rois: jax.Array,
              output_size: int | Sequence[int],
              *,
              spatial_scale: float = 1.0,
              sampling_ratio: int = -1,
              aligned: bool = False,
              mode: Literal["avg", "max"] = "avg",
              layout: Layout = "NCHW",
              box_order: BoxOrder = "xyxy",
              implementation: Implementation = None) -> jax.Array:
  """RoIAlign (Mask R-CNN); ``mode="avg"`` is exactly torchvision.ops.roi_align.

  Each RoI is split into a ``PH x PW`` grid of bins without any rounding;
  each bin is sampled on a regular sub-grid of points, each sample is a
  bilinear interpolation of the feature map, and the bin's output is the
  mean (``mode="avg"``) or the maximum (``mode="max"``) of its samples:

  * ``offset = 0.5`` if ``aligned`` else 0; start ``xs = x1 * s - offset``,
    end ``xe = x2 * s - offset`` (``s`` is spatial_scale), likewise y; size
    ``roi_w = xe - xs``, forced to at least 1 pixel when not aligned (an
    aligned inverted box samples in reverse, a zero-size one is one point);
  * bin size ``bin_w = roi_w / PW``; samples per bin along x:
    ``sampling_ratio`` if > 0, else adaptive ``ceil(roi_w / PW)``;
  * sample ``ix`` of bin ``pw`` sits at
    ``x = xs + pw * bin_w + (ix + 0.5) * bin_w / grid_w`` (likewise y);
  * a sample beyond one pixel outside the map (``y < -1``, ``y > H``, ...,
    or NaN) is zero; within one pixel outside it replicates the edge;
    otherwise it interpolates its four neighbours bilinearly;
  * avg: the sum of the samples divided by ``max(grid_h * grid_w, 1)``
    (a bin without samples outputs 0);
  * max: the largest sample, scanning row by row with a strict ``>`` from
    ``-FLT_MAX`` (ties: first sample; NaN never wins; samples outside the
    map count as zeros, as in mmcv); a bin without samples outputs 0. Its
    gradient flows to the four neighbours of the winning sample, weighted
    by its bilinear weights.

  With float32 (float64) features and RoIs the CPU forward of the avg mode is
  bit-identical to torchvision's.

  Gradients: w.r.t. ``features`` (deterministic on the CPU); w.r.t. the box
  coordinates, the analytic derivative of the sample positions and bilinear
  weights (zero where the output is locally constant: the 1-pixel minimum
  size when not aligned, samples clamped to the edge or outside the map;
  the adaptive grid size is piecewise constant and contributes nothing); the
  batch-index column gets zero. Gradients of gradients w.r.t. ``features``
  are supported; second derivatives through the box gradient raise
  ``NotImplementedError``.

  Args:
    features: ``(N, C, H, W)`` (NCHW) or ``(N, H, W, C)`` (NHWC) feature maps
      of dtype float32, float64, float16 or bfloat16 (half types are computed
      in float32 and returned in their own dtype).
    rois: ``(K, 5)`` rows ``[batch_index, x1, y1, x2, y2]`` or ``(N, R, 4)``
      boxes per image, in input-image pixels; see the module docstring.
    output_size: ``PH`` = ``PW`` as an int, or ``(PH, PW)``.
    spatial_scale: feature-map pixels per input pixel. For a 224-pixel image
      and a 14x14 feature map, 14 / 224 = 0.0625: the box [0, 0, 224, 224]
      then covers the whole map. Static, finite, >= 0. Default: 1.0.
    sampling_ratio: samples per bin along each axis; <= 0 means adaptive,
      ``ceil(roi_size / output_size)``. Default: -1.
    aligned: shift the box by -0.5 pixel so that pixel centres sit at
      integer + 0.5 coordinates (detectron2's ROIAlignV2), and allow boxes
      smaller than one pixel. Default: False (torchvision's default).
    mode: ``"avg"`` (default) or ``"max"``.
    layout: ``"NCHW"`` (default) or ``"NHWC"``.
    box_order: ``"xyxy"`` (default) or ``"yxyx"``.
    implementation: ``None`` (default), ``"ffi"`` or ``"xla"``, as for
      :func:`roi_pool`.

  Returns:
    ``(K, C, PH, PW)``, ``(K, PH, PW, C)``, ``(N, R, C, PH, PW)`` or
    ``(N, R, PH, PW, C)`` in the features' dtype.

  Raises:
    TypeError, ValueError: as for :func:`roi_pool`; also a non-int
      sampling_ratio, a non-bool aligned or an unknown mode.
  """
  sampling_ratio = _args.sampling_ratio_value(sampling_ratio)
  aligned = _args.bool_value(aligned, "aligned")
  _args.choice(mode, "mode", _args.MODES)
  features, rois, base = _args.canonicalize(
      features, rois, output_size, spatial_scale=spatial_scale, layout=layout,
      box_order=box_order, implementation=implementation)
  args = AlignArgs(base, sampling_ratio, aligned, mode)
  return _dispatch(implementation, _roi_align_ffi, _xla.roi_align, features, rois, args)


def _zeros_if_symbolic(x):
  return jnp.zeros(x.shape, x.dtype) if isinstance(x, SymbolicZero) else x


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _roi_align_ffi(features, rois, args: AlignArgs):
  out, _, _ = _ffi.roi_align_forward(features, rois, args.options, with_argmax=False)
  return out


# Residuals record, in their (static) tree structure, which cotangents the
# backward must produce: the box gradient costs a pass over the features, and
# is skipped (and the features not kept) when the boxes are not
# differentiated.
def _roi_align_ffi_fwd(features, rois, args: AlignArgs):
  f, r = features.value, rois.value
  if args.mode == "max":
    out, argmax_y, argmax_x = _roi_align_max(f, r, args)
  else:
    out = _roi_align_ffi(f, r, args)
    argmax_y = argmax_x = _ffi.empty_argmax()
  need_features = () if features.perturbed else None
  box_inputs = (f, ()) if rois.perturbed else None
  return out, (r, argmax_y, argmax_x, need_features, box_inputs)


def _roi_align_ffi_bwd(args: AlignArgs, residuals, g):
  rois, argmax_y, argmax_x, need_features, box_inputs = residuals
  g = _zeros_if_symbolic(g)
  grad_features = grad_rois = None
  if need_features is not None:
    grad_features = _roi_align_grad(g, rois, argmax_y, argmax_x, args).astype(args.base.dtype)
  if box_inputs is not None:
    grad_rois = _roi_align_box_grad(box_inputs[0], rois, g, argmax_y, argmax_x, args)
  return grad_features, grad_rois


_roi_align_ffi.defvjp(_roi_align_ffi_fwd, _roi_align_ffi_bwd, symbolic_zeros=True)


# Max mode: the forward with its argmax pair, differentiable so that the
# forward pass of a gradient can be differentiated again.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _roi_align_max(features, rois, args: AlignArgs):
  return _ffi.roi_align_forward(features, rois, args.options, with_argmax=True)


def _roi_align_max_fwd(features, rois, args: AlignArgs):
  out, argmax_y, argmax_x = _roi_align_max(features.value, rois.value, args)
  need_features = () if features.perturbed else None
  box_inputs = (features.value, ()) if rois.perturbed else None
  return (out, argmax_y, argmax_x), (rois.value, argmax_y, argmax_x, need_features,
                                     box_inputs)


def _roi_align_max_bwd(args: AlignArgs, residuals, cotangents):
  return _roi_align_ffi_bwd(args, residuals, cotangents[0])


_roi_align_max.defvjp(_roi_align_max_fwd, _roi_align_max_bwd, symbolic_zeros=True)


# The feature gradient is linear in its cotangent g; its VJP is the forward
# op applied to the incoming cotangent (avg), or the bilinear value of that
# cotangent at each winning sample (max).
@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _roi_align_grad(g, rois, argmax_y, argmax_x, args: AlignArgs):
  return _ffi.roi_align_backward(g, rois, argmax_y, argmax_x,
                                 image_shape=args.base.image_shape, options=args.options)


def _roi_align_grad_fwd(g, rois, argmax_y, argmax_x, args: AlignArgs):
  return _roi_align_grad(g, rois, argmax_y, argmax_x, args), (rois, argmax_y, argmax_x)


def _roi_align_grad_bwd(args: AlignArgs, residuals, gg):
  rois, argmax_y, argmax_x = residuals
  gg = gg.astype(args.base.dtype)
  if args.mode == "avg":
    ct = _roi_align_ffi(gg, rois, args)
  else:
    ct = _xla.align_at_winners(gg, rois, argmax_y, argmax_x, args)
  return ct.astype(args.base.dtype), None, None, None


_roi_align_grad.defvjp(_roi_align_grad_fwd, _roi_align_grad_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _roi_align_box_grad(features, rois, g, argmax_y, argmax_x, args: AlignArgs):
  return _ffi.roi_align_box_grad(features, rois, g, argmax_y, argmax_x, args.options)


def _roi_align_box_grad_fwd(features, rois, g, argmax_y, argmax_x, args: AlignArgs):
  out = _roi_align_box_grad(features.value, rois.value, g.value, argmax_y.value,
                            argmax_x.value, args)
  return out, (features.value, rois.value, g.value)


def _roi_align_box_grad_bwd(args: AlignArgs, residuals, ct):
  if not isinstance(ct, SymbolicZero):
    raise NotImplementedError(
        "roi_align: second derivatives through the box gradient are not implemented"
        " (gradients of gradients w.r.t. the features are)")
  features, rois, g = residuals
  return (jnp.zeros_like(features), jnp.zeros_like(rois), jnp.zeros_like(g), None, None)


_roi_align_box_grad.defvjp(_roi_align_box_grad_fwd, _roi_align_box_grad_bwd,
                           symbolic_zeros=True)


# ---------------------------------------------------------------------------
# Multi-scale (FPN) RoIAlign
# ---------------------------------------------------------------------------


class MultiScaleArgs(NamedTuple):
  """Static configuration of a multi_scale_roi_align call (hashable)."""

  base: RoiArgs  # of level 0
  options: MultiScaleOptions
  image_shapes: tuple[tuple[int, ...], ...]


def multi_scale_roi_align(features: Sequence[jax.Array],
                          rois: jax.Array,
                          output_size: int | Sequence[int],
                          *,
                          spatial_scales: Sequence[float] | None = None,
                          image_size: int | Sequence[int] | None = None,
                          sampling_ratio: int = -1,
                          aligned: bool = False,
                          canonical_scale: float = 224,
                          canonical_level: float = 4,
                          layout: Layout = "NCHW",
                          box_order: BoxOrder = "xyxy",
                          implementation: Implementation = None) -> jax.Array:
  """RoIAlign over FPN levels, each RoI pooled from its level, in one kernel.

  The level of a box follows torchvision's ``MultiScaleRoIAlign`` (the
  ``LevelMapper`` of the FPN paper): with ``area = (x2 - x1) * (y2 - y1)`` in
  input pixels (computed in the boxes' dtype),
  ``k = floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6)``,
  clamped to ``[k_min, k_max]`` with ``k_min = int(-log2(spatial_scales[0]))``
  and ``k_max = int(-log2(spatial_scales[-1]))``; the RoI is then pooled by
  :func:`roi_align` (avg mode) from level ``k - k_min`` at that level's scale.
  A box with a NaN area (inverted, or a NaN coordinate) goes to level 0.

  Unlike torchvision, which loops over levels with data-dependent gathers,
  this is ONE kernel per pass (forward, backward) that reads each RoI's level
  on the device: static shapes, no host synchronisation, jit-friendly. And
  ``aligned`` is an option (torchvision hard-codes False).

  Args:
    features: the FPN levels, finest first: a sequence of 1 to 8 arrays
      ``(N, C, H_l, W_l)`` (NCHW) or ``(N, H_l, W_l, C)`` (NHWC) with the
      same N, C and dtype.
    rois: ``(K, 5)`` rows ``[batch_index, x1, y1, x2, y2]`` or ``(N, R, 4)``
      boxes, in input-image pixels (padding rows as for roi_align).
    output_size: ``PH`` = ``PW``, or ``(PH, PW)``.
    spatial_scales: one scale per level (e.g. ``(1/4, 1/8, 1/16, 1/32)``),
      halving from level to level. Default: inferred from ``image_size`` as
      torchvision does: ``2 ** round(log2(H_l / H))``.
    image_size: ``(H, W)`` of the input images (the largest, as torchvision
      takes), needed when ``spatial_scales`` is None.
    sampling_ratio, aligned: as for :func:`roi_align`.
    canonical_scale, canonical_level: the level mapping's 224 and 4.
    layout, box_order, implementation: as for :func:`roi_align`.

  Returns:
    ``(K, C, PH, PW)``, ``(K, PH, PW, C)``, ``(N, R, C, PH, PW)`` or
    ``(N, R, PH, PW, C)``.

  Gradients flow to every level's features and to the box coordinates, as
  for :func:`roi_align`.
  """
  if isinstance(features, jax.Array) or not isinstance(features, (list, tuple)):
    raise TypeError("features must be a list or tuple of feature maps (FPN levels)")
  if not 1 <= len(features) <= _args.MAX_LEVELS:
    raise ValueError(f"features must hold 1 to {_args.MAX_LEVELS} levels, got {len(features)}")
  sampling_ratio = _args.sampling_ratio_value(sampling_ratio)
  aligned = _args.bool_value(aligned, "aligned")
  canonical_scale = _args.static_float(canonical_scale, "canonical_scale")
  canonical_level = _args.static_float(canonical_level, "canonical_level")
  if not (math.isfinite(canonical_scale) and canonical_scale > 0):
    raise ValueError(f"canonical_scale must be positive and finite, got {canonical_scale}")
  if not math.isfinite(canonical_level):
    raise ValueError(f"canonical_level must be finite, got {canonical_level}")
  levels = []
  base = rois_c = None
  for l, f in enumerate(features):
    f, r, b = _args.canonicalize(f, rois, output_size, spatial_scale=1.0, layout=layout,
                                 box_order=box_order, implementation=implementation,
                                 name=f"features[{l}]")
    if l == 0:
      base, rois_c = b, r
    elif (f.dtype != base.dtype or f.shape[0] != base.image_shape[0]
          or _ffi.channels_of(f.shape, layout) != _ffi.channels_of(base.image_shape, layout)):
      raise ValueError(
          f"features[{l}] must have the dtype, batch size and channels of features[0]:"
          f" {f.dtype}{f.shape} vs {base.dtype}{base.image_shape}")
    levels.append(f)
  scales = _args.pyramid_scales(levels, spatial_scales, image_size, layout)
  k_min, k_max = _args.level_range(scales)
  options = MultiScaleOptions(base.output_size, scales, sampling_ratio, aligned, layout,
                              canonical_scale, canonical_level, k_min, k_max)
  args = MultiScaleArgs(base, options, tuple(tuple(f.shape) for f in levels))
  return _dispatch_levels(implementation, args, tuple(levels), rois_c)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _dispatch_levels(implementation, args: MultiScaleArgs, features, rois):
  def run(features, rois, args):
    return _select(implementation, lambda f, r: _multi_ffi(tuple(f), r, args),
                   lambda f, r: _xla.multi_scale_roi_align(tuple(f), r, args),
                   features, rois)

  plan = _explicit_plan(features, rois, args.base.layout)
  if plan is None:
    return run(features, rois, args)
  mesh, f_specs, r_spec, out_spec, local = plan
  local_args = _with_image_shapes(args, local)
  return jax.shard_map(lambda f, r: run(f, r, local_args), mesh=mesh,
                       in_specs=(f_specs, r_spec), out_specs=out_spec)(
                           tuple(jax.reshard(f, s) for f, s in zip(features, f_specs)),
                           jax.reshard(rois, r_spec))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _multi_ffi(features, rois, args: MultiScaleArgs):
  return _ffi.multi_scale_forward(features, rois, args.options)


def _multi_ffi_fwd(features, rois, args: MultiScaleArgs):
  values = tuple(f.value for f in features)
  out = _multi_ffi(values, rois.value, args)
  need_features = () if any(f.perturbed for f in features) else None
  box_inputs = values if rois.perturbed else None
  return out, (rois.value, need_features, box_inputs)


def _multi_ffi_bwd(args: MultiScaleArgs, residuals, g):
  rois, need_features, box_inputs = residuals
  g = _zeros_if_symbolic(g)
  grad_features = (None,) * len(args.image_shapes)
  grad_rois = None
  if need_features is not None:
    grad_features = tuple(x.astype(args.base.dtype) for x in _multi_grad(g, rois, args))
  if box_inputs is not None:
    grad_rois = _multi_box_grad(box_inputs, rois, g, args)
  return grad_features, grad_rois


_multi_ffi.defvjp(_multi_ffi_fwd, _multi_ffi_bwd, symbolic_zeros=True)


# Linear in g; its VJP is the forward applied to the incoming cotangents.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _multi_grad(g, rois, args: MultiScaleArgs):
  return tuple(_ffi.multi_scale_backward(g, rois, image_shapes=args.image_shapes,
                                         options=args.options))


def _multi_grad_fwd(g, rois, args: MultiScaleArgs):
  return _multi_grad(g, rois, args), rois


def _multi_grad_bwd(args: MultiScaleArgs, rois, gg):
  ct = _multi_ffi(tuple(x.astype(args.base.dtype) for x in gg), rois, args)
  return ct.astype(args.base.dtype), None


_multi_grad.defvjp(_multi_grad_fwd, _multi_grad_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _multi_box_grad(features, rois, g, args: MultiScaleArgs):
  return _ffi.multi_scale_box_grad(features, rois, g, args.options)


def _multi_box_grad_fwd(features, rois, g, args: MultiScaleArgs):
  values = tuple(f.value for f in features)
  return _multi_box_grad(values, rois.value, g.value, args), (values, rois.value, g.value)


def _multi_box_grad_bwd(args: MultiScaleArgs, residuals, ct):
  if not isinstance(ct, SymbolicZero):
    raise NotImplementedError(
        "multi_scale_roi_align: second derivatives through the box gradient are not"
        " implemented (gradients of gradients w.r.t. the features are)")
  features, rois, g = residuals
  return (tuple(jnp.zeros_like(f) for f in features), jnp.zeros_like(rois), jnp.zeros_like(g))


_multi_box_grad.defvjp(_multi_box_grad_fwd, _multi_box_grad_bwd, symbolic_zeros=True)
