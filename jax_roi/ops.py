"""RoI pooling operators for JAX: the public API.

Shape letters used below:

* ``N``: images, ``C``: channels, ``H, W``: feature-map height and width;
* ``K``: RoIs in the ``(K, 5)`` format, ``R``: RoIs per image in the batched
  ``(N, R, 4)`` format;
* ``PH, PW``: the pooled output size.

Every op takes the features in ``layout="NCHW"`` (torchvision's, the default)
or ``"NHWC"`` (Flax's), handled natively by the kernels (no transposes), and
the RoIs in any of three formats:

* ``(K, 5)`` rows ``[batch_index, x1, y1, x2, y2]`` (torchvision's), giving
  outputs ``(K, C, PH, PW)`` (NCHW) or ``(K, PH, PW, C)`` (NHWC). The batch
  index is truncated toward zero (1.7 means image 1). A row whose truncated
  index falls outside ``[0, N)`` (for example -1), or is NaN, is *padding*:
  its output is zero and it receives no gradient; it never reads memory.
* ``(N, R, 4)`` boxes ``[x1, y1, x2, y2]`` per image, giving outputs
  ``(N, R, C, PH, PW)`` or ``(N, R, PH, PW, C)``: the static-shape format of
  JAX pipelines (pad with any box and ignore those outputs).

* a Python list (or tuple) of ``(L_i, 4)`` arrays, the boxes of image
  ``i`` (torchvision's list format, ragged or not): read as the ``(K, 5)``
  rows of image 0's boxes, then image 1's, ..., so outputs are ``(K, ...)``
  with ``K = sum(L_i)`` in that order. The lengths are static shapes, so the
  list works under ``jit`` (it is a pytree of arrays).

The positional order is torchvision's (``roi_align(input, boxes,
output_size, spatial_scale, sampling_ratio, aligned)``); jax_roi's own
options (``layout``, ``box_order``, ...) are keyword-only. See
docs/porting.md for torchvision, detectron2 and mmcv calls.

``box_order="yxyx"`` reads the coordinates as ``[y1, x1, y2, x2]`` instead
(TensorFlow's and ChainerCV's order). Box coordinates are in input-image
pixels; ``spatial_scale`` maps them to feature-map pixels (a 1/16-stride
backbone has ``spatial_scale=1/16``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import jax

from jax_roi._core import args, dispatch
from jax_roi._multi_scale import config as multi_scale_config
from jax_roi._multi_scale import ffi as multi_scale_ffi
from jax_roi._prroi_pool import ffi as prroi_pool_ffi
from jax_roi._prroi_pool.config import PrRoiPoolConfig
from jax_roi._ps_roi_align import ffi as ps_roi_align_ffi
from jax_roi._ps_roi_align.config import PsRoiAlignConfig
from jax_roi._ps_roi_pool import ffi as ps_roi_pool_ffi
from jax_roi._ps_roi_pool.config import PsRoiPoolConfig
from jax_roi._roi_align import ffi as roi_align_ffi
from jax_roi._roi_align.config import MODES, RoiAlignConfig
from jax_roi._roi_align_rotated import ffi as roi_align_rotated_ffi
from jax_roi._roi_align_rotated.config import ANGLE_UNITS, RotatedConfig
from jax_roi._roi_pool import ffi as roi_pool_ffi
from jax_roi._roi_pool.config import RoiPoolConfig

Layout = Literal["NCHW", "NHWC"]
BoxOrder = Literal["xyxy", "yxyx"]
Implementation = Literal["ffi", "xla"] | None


def roi_pool(
  features: jax.Array,
  rois: jax.Array,
  output_size: int | Sequence[int],
  spatial_scale: float = 1.0,
  *,
  layout: Layout = "NCHW",
  box_order: BoxOrder = "xyxy",
  implementation: Implementation = None,
  deterministic: bool | None = None,
) -> jax.Array:
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
  maximum pixel (deterministic on the CPU; atomics on CUDA unless
  ``deterministic``); the gradient
  w.r.t. ``rois`` is zero (the op is piecewise constant in the boxes).
  Gradients of gradients are supported (the backward is linear in its
  cotangent).

  Args:
    features: ``(N, C, H, W)`` (NCHW) or ``(N, H, W, C)`` (NHWC) feature maps
      of dtype float32, float64, float16 or bfloat16 (half types are
      computed in float32 and returned in their own dtype).
    rois: ``(K, 5)`` rows ``[batch_index, x1, y1, x2, y2]`` or ``(N, R, 4)``
      boxes per image, or a list of ``(L_i, 4)`` arrays (one per image), in
      input-image pixels; see the module docstring.
    output_size: ``PH`` = ``PW`` as an int, or ``(PH, PW)``.
    spatial_scale: feature-map pixels per input pixel, e.g. 1/16 for a stride
      16 backbone. Static, finite and non-negative. Default: 1.0.
    layout: ``"NCHW"`` (default) or ``"NHWC"``.
    box_order: ``"xyxy"`` (default) or ``"yxyx"``.
    implementation: ``None`` (default) runs the C++/CUDA kernel on platforms
      that have one and the pure-JAX version elsewhere; ``"ffi"`` forces the
      kernel, ``"xla"`` the pure-JAX version.
    deterministic: the feature gradient's kernel gives the same bits on
      every run (CUDA: each gradient element is written by one thread, in
      the CPU kernel's summation order, instead of by atomic adds; the bits
      then equal the CPU backward's). ``None`` (default): on when the
      environment's ``XLA_FLAGS`` holds ``--xla_gpu_deterministic_ops=true``,
      read when the op is traced. The CPU backward is deterministic either
      way. The pure-JAX version follows XLA's own flag.

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
  features, rois, base = args.canonicalize(
    features,
    rois,
    output_size,
    spatial_scale=spatial_scale,
    layout=layout,
    box_order=box_order,
    implementation=implementation,
  )
  config = RoiPoolConfig(base, args.deterministic_value(deterministic))
  return dispatch.run(roi_pool_ffi.OP, implementation, (features,), rois, config)


def roi_align(
  features: jax.Array,
  rois: jax.Array,
  output_size: int | Sequence[int],
  spatial_scale: float = 1.0,
  sampling_ratio: int = -1,
  aligned: bool = False,
  *,
  mode: Literal["avg", "max"] = "avg",
  layout: Layout = "NCHW",
  box_order: BoxOrder = "xyxy",
  implementation: Implementation = None,
  deterministic: bool | None = None,
) -> jax.Array:
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

  Gradients: w.r.t. ``features`` (deterministic on the CPU; on CUDA with
  ``deterministic``); w.r.t. the box
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
      boxes per image, or a list of ``(L_i, 4)`` arrays (one per image), in
      input-image pixels; see the module docstring.
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
    deterministic: as for :func:`roi_pool` (its cost on a GPU:
      docs/gpu.md).

  Returns:
    ``(K, C, PH, PW)``, ``(K, PH, PW, C)``, ``(N, R, C, PH, PW)`` or
    ``(N, R, PH, PW, C)`` in the features' dtype.

  Raises:
    TypeError, ValueError: as for :func:`roi_pool`; also a non-int
      sampling_ratio, a non-bool aligned or an unknown mode.
  """
  sampling_ratio = args.sampling_ratio_value(sampling_ratio)
  aligned = args.bool_value(aligned, "aligned")
  args.choice(mode, "mode", MODES)
  features, rois, base = args.canonicalize(
    features,
    rois,
    output_size,
    spatial_scale=spatial_scale,
    layout=layout,
    box_order=box_order,
    implementation=implementation,
  )
  config = RoiAlignConfig(
    base, sampling_ratio, aligned, mode, args.deterministic_value(deterministic)
  )
  return dispatch.run(roi_align_ffi.OP, implementation, (features,), rois, config)


