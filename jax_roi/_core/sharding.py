"""Sharding of kernel calls, for every op.

* Under ``jit`` with sharded operands: a ``custom_partitioning`` rule (with a
  Shardy sharding rule) derived from the roles of the kernel's operands and
  results, so that batch, RoI and channel sharding need no collective.
* Under a mesh with Explicit axes: :func:`explicit_plan` runs the op shard
  by shard through ``shard_map``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np

from jax_roi._core.spec import IMAGE, ROI, ROIS, Kernel


def factors(k: Kernel, arg_ranks: Sequence[int], whole_blocks: bool = True):
  """Einsum-like factors of every operand and result, and the factors that
  must stay replicated or are reductions (summed across shards).
  whole_blocks=False (position-sensitive ops whose channel blocks some mesh
  split would cut): the image channels get a factor of their own, replicated."""
  layout = k.layout
  indexed = arg_ranks[k.arg_roles.index(ROIS)] == 2
  lead = ["k"] if indexed else ["n", "r"]
  pooled = ["c", "ph", "pw"] if layout == "NCHW" else ["ph", "pw", "c"]
  replicated = {"ph", "pw", "f"}
  if indexed:
    replicated.add("n")  # RoIs name their image by value: every shard needs all images
  placeholders = iter(range(1 << 16))

  # Position-sensitive ops: the image's channel axis is the output's channel
  # factor c times the bins cb (c major: each output channel reads a block of
  # cb input channels), so channel sharding splits both alike; cb itself is
  # never split.
  image_c = ("c", "cb") if k.channel_bins > 1 else "c"
  if k.channel_bins > 1:
    replicated.add("cb")
    if not whole_blocks:
      image_c = "ci"
      replicated.add("ci")

  def spec(role, level, rank):
    if role == IMAGE:
      replicated.update({f"h{level}", f"w{level}"})
      return (
        ["n", image_c, f"h{level}", f"w{level}"]
        if layout == "NCHW"
        else ["n", f"h{level}", f"w{level}", image_c]
      )
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
  in_factors = {g for s in ins for f in s for g in _flat(f)}
  out_factors = {g for s in outs for f in s for g in _flat(f)}
  reductions = (in_factors - out_factors) - replicated
  return ins, outs, replicated & (in_factors | out_factors), reductions


def _flat(f):
  """The factors of one dimension: a factor, or a compound (major first)."""
  return f if isinstance(f, tuple) else (f,)


def _major(f):
  """The factor a dimension's sharding goes to: a compound's major one."""
  return _flat(f)[0]


def spec_of(sharding_or_spec, rank):
  """A sharding's (or a PartitionSpec's) entries, padded to rank."""
  spec = getattr(sharding_or_spec, "spec", sharding_or_spec)
  spec = tuple(spec) if spec is not None else ()
  return spec + (None,) * (rank - len(spec))


def axes_of(entry) -> tuple[str, ...]:
  return () if entry is None else (entry if isinstance(entry, tuple) else (entry,))


def local_shape(shape, spec, mesh):
  """The per-shard shape of a global shape under a PartitionSpec on mesh."""
  sizes = dict(mesh.shape)
  return tuple(
    dim // int(np.prod([sizes[a] for a in axes_of(entry)], dtype=np.int64))
    for dim, entry in zip(shape, spec)
  )


def partitionable(k: Kernel, image_shapes: tuple, call: Callable):
  """``call(image_shapes, args)`` (the raw kernel call) as a
  custom_partitioning function: under jit, sharded operands are pooled shard
  by shard with no collective on features, boxes or outputs (batch, RoI or
  channel sharding). Factors the kernel cannot split (spatial dims; the
  image axis of (K, 5) RoIs) are replicated first; reductions (the RoI axis
  of a feature gradient, the channels of a box gradient) are summed across
  shards (psum) after the per-shard call."""
  from jax.experimental.custom_partitioning import custom_partitioning

  @custom_partitioning
  def run(*args):
    return call(image_shapes, args)

  def partition(mesh, arg_shapes, result_shape):
    ranks = [len(a.shape) for a in arg_shapes]
    ins, outs, replicated, reductions = factors(k, ranks)
    # Mesh axes of every splittable factor, from the operands' shardings.
    factor_axes, used = {}, set()
    sizes = dict(mesh.shape)
    for fs, a in zip(ins, arg_shapes):
      for f, dim, entry in zip(fs, a.shape, spec_of(a.sharding, len(a.shape))):
        axes = axes_of(entry)
        shards = int(np.prod([sizes[x] for x in axes], dtype=np.int64))
        if isinstance(f, tuple) and dim % (shards * k.channel_bins):
          continue  # a shard would cut a block of bins: the channels are gathered
        f = _major(f)
        if axes and f not in replicated and f not in factor_axes and not used & set(axes):
          factor_axes[f] = entry
          used.update(axes)
    P = jax.sharding.PartitionSpec
    spec = lambda fs: P(*[factor_axes.get(_major(f)) for f in fs])
    arg_specs = [spec(f) for f in ins]
    result_specs = [spec(f) for f in outs]
    arg_shardings = tuple(jax.sharding.NamedSharding(mesh, s) for s in arg_specs)
    result_shardings = tuple(jax.sharding.NamedSharding(mesh, s) for s in result_specs)
    reduce_axes = tuple(a for f in reductions for a in axes_of(factor_axes.get(f)))
    images = [(a, s) for a, s, role in zip(arg_shapes, arg_specs, k.arg_roles) if role == IMAGE]
    images = images or [
      (r, s) for r, s, role in zip(result_shape, result_specs, k.result_roles) if role == IMAGE
    ]
    local_images = (
      tuple(local_shape(a.shape, spec_of(s, len(a.shape)), mesh) for a, s in images) or image_shapes
    )

    def lower(*args):
      outs = call(local_images, args)
      if reduce_axes:  # partial sums over this shard's RoIs (or channels)
        outs = tuple(jax.lax.psum(o, reduce_axes) for o in outs)
      return outs

    return mesh, lower, result_shardings, arg_shardings

  def sharding_rule(mesh, value_types, result_types):
    from jax._src.lib.mlir import ir
    from jax.experimental.custom_partitioning import CompoundFactor, SdyShardingRule

    shapes = [tuple(ir.RankedTensorType(t).shape) for t in value_types]
    ranks = [len(shape) for shape in shapes]
    whole_blocks = True
    if k.channel_bins > 1:  # whole blocks of bins per shard, whatever axes split them
      result_shapes = [tuple(ir.RankedTensorType(t).shape) for t in result_types]
      image = next(
        shape
        for shape, role in zip(shapes + result_shapes, k.arg_roles + k.result_roles)
        if role == IMAGE
      )
      channels = image[1] if k.layout == "NCHW" else image[3]
      devices = int(np.prod(list(dict(mesh.shape).values()), dtype=np.int64))
      whole_blocks = (channels // k.channel_bins) % devices == 0
    ins, outs, replicated, reductions = factors(k, ranks, whole_blocks)
    # Special factors are listed in order of first appearance (Shardy's).
    order = list(dict.fromkeys(g for spec in ins + outs for f in spec for g in _flat(f)))
    by_order = lambda fs: tuple(f for f in order if f in fs)
    dim = lambda f: CompoundFactor(*f) if isinstance(f, tuple) else f
    sizes = {"cb": k.channel_bins} if "cb" in order else {}
    return SdyShardingRule(
      tuple(tuple(map(dim, s)) for s in ins),
      tuple(tuple(map(dim, s)) for s in outs),
      reduction_factors=by_order(reductions),
      need_replication_factors=by_order(replicated),
      **sizes,
    )

  run.def_partition(partition=partition, sharding_rule=sharding_rule)
  return run


def explicit_plan(features, rois, layout, channel_bins=1):
  """Under a mesh with Explicit axes (jax.make_mesh / jax.set_mesh), the
  shard_map that runs an op shard by shard: the batch axis of features and
  (N, R, 4) boxes, the RoI axis of the boxes and the channel axis of the
  features are kept split; spatial axes, box coordinates and the image axis
  of (K, 5) RoIs (which name images by value) are replicated first. Returns
  None when no operand is sharded over explicit axes, else
  (mesh, feature shardings, rois sharding, output spec, per-shard feature
  shapes). The shardings are NamedShardings on the operands' own mesh, never
  bare PartitionSpecs: the arrays may come from ``device_put`` outside any
  ``jax.set_mesh`` context, where jax rejects a bare PartitionSpec.
  Position-sensitive ops (``channel_bins`` input channels per output
  channel) keep the channels split only when every shard gets whole blocks
  of them."""
  from jax.sharding import AxisType, NamedSharding
  from jax.sharding import PartitionSpec as P

  shardings = [getattr(jax.typeof(x), "sharding", None) for x in (*features, rois)]
  mesh = next(
    (
      s.mesh
      for s in shardings
      if isinstance(s, NamedSharding)
      and any(t == AxisType.Explicit for t in getattr(s.mesh, "axis_types", ()))
      and any(e is not None for e in s.spec)
    ),
    None,
  )
  if mesh is None:
    return None
  f_spec = spec_of(shardings[0], 4)
  r_spec = spec_of(shardings[-1], rois.ndim)
  c_dim = 1 if layout == "NCHW" else 3
  used = set()

  def take(entry):
    axes = set(axes_of(entry))
    if not axes or axes & used:
      return None
    used.update(axes)
    return entry

  indexed = rois.ndim == 2
  n = None if indexed else take(f_spec[0])
  k = take(r_spec[0]) if indexed else take(r_spec[1])
  c_entry = f_spec[c_dim]
  if channel_bins > 1 and axes_of(c_entry):
    shards = int(np.prod([dict(mesh.shape)[a] for a in axes_of(c_entry)], dtype=np.int64))
    if features[0].shape[c_dim] % (shards * channel_bins):
      c_entry = None  # a shard would split a block: replicate the channels
  c = take(c_entry)
  feat = [n, c, None, None] if layout == "NCHW" else [n, None, None, c]
  pooled = [c, None, None] if layout == "NCHW" else [None, None, c]
  r_out = P(k, None) if indexed else P(n, k, None)
  out = P(*([k] + pooled)) if indexed else P(*([n, k] + pooled))
  local = tuple(local_shape(f.shape, feat, mesh) for f in features)
  return (
    mesh,
    tuple(NamedSharding(mesh, P(*feat)) for _ in features),
    NamedSharding(mesh, r_out),
    out,
    local,
  )
