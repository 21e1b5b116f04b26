"""The only ``jax.ffi.ffi_call`` site.

:func:`call` runs a :class:`~jax_roi._core.spec.Kernel` as a
``jax.custom_batching.custom_vmap`` (vmap folds into one call, see
``batching``) around a ``custom_partitioning`` function (jit shards it
without gathers, see ``sharding``) around the ``ffi_call``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax_roi._core import extension
from jax_roi._core.batching import fold
from jax_roi._core.sharding import partitionable
from jax_roi._core.spec import Kernel


def empty_operand() -> jax.Array:
  """An empty operand placeholder (e.g. no argmax in avg mode)."""
  return jnp.zeros((0,), jnp.int32)


# Test-only (see redirect_targets): maps an FFI target name to the one called.
_redirect: Callable[[str], str] | None = None


@contextlib.contextmanager
def redirect_targets(fn: Callable[[str], str]) -> Iterator[None]:
  """TEST-ONLY hook, not part of the API: inside the block, every kernel call
  traced calls the FFI target ``fn(name)`` instead of ``name`` (e.g. the
  CUDA kernels run on the CPU by the emulation test module:
  ``redirect_targets(lambda t: t + "_cuda_emulation_sm750")``, see
  tests/test_cuda_emulation.py). The target must be registered and take the
  same operands, results and attributes.

  The name is rewritten at trace time, and jitted functions (the ops'
  dispatch among them) reuse executables compiled before: jax's caches are
  cleared on entry and on exit, so that nothing traced without the redirect
  runs inside the block, nor anything traced with it after. Not thread-safe
  (one redirect per process at a time); nesting replaces the outer one.
  """
  global _redirect
  previous = _redirect
  jax.clear_caches()
  _redirect = fn
  try:
    yield
  finally:
    _redirect = previous
    jax.clear_caches()


def call(k: Kernel, image_shapes: Sequence[tuple], *args: jax.Array) -> tuple[jax.Array, ...]:
  """Calls kernel ``k`` on ``args``; vmap folds into one call.

  ``image_shapes``: the shape of each feature map (one per FPN level).
  """
  extension.require()
  if _redirect is not None:
    k = k._replace(target=_redirect(k.target))
  return _batchable(k, tuple(tuple(s) for s in image_shapes))(*args)


def _attr_value(v):
  return np.asarray(v, np.float64) if isinstance(v, tuple) else v


@functools.cache
def _batchable(k: Kernel, image_shapes: tuple):
  """The kernel call for given image shapes: custom_vmap (vmap folds into one
  call) around custom_partitioning (jit shards it without gathers)."""
  run = jax.custom_batching.custom_vmap(
    partitionable(k, image_shapes, functools.partial(_ffi_call, k))
  )

  @run.def_vmap
  def rule(axis_size, in_batched, *args):
    folded, new_image_shapes, unfold = fold(
      k, image_shapes, axis_size, list(in_batched), list(args)
    )
    outs = _batchable(k, new_image_shapes)(*folded)
    return unfold(outs)

  return run


def _ffi_call(k: Kernel, image_shapes: tuple, args):
  """The raw ffi_call on (possibly per-shard) operands."""
  attrs = {name: _attr_value(v) for name, v in k.attrs}
  args = _match_manual_axes(args)
  manual = _manual_context(args)
  result_types = []
  for r in k.results(args, image_shapes, attrs):
    if manual is not None:  # inside shard_map: results vary like the operands
      mesh, mat = manual
      r = jax.ShapeDtypeStruct(
        r.shape,
        r.dtype,
        manual_axis_type=mat,
        sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
      )
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
  return tuple(
    a if v == union else jax.lax.pcast(a, tuple(sorted(union - v)), to="varying")
    for a, v in zip(args, varying)
  )