def multi_scale_roi_align(
  features: Sequence[jax.Array],
  rois: jax.Array,
  output_size: int | Sequence[int],
  sampling_ratio: int = -1,
  *,
  spatial_scales: Sequence[float] | None = None,
  image_size: int | Sequence[int] | None = None,
  aligned: bool = False,
  canonical_scale: float = 224,
  canonical_level: float = 4,
  layout: Layout = "NCHW",
  box_order: BoxOrder = "xyxy",
  implementation: Implementation = None,
  deterministic: bool | None = None,
) -> jax.Array:
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
    layout, box_order, implementation, deterministic: as for :func:`roi_align`.

  Returns:
    ``(K, C, PH, PW)``, ``(K, PH, PW, C)``, ``(N, R, C, PH, PW)`` or
    ``(N, R, PH, PW, C)``.

  Gradients flow to every level's features and to the box coordinates, as
  for :func:`roi_align`.
  """
  levels, rois, config = multi_scale_config.canonicalize(
    features,
    rois,
    output_size,
    spatial_scales=spatial_scales,
    image_size=image_size,
    sampling_ratio=sampling_ratio,
    aligned=aligned,
    canonical_scale=canonical_scale,
    canonical_level=canonical_level,
    layout=layout,
    box_order=box_order,
    implementation=implementation,
    deterministic=deterministic,
  )
  return dispatch.run(multi_scale_ffi.OP, implementation, levels, rois, config)


def _check_ps_channels(features: jax.Array, base: args.RoiArgs) -> None:
  """Position-sensitive ops: C must be divisible by PH * PW."""
  ph, pw = base.output_size
  c = features.shape[1] if base.layout == "NCHW" else features.shape[3]
  if c % (ph * pw) != 0:
    raise ValueError(
      f"features must have a number of channels divisible by PH * PW = {ph * pw}"
      f" (output_size {base.output_size}), got {c}"
    )


def ps_roi_pool(
  features: jax.Array,
  rois: jax.Array,
  output_size: int | Sequence[int],
  spatial_scale: float = 1.0,
  *,
  layout: Layout = "NCHW",
  box_order: BoxOrder = "xyxy",
  implementation: Implementation = None,
) -> jax.Array:
  """Position-sensitive RoI average pooling (R-FCN), torchvision.ops.ps_roi_pool.

  The features have ``C = C_out * PH * PW`` channels; bin ``(ph, pw)`` of
  output channel ``c`` averages input channel ``(c * PH + ph) * PW + pw``
  (the same channel index in NHWC) over the bin, so the output has
  ``C_out`` channels:

  * start ``xs = round(x1 * s)``, end ``xe = round(x2 * s)`` (``s`` is
    spatial_scale, rounding half away from zero), likewise y; width
    ``max(xe - xs, 1)`` (no ``+1``, unlike :func:`roi_pool`); bin width
    ``bw = width / PW``;
  * bin ``pw`` covers columns ``[floor(pw * bw), ceil((pw + 1) * bw))`` plus
    ``xs``, each end clipped to ``[0, W - 1]`` (torchvision's forward: the
    last row and column of the map are never pooled);
  * the output is the mean over the bin, 0 for an empty bin.

  With float32 (float64) features and RoIs the CPU forward is bit-identical
  to torchvision's. A NaN coordinate makes the RoI empty (zeros).

  **Departure from torchvision:** the gradient w.r.t. ``features`` is the
  true derivative of this forward (each bin's cotangent spread evenly over
  the pixels it averages). torchvision's backward clips bins to ``[0, H]``
  instead of ``[0, H - 1]``, so it is not the derivative of its own forward
  (it differs for boxes that reach the last row or column). The gradient
  w.r.t. ``rois`` is zero (piecewise constant in the boxes). Gradients of
  gradients w.r.t. ``features`` are supported (the op is linear in them).

  Args:
    features: ``(N, C, H, W)`` (NCHW) or ``(N, H, W, C)`` (NHWC), C divisible
      by ``PH * PW``; float32, float64, float16 or bfloat16.
    rois: ``(K, 5)`` rows ``[batch_index, x1, y1, x2, y2]`` or ``(N, R, 4)``
      boxes per image, or a list of ``(L_i, 4)`` arrays (one per image), in
      input-image pixels; see the module docstring.
    output_size: ``PH`` = ``PW`` as an int, or ``(PH, PW)``.
    spatial_scale: feature-map pixels per input pixel. Static, finite,
      >= 0. Default: 1.0.
    layout, box_order, implementation: as for :func:`roi_pool`.

  Returns:
    ``(K, C_out, PH, PW)``, ``(K, PH, PW, C_out)``, ``(N, R, C_out, PH, PW)``
    or ``(N, R, PH, PW, C_out)`` in the features' dtype, ``C_out = C / (PH * PW)``.

  Raises:
    TypeError, ValueError: as for :func:`roi_pool`; also a channel count
      not divisible by ``PH * PW``.
  """
  features, rois, base = args.canonicalize(
    features,
    rois,
    output_size,
    spatial_scale=spatial_scale,
    layout=layout,
    box_order=box_order,
    implementation=implementation,
  )
  _check_ps_channels(features, base)
  return dispatch.run(ps_roi_pool_ffi.OP, implementation, (features,), rois, PsRoiPoolConfig(base))


def ps_roi_align(
  features: jax.Array,
  rois: jax.Array,
  output_size: int | Sequence[int],
  spatial_scale: float = 1.0,
  sampling_ratio: int = -1,
  *,
  layout: Layout = "NCHW",
  box_order: BoxOrder = "xyxy",
  implementation: Implementation = None,
) -> jax.Array:
  """Position-sensitive RoIAlign, torchvision.ops.ps_roi_align.

  The features have ``C = C_out * PH * PW`` channels; bin ``(ph, pw)`` of
  output channel ``c`` is :func:`roi_align`'s average (``aligned=True``) of
  input channel ``(c * PH + ph) * PW + pw`` (the same index in NHWC):

  * start ``xs = x1 * s - 0.5``, size ``x2 * s - x1 * s`` with no minimum
    (always aligned, as torchvision's); bin size ``size / PW``;
  * samples per bin axis: ``sampling_ratio`` if > 0, else ``ceil(bin size)``;
    sample positions and bilinear interpolation as :func:`roi_align`'s.

  With float32 (float64) features and RoIs the CPU forward is bit-identical
  to torchvision's wherever torchvision's is defined.

  **Departure from torchvision:** where a bin's sample count
  ``grid_h * grid_w`` is <= 0 (adaptive sampling on a box of zero width or
  height, or an inverted box), torchvision divides 0 by 0 and outputs NaN;
  jax_roi outputs 0 there (as its roi_align does for a bin without samples),
  with zero gradients.

  Gradients: w.r.t. ``features`` (deterministic on the CPU) and w.r.t. the
  box coordinates (the analytic derivative of the sample positions and
  bilinear weights, as for :func:`roi_align`; the batch-index column gets
  zero). Gradients of gradients w.r.t. ``features`` are supported; second
  derivatives through the box gradient raise ``NotImplementedError``.

  Args:
    features: ``(N, C, H, W)`` (NCHW) or ``(N, H, W, C)`` (NHWC), C divisible
      by ``PH * PW``; float32, float64, float16 or bfloat16.
    rois: ``(K, 5)`` rows ``[batch_index, x1, y1, x2, y2]`` or ``(N, R, 4)``
      boxes per image, in input-image pixels.
    output_size: ``PH`` = ``PW`` as an int, or ``(PH, PW)``.
    spatial_scale: feature-map pixels per input pixel. Default: 1.0.
    sampling_ratio: samples per bin axis; <= 0 means adaptive. Default: -1.
    layout, box_order, implementation: as for :func:`roi_pool`.

  Returns:
    As :func:`ps_roi_pool`.

  Raises:
    TypeError, ValueError: as for :func:`ps_roi_pool`; also a non-int or too
      large sampling_ratio.
  """
  sampling_ratio = args.sampling_ratio_value(sampling_ratio)
  features, rois, base = args.canonicalize(
    features,
    rois,
    output_size,
    spatial_scale=spatial_scale,
    layout=layout,
    box_order=box_order,
    implementation=implementation,
  )
  _check_ps_channels(features, base)
  return dispatch.run(
    ps_roi_align_ffi.OP, implementation, (features,), rois, PsRoiAlignConfig(base, sampling_ratio)
  )


def roi_align_rotated(
  features: jax.Array,
  rois: jax.Array,
  output_size: int | Sequence[int],
  spatial_scale: float = 1.0,
  sampling_ratio: int = -1,
  *,
  angle_unit: Literal["degrees", "radians"] = "degrees",
  clockwise: bool = False,
  aligned: bool = True,
  layout: Layout = "NCHW",
  implementation: Implementation = None,
) -> jax.Array:
  """RoIAlign over oriented boxes: detectron2's ``ROIAlignRotated`` by default.

  Each RoI is a box ``[cx, cy, w, h, angle]`` (centre, size, and the angle
  of its rotation about the centre). It is split into a ``PH x PW`` grid of
  bins in its own frame, each bin sampled on a regular sub-grid, each sample
  a bilinear interpolation of the feature map, and each output the mean of
  its bin's samples:

  * ``offset = 0.5`` if ``aligned`` else 0; centre ``cx' = cx * s - offset``,
    ``cy' = cy * s - offset`` (``s`` is spatial_scale); size ``w' = w * s``,
    ``h' = h * s``, forced to at least 1 pixel when not aligned;
  * ``t`` = the angle in radians (``angle * pi / 180`` for
    ``angle_unit="degrees"``), negated when ``clockwise``;
  * bin size ``bin_h = h' / PH``, ``bin_w = w' / PW``; samples per bin
    along each axis: ``sampling_ratio`` if > 0, else adaptive
    ``ceil(h' / PH)`` and ``ceil(w' / PW)``;
  * sample ``(iy, ix)`` of bin ``(ph, pw)`` sits in the box frame at
    ``yy = -h'/2 + ph * bin_h + (iy + 0.5) * bin_h / grid_h`` (likewise
    ``xx``), and on the map at ``y = yy * cos(t) - xx * sin(t) + cy'``,
    ``x = yy * sin(t) + xx * cos(t) + cx'``;
  * bilinear sampling with roi_align's rules (zero beyond one pixel outside
    the map, edge replication within it); the output is the sum of the
    samples divided by ``max(grid_h * grid_w, 1)``.

  With float32 (float64) features and RoIs this is detectron2's arithmetic,
  operation for operation (the angle converted to radians in double, as
  there).

  Conventions (see the README's tables): detectron2's defaults are this
  function's (degrees, counter-clockwise, ``aligned=True``); an mmcv
  ``roi_align_rotated`` call maps to ``angle_unit="radians"`` with its own
  ``clockwise`` and ``aligned``.

  Defined results for any input: a negative width or height (which
  detectron2 rejects with an assertion; ``validate_rotated_rois`` flags it)
  with ``aligned=True`` gives negative bin sizes: adaptive sampling then has
  no samples (the output is 0), a fixed ``sampling_ratio`` samples the box
  mirrored along that axis. A NaN or infinite centre, size or angle, or a
  padding row, outputs 0 and receives no gradient. Work stays bounded for
  huge boxes: only samples that can land on the map are visited.

  Gradients: w.r.t. ``features`` (deterministic on the CPU), and w.r.t. the
  five box parameters including the angle: the analytic derivative of the
  sample positions and bilinear weights (zero where the output is locally
  constant: the 1-pixel minimum size when not aligned, samples clamped to
  the edge or outside the map; the adaptive grid size is piecewise constant
  and contributes nothing); the batch-index column gets zero. Gradients of
  gradients w.r.t. ``features`` are supported by the kernels; second
  derivatives through the box gradient raise ``NotImplementedError``.

  Args:
    features: ``(N, C, H, W)`` (NCHW) or ``(N, H, W, C)`` (NHWC) feature maps
      of dtype float32, float64, float16 or bfloat16.
    rois: ``(K, 6)`` rows ``[batch_index, cx, cy, w, h, angle]`` or
      ``(N, R, 5)`` boxes ``[cx, cy, w, h, angle]`` per image, in input-image
      pixels. The batch index follows the module docstring's rules (padding
      rows included).
    output_size: ``PH`` = ``PW`` as an int, or ``(PH, PW)``.
    spatial_scale: feature-map pixels per input pixel. Static, finite, >= 0.
      Default: 1.0.
    sampling_ratio: samples per bin along each axis; <= 0 means adaptive.
      Default: -1.
    angle_unit: ``"degrees"`` (default, detectron2's) or ``"radians"``
      (mmcv's). Never guessed.
    clockwise: the angle turns clockwise (mmcv's option): it is negated.
      Default: False.
    aligned: shift the centre by -0.5 pixel (pixel centres at integer + 0.5)
      and allow boxes smaller than one pixel. Default: True (detectron2's
      and mmcv's default); False is mmcv's ``aligned=False``.
    layout: ``"NCHW"`` (default) or ``"NHWC"``.
    implementation: ``None`` (default), ``"ffi"`` or ``"xla"``, as for
      :func:`roi_pool`.

  Returns:
    ``(K, C, PH, PW)``, ``(K, PH, PW, C)``, ``(N, R, C, PH, PW)`` or
    ``(N, R, PH, PW, C)`` in the features' dtype.

  Raises:
    TypeError, ValueError: as for :func:`roi_align`; also an unknown
      angle_unit or a non-bool clockwise.
  """
  sampling_ratio = args.sampling_ratio_value(sampling_ratio)
  aligned = args.bool_value(aligned, "aligned")
  clockwise = args.bool_value(clockwise, "clockwise")
  if not isinstance(angle_unit, str):
    raise TypeError(f"angle_unit must be a string, got {angle_unit!r}")
  args.choice(angle_unit, "angle_unit", ANGLE_UNITS)
  features, rois, base = args.canonicalize(
    features,
    rois,
    output_size,
    spatial_scale=spatial_scale,
    layout=layout,
    box_order="xyxy",
    implementation=implementation,
    box_size=5,
    box_doc="[cx, cy, w, h, angle]",
  )
  config = RotatedConfig(base, sampling_ratio, aligned, angle_unit, clockwise)
  return dispatch.run(roi_align_rotated_ffi.OP, implementation, (features,), rois, config)


def prroi_pool(
  features: jax.Array,
  rois: jax.Array,
  output_size: int | Sequence[int],
  spatial_scale: float = 1.0,
  *,
  layout: Layout = "NCHW",
  box_order: BoxOrder = "xyxy",
  implementation: Implementation = None,
) -> jax.Array:
  """Precise RoI Pooling (IoU-Net's PrRoIPool, mmcv's ``prroi_pool``).

  Each output is the exact integral of the bilinearly interpolated feature
  map over its bin, divided by the bin's area: no sampling points and no
  quantization, so the output is continuous in the box coordinates and its
  box gradient is exact.

  * start ``xs = x1 * s``, end ``xe = x2 * s`` (``s`` is spatial_scale, no
    half-pixel offset), likewise y; ``roi_w = max(xe - xs, 0)``, bin width
    ``bin_w = roi_w / PW``; bin ``pw`` spans
    ``[xs + pw * bin_w, xs + pw * bin_w + bin_w]``;
  * the surface is the bilinear interpolation of the pixel grid where every
    grid point outside the map counts as 0: it fades to 0 within one pixel
    past the edge (unlike :func:`roi_align`'s edge replication) and is
    continuous everywhere;
  * each output is the integral over its bin divided by the full bin area
    ``bin_h * bin_w``; a bin of zero area (an empty, inverted or degenerate
    box) outputs 0.

  The integral is computed in closed form, pixel cell by pixel cell, with
  coordinates and weights in the RoIs' dtype and values summed in float32
  (float64 for float64 features). A padding row, or a box with a NaN or
  infinite coordinate, outputs 0 and receives no gradient; the work of a bin
  is bounded by the pixels of the map it covers, however large the box.

  Gradients: w.r.t. ``features`` (deterministic on the CPU), and w.r.t. all
  four box coordinates: the exact derivative of the integral (the bin
  edges' line integrals and the area's derivative), zero where a box has
  zero width or height; the batch-index column gets zero. Gradients of
  gradients w.r.t. ``features`` are supported (the op is linear in them);
  second derivatives through the box gradient raise ``NotImplementedError``.

  Args:
    features: ``(N, C, H, W)`` (NCHW) or ``(N, H, W, C)`` (NHWC) feature maps
      of dtype float32, float64, float16 or bfloat16 (half types are computed
      in float32 and returned in their own dtype).
    rois: ``(K, 5)`` rows ``[batch_index, x1, y1, x2, y2]`` or ``(N, R, 4)``
      boxes per image, in input-image pixels; see the module docstring.
    output_size: ``PH`` = ``PW`` as an int, or ``(PH, PW)``.
    spatial_scale: feature-map pixels per input pixel. Static, finite,
      >= 0. Default: 1.0.
    layout, box_order, implementation: as for :func:`roi_pool`.

  Returns:
    ``(K, C, PH, PW)``, ``(K, PH, PW, C)``, ``(N, R, C, PH, PW)`` or
    ``(N, R, PH, PW, C)`` in the features' dtype.

  Raises:
    TypeError, ValueError: as for :func:`roi_pool`.
  """
  features, rois, base = args.canonicalize(
    features,
    rois,
    output_size,
    spatial_scale=spatial_scale,
    layout=layout,
    box_order=box_order,
    implementation=implementation,
  )
  return dispatch.run(prroi_pool_ffi.OP, implementation, (features,), rois, PrRoiPoolConfig(base))
