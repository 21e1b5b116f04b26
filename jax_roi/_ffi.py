"""The compiled kernels: target registration and the only ``ffi_call`` sites.

Every kernel call goes through :func:`kernel`, which wraps ``jax.ffi.ffi_call``
in a ``jax.custom_batching.custom_vmap`` whose rule folds a vmapped axis into
the image axis (or the RoI axis) of the operands, so that ``jax.vmap`` of any
op is ONE kernel launch, never a sequential loop.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax_roi import _jax_roi as _ext

WITH_CUDA: bool = bool(_ext.with_cuda)


def _runtime_ffi_api_version() -> tuple[int, int] | None:
  """The XLA FFI API version of the running jaxlib (from its headers)."""
  path = os.path.join(jax.ffi.include_dir(), "xla", "ffi", "api", "c_api.h")
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  major = re.search(r"#define XLA_FFI_API_MAJOR (\d+)", text)
  minor = re.search(r"#define XLA_FFI_API_MINOR (\d+)", text)
  if not (major and minor):
    return None
  return int(major.group(1)), int(minor.group(1))


def _register() -> None:
  built = tuple(_ext.ffi_api_version)
  running = _runtime_ffi_api_version()
  if running is not None and built > running:
    # Registering would fail inside backend initialisation and take every
    # jax computation down with it: refuse early, with the fix.
    raise ImportError(
        f"jax_roi was compiled against XLA FFI API {built[0]}.{built[1]}, newer"
        f" than the running jaxlib {jax.__version__} (API"
        f" {running[0]}.{running[1]}). Rebuild it in this environment:"
        " pip install --no-build-isolation --force-reinstall .")
  for name, capsule in _ext.cpu_targets().items():
    jax.ffi.register_ffi_target(name, capsule, platform="cpu")
  for name, capsule in _ext.cuda_targets().items():
    jax.ffi.register_ffi_target(name, capsule, platform="CUDA")


_register()


def target_names() -> tuple[str, ...]:
  """The XLA FFI custom-call targets this build registers."""
  return tuple(sorted(_ext.cpu_targets()))

# Operand and result roles, used by the batching rule:
IMAGE = "image"  # leading axis: the N images (features, feature gradients)
ROI = "roi"  # leading axes: rois.shape[:-1], i.e. (K,) or (N, R)
ROIS = "rois"  # the boxes: (K, 5) or (N, R, 4)
NONE = "none"  # an unbatched operand or result (an empty placeholder)

# Computes the result types from the operands, the image shapes (the shapes
# of the feature maps, one per level, whose first entry the batching rule may
# change) and the attributes.
ResultFn = Callable[[Sequence[jax.Array], tuple, dict], Sequence[jax.ShapeDtypeStruct]]


class Kernel(NamedTuple):
  target: str
  arg_roles: tuple[str, ...]
  result_roles: tuple[str, ...]
  results: ResultFn
  # Static attributes, as (name, value) pairs of exactly typed numpy scalars
  # or strings (they must match the C++ binding's Attr<T> types); a tuple of
  # floats becomes a float64 array attribute.
  attrs: tuple[tuple[str, object], ...]


def kernel(k: Kernel, image_shapes: Sequence[tuple], *args: jax.Array) -> tuple[jax.Array, ...]:
  """Calls kernel ``k`` on ``args``; vmap folds into one call.

  ``image_shapes``: the shape of each feature map (one per FPN level).
  """
  return _batchable(k, tuple(tuple(s) for s in image_shapes))(*args)


def _attr_value(v):
  return np.asarray(v, np.float64) if isinstance(v, tuple) else v


@functools.lru_cache(maxsize=None)
def _batchable(k: Kernel, image_shapes: tuple):
  """The kernel call for given image shapes: custom_vmap (vmap folds into one
  call) around custom_partitioning (jit shards it without gathers)."""
  call = jax.custom_batching.custom_vmap(_partitionable(k, image_shapes))

  @call.def_vmap
  def rule(axis_size, in_batched, *args):
    folded, new_image_shapes, unfold = _fold(
        k, image_shapes, axis_size, list(in_batched), list(args))
    outs = _batchable(k, new_image_shapes)(*folded)
    return unfold(outs)

  return call


def _ffi_call(k: Kernel, image_shapes: tuple, args):
  """The raw ffi_call on (possibly per-shard) operands."""
  attrs = {name: _attr_value(v) for name, v in k.attrs}
  args = _match_manual_axes(args)
  manual = _manual_context(args)
  result_types = []
  for r in k.results(args, image_shapes, attrs):
    if manual is not None:  # inside shard_map: results vary like the operands
      mesh, mat = manual
      r = jax.ShapeDtypeStruct(r.shape, r.dtype, manual_axis_type=mat,
                               sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    result_types.append(r)
  return tuple(jax.ffi.ffi_call(k.target, tuple(result_types))(*args, **attrs))


def _manual_context(args):
  """(abstract mesh, manual axis type) of operands inside shard_map, else None."""
  if not args:
    return None
  t = jax.typeof(args[0])
  mat = getattr(t, "manual_axis_type", None)
  sharding = getattr(t, "sharding", None)
  if mat is None or not getattr(mat, "varying", None) or sharding is None:
    return None
  return sharding.mesh, mat


def _manual_axis_type(x):
  return getattr(jax.typeof(x), "manual_axis_type", None)


def _match_manual_axes(args):
  """Inside shard_map, makes every operand vary over the union of the mesh
  axes any operand varies over (the results vary over them too)."""
  varying = [getattr(_manual_axis_type(a), "varying", frozenset()) for a in args]
  union = frozenset().union(*varying)
  if not union:
    return args
  return tuple(a if v == union else jax.lax.pcast(a, tuple(sorted(union - v)), to="varying")
               for a, v in zip(args, varying))


# ---------------------------------------------------------------------------
# Sharding: a Shardy sharding rule per kernel, and the per-shard call
# ---------------------------------------------------------------------------


def _factors(k: Kernel, arg_ranks: Sequence[int]):
  """Einsum-like factors of every operand and result, and the factors that
  must stay replicated or are reductions (summed across shards)."""
  layout = dict(k.attrs)["layout"]
  indexed = arg_ranks[k.arg_roles.index(ROIS)] == 2
  lead = ["k"] if indexed else ["n", "r"]
  pooled = ["c", "ph", "pw"] if layout == "NCHW" else ["ph", "pw", "c"]
  replicated = {"ph", "pw", "f"}
  if indexed:
    replicated.add("n")  # RoIs name their image by value: every shard needs all images
  placeholders = iter(range(1 << 16))

  def spec(role, level, rank):
    if role == IMAGE:
      replicated.update({f"h{level}", f"w{level}"})
      return (["n", "c", f"h{level}", f"w{level}"] if layout == "NCHW"
              else ["n", f"h{level}", f"w{level}", "c"])
    if role == ROIS:
      return lead + ["f"]
    if role == ROI:
      return lead + pooled
    z = f"z{next(placeholders)}"  # an empty placeholder: its own factors, replicated
    dims = [z] + [f"{z}_{i}" for i in range(1, rank)]
    replicated.update(dims)
    return dims

  def specs(roles, ranks):
    out, level = [], 0
    for role, rank in zip(roles, ranks):
      out.append(spec(role, level, rank))
      level += role == IMAGE
    return out

  ins = specs(k.arg_roles, arg_ranks)
  outs = specs(k.result_roles, [1] * len(k.result_roles))
  in_factors = {f for s in ins for f in s}
  out_factors = {f for s in outs for f in s}
  reductions = (in_factors - out_factors) - replicated
  return ins, outs, replicated & (in_factors | out_factors), reductions


def _spec_of(sharding_or_spec, rank):
  """A sharding's (or a PartitionSpec's) entries, padded to rank."""
  spec = getattr(sharding_or_spec, "spec", sharding_or_spec)
  spec = tuple(spec) if spec is not None else ()
  return spec + (None,) * (rank - len(spec))


def _axes(entry) -> tuple[str, ...]:
  return () if entry is None else (entry if isinstance(entry, tuple) else (entry,))


def _local_shape(shape, spec, mesh):
  """The per-shard shape of a global shape under a PartitionSpec on mesh."""
  sizes = dict(mesh.shape)
  return tuple(dim // int(np.prod([sizes[a] for a in _axes(entry)], dtype=np.int64))
               for dim, entry in zip(shape, spec))


def _partitionable(k: Kernel, image_shapes: tuple):
  """The kernel as a custom_partitioning function: under jit, sharded
  operands are pooled shard by shard with no collective on features, boxes
  or outputs (batch, RoI or channel sharding). Factors the kernel cannot
  split (spatial dims; the image axis of (K, 5) RoIs) are replicated first;
  reductions (the RoI axis of a feature gradient, the channels of a box
  gradient) are summed across shards (psum) after the per-shard call."""
  from jax.experimental.custom_partitioning import custom_partitioning

  @custom_partitioning
  def call(*args):
    return _ffi_call(k, image_shapes, args)

  def partition(mesh, arg_shapes, result_shape):
    ranks = [len(a.shape) for a in arg_shapes]
    ins, outs, replicated, reductions = _factors(k, ranks)
    # Mesh axes of every splittable factor, from the operands' shardings.
    factor_axes, used = {}, set()
    for factors, a in zip(ins, arg_shapes):
      for f, entry in zip(factors, _spec_of(a.sharding, len(a.shape))):
        axes = _axes(entry)
        if axes and f not in replicated and f not in factor_axes and not used & set(axes):
          factor_axes[f] = entry
          used.update(axes)
    P = jax.sharding.PartitionSpec
    spec = lambda factors: P(*[factor_axes.get(f) for f in factors])
    arg_specs = [spec(f) for f in ins]
    result_specs = [spec(f) for f in outs]
    arg_shardings = tuple(jax.sharding.NamedSharding(mesh, s) for s in arg_specs)
    result_shardings = tuple(jax.sharding.NamedSharding(mesh, s) for s in result_specs)
    reduce_axes = tuple(a for f in reductions for a in _axes(factor_axes.get(f)))
    images = [(a, s) for a, s, role in zip(arg_shapes, arg_specs, k.arg_roles) if role == IMAGE]
    images = images or [(r, s) for r, s, role in zip(result_shape, result_specs, k.result_roles)
                        if role == IMAGE]
    local_images = tuple(_local_shape(a.shape, _spec_of(s, len(a.shape)), mesh)
                         for a, s in images) or image_shapes

    def lower(*args):
      outs = _ffi_call(k, local_images, args)
      if reduce_axes:  # partial sums over this shard's RoIs (or channels)
        outs = tuple(jax.lax.psum(o, reduce_axes) for o in outs)
      return outs

    return mesh, lower, result_shardings, arg_shardings

  def sharding_rule(mesh, value_types, result_types):
    from jax.experimental.custom_partitioning import SdyShardingRule
    from jax._src.lib.mlir import ir
    ranks = [len(ir.RankedTensorType(t).shape) for t in value_types]
    ins, outs, replicated, reductions = _factors(k, ranks)
    # Special factors are listed in order of first appearance (Shardy's).
    order = list(dict.fromkeys(f for spec in ins + outs for f in spec))
    by_order = lambda fs: tuple(f for f in order if f in fs)
    return SdyShardingRule(tuple(tuple(s) for s in ins), tuple(tuple(s) for s in outs),
                           reduction_factors=by_order(reductions),
                           need_replication_factors=by_order(replicated))

  call.def_partition(partition=partition, sharding_rule=sharding_rule)
  return call


def roi_images(rois: jax.Array, batch: int) -> jax.Array:
  """Image index of every RoI, -1 for padding rows; shape rois.shape[:-1].

  For (K, 5) rows: the first column truncated toward zero (torchvision's int
  cast); a truncation outside [0, batch), or NaN, marks padding. For batched
  (N, R, 4) boxes: the row's image.
  """
  if rois.shape[-1] == 5:
    v = rois[..., 0]
    valid = (v > -1) & (v < batch) & (batch > 0)
    return jnp.where(valid, jnp.trunc(jnp.where(valid, v, 0)), -1).astype(jnp.int32)
  n, r = rois.shape[:2]
  return jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[:, None], (n, r))


def _merge_leading(x: jax.Array) -> jax.Array:
  return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def _fold(k: Kernel, image_shapes: tuple, size: int, batched: list[bool],
          args: list[jax.Array]):
  """Folds the vmapped axis (axis 0 of batched operands) into the operands.

  Returns the new operands, the new image shape, and a function that maps
  the folded call's results back to vmapped results (with out_batched).
  """
  roles = k.arg_roles
  rois_at = roles.index(ROIS)
  indexed = args[rois_at].shape[-1] == 5
  n = image_shapes[0][0]
  fold_images = (any(b for b, r in zip(batched, roles) if r == IMAGE)
                 or IMAGE in k.result_roles)

  def expand(x, b):
    x = jnp.asarray(x)
    return x if b else jnp.broadcast_to(x, (size,) + x.shape)

  if fold_images:
    # Every image gets its own slot: images (size * N, ...), RoIs point at
    # image v * N + n (padding stays padding).
    out_args = []
    for x, b, role in zip(args, batched, roles):
      if role == IMAGE:
        out_args.append(_merge_leading(expand(x, b)))
      elif role == NONE:
        out_args.append(x)
      elif role == ROIS and indexed:
        x = expand(x, batched[rois_at])
        images = roi_images(x, n)
        offset = (jnp.arange(size, dtype=jnp.int32) * n)[:, None]
        first = jnp.where(images >= 0, images + offset, -1).astype(x.dtype)
        out_args.append(_merge_leading(x.at[..., 0].set(first)))
      else:  # ROI operands, batched (N, R, 4) boxes: merge the two leading axes
        out_args.append(_merge_leading(expand(x, b)))
    new_image_shapes = tuple((size * n,) + tuple(s[1:]) for s in image_shapes)

    def unfold(outs):
      res = []
      for y, role in zip(outs, k.result_roles):
        res.append(y if role == NONE else y.reshape((size, y.shape[0] // size) + y.shape[1:]))
      return tuple(res), tuple(role != NONE for role in k.result_roles)

    return out_args, new_image_shapes, unfold

  # Only RoI-side operands are batched and no result is per image: the
  # images stay as they are and the vmapped axis joins the RoI axis.
  rois = expand(args[rois_at], batched[rois_at])
  if indexed:
    roi_lead = 2  # (size, K)
    new_rois = _merge_leading(rois)
  else:
    roi_lead = 3  # (size, N, R): switch to (size * N * R, 5) rows
    images = jnp.broadcast_to(roi_images(rois[0], n), rois.shape[:-1])
    new_rois = jnp.concatenate(
        [images[..., None].astype(rois.dtype), rois], axis=-1).reshape(-1, 5)
  out_args = []
  for x, b, role in zip(args, batched, roles):
    if role == ROIS:
      out_args.append(new_rois)
    elif role == ROI:
      x = expand(x, b)
      out_args.append(x.reshape((-1,) + x.shape[roi_lead:]))
    else:
      out_args.append(x)
  lead_shape = rois.shape[:roi_lead]

  def unfold_rois(outs):
    res = []
    for y, role in zip(outs, k.result_roles):
      if role == NONE:
        res.append(y)
        continue
      y = y.reshape(lead_shape + y.shape[1:])
      if role == ROIS and not indexed:
        y = y[..., 1:]  # (size, N, R, 5) rows back to the (size, N, R, 4) boxes
      res.append(y)
    return tuple(res), tuple(role != NONE for role in k.result_roles)

  return out_args, image_shapes, unfold_rois


def pooled_shape(rois_shape: tuple, channels: int, pooled: tuple[int, int],
                 layout: str) -> tuple[int, ...]:
  """Shape of a per-RoI output: rois.shape[:-1] + (C, PH, PW) or (PH, PW, C)."""
  ph, pw = pooled
  tail = (channels, ph, pw) if layout == "NCHW" else (ph, pw, channels)
  return tuple(rois_shape[:-1]) + tail


def channels_of(image_shape: tuple, layout: str) -> int:
  return image_shape[1] if layout == "NCHW" else image_shape[3]


def acc_dtype(dtype) -> np.dtype:
  """Accumulation dtype of a features dtype (gradients are returned in it)."""
  return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


# ---------------------------------------------------------------------------
# RoIPool
# ---------------------------------------------------------------------------


def _roi_pool_fwd_results(args, image_shapes, attrs):
  features, rois = args
  shape = pooled_shape(rois.shape, channels_of(image_shapes[0], attrs["layout"]),
                       (int(attrs["pooled_height"]), int(attrs["pooled_width"])),
                       attrs["layout"])
  out = jax.ShapeDtypeStruct(shape, features.dtype)
  return out, jax.ShapeDtypeStruct(shape, jnp.int32)


def _roi_pool_fwd_no_argmax_results(args, image_shapes, attrs):
  out, _ = _roi_pool_fwd_results(args, image_shapes, attrs)
  return out, jax.ShapeDtypeStruct((0,), jnp.int32)


def _roi_pool_bwd_results(args, image_shapes, attrs):
  grad_output = args[0]
  return (jax.ShapeDtypeStruct(image_shapes[0], acc_dtype(grad_output.dtype)),)


def _pool_attrs(output_size, spatial_scale, layout):
  return (("spatial_scale", np.float64(spatial_scale)),
          ("pooled_height", np.int64(output_size[0])),
          ("pooled_width", np.int64(output_size[1])),
          ("layout", layout))


def roi_pool_forward(features, rois, *, output_size, spatial_scale, layout,
                     with_argmax):
  """Returns (output, argmax); argmax is an empty placeholder if not asked for."""
  if with_argmax:
    k = Kernel("jax_roi_roi_pool_fwd_v1", (IMAGE, ROIS), (ROI, ROI),
               _roi_pool_fwd_results, _pool_attrs(output_size, spatial_scale, layout))
  else:
    k = Kernel("jax_roi_roi_pool_fwd_v1", (IMAGE, ROIS), (ROI, NONE),
               _roi_pool_fwd_no_argmax_results,
               _pool_attrs(output_size, spatial_scale, layout))
  return kernel(k, [features.shape], features, rois)


def roi_pool_backward(grad_output, argmax, rois, *, image_shape, layout):
  """Feature gradient (in the accumulation dtype) of RoIPool."""
  k = Kernel("jax_roi_roi_pool_bwd_v1", (ROI, ROI, ROIS), (IMAGE,),
             _roi_pool_bwd_results, (("layout", layout),))
  (grad,) = kernel(k, [image_shape], grad_output, argmax, rois)
  return grad


# ---------------------------------------------------------------------------
# RoIAlign
# ---------------------------------------------------------------------------


class AlignOptions(NamedTuple):
  output_size: tuple[int, int]
  spatial_scale: float
  sampling_ratio: int
  aligned: bool
  mode: str
  layout: str

  def attrs(self):
    return (("spatial_scale", np.float64(self.spatial_scale)),
            ("pooled_height", np.int64(self.output_size[0])),
            ("pooled_width", np.int64(self.output_size[1])),
            ("sampling_ratio", np.int64(self.sampling_ratio)),
            ("aligned", bool(self.aligned)),
            ("mode", self.mode),
            ("layout", self.layout))


def _pooled_of(rois, image_shapes, attrs):
  return pooled_shape(rois.shape, channels_of(image_shapes[0], attrs["layout"]),
                      (int(attrs["pooled_height"]), int(attrs["pooled_width"])),
                      attrs["layout"])


def _align_fwd_results(args, image_shapes, attrs):
  shape = _pooled_of(args[1], image_shapes, attrs)
  out = jax.ShapeDtypeStruct(shape, args[0].dtype)
  if attrs["mode"] == "max":
    return out, jax.ShapeDtypeStruct(shape, jnp.int32), jax.ShapeDtypeStruct(shape, jnp.int32)
  return out, _EMPTY, _EMPTY


def _align_fwd_no_argmax_results(args, image_shapes, attrs):
  return _align_fwd_results(args, image_shapes, dict(attrs, mode="avg"))[:1] + (_EMPTY, _EMPTY)


_EMPTY = jax.ShapeDtypeStruct((0,), jnp.int32)


def _align_bwd_results(args, image_shapes, attrs):
  return tuple(jax.ShapeDtypeStruct(s, acc_dtype(args[0].dtype)) for s in image_shapes)


def _box_grad_results(rois_at):
  def results(args, image_shapes, attrs):
    rois = args[rois_at]
    return (jax.ShapeDtypeStruct(rois.shape, rois.dtype),)
  return results


_align_box_grad_results = _box_grad_results(1)


def empty_argmax():
  return jnp.zeros((0,), jnp.int32)


def roi_align_forward(features, rois, options: AlignOptions, with_argmax: bool):
  """Returns (output, argmax_y, argmax_x); the argmax pair (max mode) is an
  empty placeholder unless asked for."""
  if with_argmax and options.mode == "max":
    k = Kernel("jax_roi_roi_align_fwd_v1", (IMAGE, ROIS), (ROI, ROI, ROI),
               _align_fwd_results, options.attrs())
  else:
    k = Kernel("jax_roi_roi_align_fwd_v1", (IMAGE, ROIS), (ROI, NONE, NONE),
               _align_fwd_no_argmax_results, options.attrs())
  return kernel(k, [features.shape], features, rois)


def _argmax_roles(options: AlignOptions):
  return (ROI, ROI) if options.mode == "max" else (NONE, NONE)


def roi_align_backward(grad_output, rois, argmax_y, argmax_x, *, image_shape,
                       options: AlignOptions):
  """Feature gradient (in the accumulation dtype) of RoIAlign."""
  k = Kernel("jax_roi_roi_align_bwd_v1", (ROI, ROIS) + _argmax_roles(options), (IMAGE,),
             _align_bwd_results, options.attrs())
  (grad,) = kernel(k, [image_shape], grad_output, rois, argmax_y, argmax_x)
  return grad


def roi_align_box_grad(features, rois, grad_output, argmax_y, argmax_x,
                       options: AlignOptions):
  """Gradient of sum(output * grad_output) w.r.t. the rois (rois' shape)."""
  k = Kernel("jax_roi_roi_align_box_grad_v1", (IMAGE, ROIS, ROI) + _argmax_roles(options),
             (ROIS,), _align_box_grad_results, options.attrs())
  (grad,) = kernel(k, [features.shape], features, rois, grad_output, argmax_y, argmax_x)
  return grad


# ---------------------------------------------------------------------------
# Multi-scale (FPN) RoIAlign: one fused call over every level
# ---------------------------------------------------------------------------


class MultiScaleOptions(NamedTuple):
  output_size: tuple[int, int]
  spatial_scales: tuple[float, ...]
  sampling_ratio: int
  aligned: bool
  layout: str
  canonical_scale: float
  canonical_level: float
  k_min: int
  k_max: int

  def attrs(self):
    return (("spatial_scales", tuple(float(v) for v in self.spatial_scales)),
            ("pooled_height", np.int64(self.output_size[0])),
            ("pooled_width", np.int64(self.output_size[1])),
            ("sampling_ratio", np.int64(self.sampling_ratio)),
            ("aligned", bool(self.aligned)),
            ("layout", self.layout),
            ("canonical_scale", np.float64(self.canonical_scale)),
            ("canonical_level", np.float64(self.canonical_level)),
            ("k_min", np.int64(self.k_min)),
            ("k_max", np.int64(self.k_max)))


def _multi_fwd_results(args, image_shapes, attrs):
  rois, first = args[0], args[1]
  return (jax.ShapeDtypeStruct(_pooled_of(rois, image_shapes, attrs), first.dtype),)


def multi_scale_forward(features: Sequence[jax.Array], rois, options: MultiScaleOptions):
  k = Kernel("jax_roi_multi_scale_roi_align_fwd_v1", (ROIS,) + (IMAGE,) * len(features),
             (ROI,), _multi_fwd_results, options.attrs())
  (out,) = kernel(k, [f.shape for f in features], rois, *features)
  return out


def multi_scale_backward(grad_output, rois, *, image_shapes, options: MultiScaleOptions):
  """Feature gradients (accumulation dtype), one per level."""
  k = Kernel("jax_roi_multi_scale_roi_align_bwd_v1", (ROI, ROIS), (IMAGE,) * len(image_shapes),
             _align_bwd_results, options.attrs())
  return kernel(k, image_shapes, grad_output, rois)


def multi_scale_box_grad(features: Sequence[jax.Array], rois, grad_output,
                         options: MultiScaleOptions):
  k = Kernel("jax_roi_multi_scale_roi_align_box_grad_v1",
             (ROIS, ROI) + (IMAGE,) * len(features), (ROIS,), _box_grad_results(0),
             options.attrs())
  (grad,) = kernel(k, [f.shape for f in features], rois, grad_output, *features)
  return grad
