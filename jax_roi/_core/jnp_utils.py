"""Numerics helpers of the pure-JAX versions (imports only jax and numpy).

They reproduce the kernels' arithmetic exactly where XLA would otherwise
rewrite it (rounding mode, division by constants).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Rounded box coordinates are clamped to this magnitude before integer
# arithmetic, as in the kernels (csrc/core kCoordLimit).
COORD_LIMIT = 2.0**40
FLT_MAX = float(np.finfo(np.float32).max)


def vary_like(x: jax.Array, *refs: jax.Array) -> jax.Array:
  """Inside shard_map, makes x vary over the mesh axes the refs vary over
  (loop carries must keep one type)."""
  axes = set()
  for r in refs:
    axes |= set(getattr(getattr(jax.typeof(r), "manual_axis_type", None), "varying", ()) or ())
  have = set(getattr(getattr(jax.typeof(x), "manual_axis_type", None), "varying", ()) or ())
  missing = tuple(sorted(axes - have))
  return jax.lax.pcast(x, missing, to="varying") if missing else x


def round_half_away(v: jax.Array) -> jax.Array:
  """Rounds halves away from zero (C's round), exactly; jnp.round does not."""
  a = jnp.abs(v)
  r = jnp.floor(a)
  r = r + (a - r >= 0.5).astype(v.dtype)
  return jnp.copysign(r, v)


def exact_div(num: jax.Array, den) -> jax.Array:
  """num / den, correctly rounded, den (an array or a Python number)
  broadcast to num.

  XLA rewrites a division by a constant or broadcast divisor into a
  multiplication by its reciprocal, which is not correctly rounded and moves
  floor/ceil bin edges. The optimisation barrier hides the divisor.
  """
  den = jnp.asarray(den, num.dtype)
  d = lax.optimization_barrier(jnp.broadcast_to(den, jnp.broadcast_shapes(num.shape, den.shape)))
  return num / d


def map_rois(fn, xs, chunk: int):
  """fn maps arrays with a leading RoI axis; runs it over chunks of RoIs
  (lax.map vmaps over each chunk), rematerialised in the backward pass."""

  def one(x):
    return jax.tree.map(lambda a: a[0], fn(jax.tree.map(lambda a: a[None], x)))

  k = jax.tree.leaves(xs)[0].shape[0]
  return lax.map(jax.checkpoint(one), xs, batch_size=min(chunk, k))
