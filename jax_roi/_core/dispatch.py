"""One entry point for every op: kernel or pure JAX, per platform, shard by
shard under explicit meshes, jitted with the op's static configuration (so
that eager calls compile once)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import jax
from jax import lax

from jax_roi._core import extension
from jax_roi._core.sharding import explicit_plan


class Config(Protocol):
  """What dispatch needs of an op's (hashable) static configuration."""

  @property
  def layout(self) -> str: ...

  def with_image_shapes(self, shapes: tuple) -> Config:
    """The configuration for per-shard feature shapes (one per level)."""


class Op(NamedTuple):
  """An op's two implementations, each ``fn(features, rois, config)`` with
  ``features`` a tuple of feature maps (one per level)."""

  name: str
  kernel: Callable[[tuple, jax.Array, Any], jax.Array]
  xla: Callable[[tuple, jax.Array, Any], jax.Array]
  # The kernels on the CPU, where they differ (e.g. in their residuals), when
  # the platform chooses (implementation=None); "ffi" runs `kernel`.
  cpu_kernel: Callable[[tuple, jax.Array, Any], jax.Array] | None = None


def run(
  op: Op, implementation, features: Sequence[jax.Array], rois: jax.Array, config: Config
) -> jax.Array:
  """Runs ``op``: ``implementation`` None (the kernel on platforms that have
  one, else pure JAX), "ffi" or "xla"."""
  return _dispatch(op, implementation, config, tuple(features), rois)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _dispatch(op: Op, implementation, config: Config, features: tuple, rois):
  plan = explicit_plan(features, rois, config.layout, getattr(config, "channel_bins", 1))
  if plan is None:
    return _select(op, implementation, features, rois, config)
  mesh, f_shardings, r_sharding, out_spec, local = plan
  local_config = config.with_image_shapes(local)
  f_specs = tuple(s.spec for s in f_shardings)
  return jax.shard_map(
    lambda f, r: _select(op, implementation, f, r, local_config),
    mesh=mesh,
    in_specs=(f_specs, r_sharding.spec),
    out_specs=out_spec,
  )(tuple(jax.reshard(f, s) for f, s in zip(features, f_shardings)), jax.reshard(rois, r_sharding))


def _symbolic(features, rois) -> bool:
  """Whether any shape has a jax.export symbolic dimension."""
  return any(not isinstance(d, int) for a in (*features, rois) for d in a.shape)


def _select(op: Op, implementation, features, rois, config):
  """The kernel where one is compiled (per platform), else pure JAX."""
  kernel = lambda f, r: op.kernel(f, r, config)
  xla = lambda f, r: op.xla(f, r, config)
  cpu_fn = op.cpu_kernel
  cpu_kernel = kernel if cpu_fn is None else lambda f, r: cpu_fn(f, r, config)
  if implementation == "ffi":  # the same kernels, residuals included, everywhere
    return kernel(features, rois)
  symbolic = _symbolic(features, rois)
  if symbolic and (implementation == "xla" or not extension.AVAILABLE):
    raise ValueError(
      f"{op.name}: symbolic shapes (jax.export shape polymorphism) need the kernels:"
      " the pure-JAX version (implementation='xla', or no compiled extension) picks its"
      " algorithm from concrete shapes"
    )
  if implementation == "xla" or not extension.AVAILABLE:
    return xla(features, rois)
  if symbolic:
    # jax.export with symbolic dimensions: the kernels take any shape; the
    # pure-JAX version picks its algorithm from concrete shapes, so it is
    # not traced (the artifact runs where the kernels are registered).
    return kernel(features, rois)
  kernels = {"cpu": cpu_kernel}
  if extension.WITH_CUDA:
    kernels["cuda"] = kernel
  return lax.platform_dependent(features, rois, default=xla, **kernels)
