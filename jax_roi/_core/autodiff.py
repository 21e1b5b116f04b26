"""The custom_vjp wiring every op shares, built from a few declarative rules.

An op's kernels give it:

* a forward (``forward``), and optionally a forward that also returns
  integer residuals for the backward (``forward_saving``, e.g. argmax);
* a feature gradient linear in the output cotangent (``feature_grad``),
  whose own VJP (``feature_grad_vjp``) is a gather or the forward again: this
  makes gradients of gradients w.r.t. the features work to any order;
* a box gradient (``box_grad``), first order only: differentiating it again
  raises ``NotImplementedError``; or none (the op is piecewise constant in
  the boxes: zero gradient).

:func:`differentiable` turns these into one ``fn(features, rois, config)``
with ``features`` a tuple of feature maps (one per level). The box gradient
and the feature gradient are both in the backward's program; the one that
is not needed is dead code that XLA removes before it runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

Features = tuple  # of jax.Array, one per level


class VjpRules(NamedTuple):
  name: str  # the public op's name, for error messages
  forward: Callable[[Features, jax.Array, Any], jax.Array]
  # forward_saving(features, rois, config) -> (output, saved: tuple of arrays);
  # used when saves(config) is true, else saved = ().
  forward_saving: Callable[[Features, jax.Array, Any], tuple] | None
  saves: Callable[[Any], bool]
  # feature_grad(g, rois, saved, config) -> per-level gradients (any float dtype).
  feature_grad: Callable[[jax.Array, jax.Array, tuple, Any], Features]
  # feature_grad_vjp(gg, rois, saved, config) -> the cotangent of g; gg is
  # per level, in the features' dtype.
  feature_grad_vjp: Callable[[Features, jax.Array, tuple, Any], jax.Array]
  # box_grad(features, rois, g, saved, config) -> d(sum(out * g)) / d(rois),
  # or None: zero.
  box_grad: Callable[[Features, jax.Array, jax.Array, tuple, Any], jax.Array] | None


def _zeros_if_symbolic(x):
  return jnp.zeros(x.shape, x.dtype) if isinstance(x, SymbolicZero) else x


def _values(tree):
  return jax.tree.map(lambda p: p.value, tree)


def _nones(tree):
  return jax.tree.map(lambda _: None, tree)


def _varying(x):
  """The manual mesh axes x varies over (inside shard_map), as a pytree with
  no leaves whose (static) structure names them: residuals can carry it."""
  mat = getattr(jax.typeof(x), "manual_axis_type", None)
  return dict.fromkeys(sorted(getattr(mat, "varying", ())))


def _sum_to(grad, varying):
  """Sums a cotangent over the manual axes it varies over but its primal did
  not (``varying``, from :func:`_varying`): inside shard_map, an operand
  replicated over an axis (e.g. features with RoI-sharded boxes) gets the
  sum of every shard's partial gradient, as jax's own transpose would."""
  extra = tuple(a for a in _varying(grad) if a not in varying)
  return jax.lax.psum(grad, extra) if extra else grad


def differentiable(rules: VjpRules) -> Callable[[Features, jax.Array, Any], jax.Array]:
  """The op as a custom_vjp function of (features, rois, config)."""

  # -- the feature gradient: linear in g ---------------------------------
  @functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
  def feature_grad(g, rois, saved, config):
    return tuple(rules.feature_grad(g, rois, saved, config))

  def feature_grad_fwd(g, rois, saved, config):
    return feature_grad(g, rois, saved, config), (rois, saved)

  def feature_grad_bwd(config, residuals, gg):
    rois, saved = residuals
    gg = tuple(x.astype(config.dtype) for x in gg)
    ct = rules.feature_grad_vjp(gg, rois, saved, config)
    return ct.astype(config.dtype), None, _nones(saved)

  feature_grad.defvjp(feature_grad_fwd, feature_grad_bwd)

  # -- the box gradient: first order only --------------------------------
  @functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
  def box_grad(features, rois, g, saved, config):
    return rules.box_grad(features, rois, g, saved, config)

  def box_grad_fwd(features, rois, g, saved, config):
    features, rois, g, saved = _values((features, rois, g, saved))
    return box_grad(features, rois, g, saved, config), (features, rois, g, saved)

  def box_grad_bwd(config, residuals, ct):
    if not isinstance(ct, SymbolicZero):
      raise NotImplementedError(
        f"{rules.name}: second derivatives through the box gradient are not"
        " implemented (gradients of gradients w.r.t. the features are)"
      )
    features, rois, g, saved = residuals
    return (
      tuple(jnp.zeros_like(f) for f in features),
      jnp.zeros_like(rois),
      jnp.zeros_like(g),
      _nones(saved),
    )

  box_grad.defvjp(box_grad_fwd, box_grad_bwd, symbolic_zeros=True)

  # -- the op's backward, shared by both forwards ------------------------
  def residuals(features, rois, saved):
    """What the backward needs. Its tree structure must not depend on which
    inputs are perturbed: jax may pair a cached forward trace (inside
    lax.platform_dependent's cond) with the backward of another pattern. So
    the backward always produces both cotangents; the one nobody asked for
    is dead code that XLA removes (the kernels have no side effects)."""
    f, r = _values(features), rois.value
    varying = (tuple(_varying(x) for x in f), _varying(r))
    return r, saved, f, varying

  def backward(config, res, g):
    rois, saved, features, (f_varying, r_varying) = res
    g = _zeros_if_symbolic(g)
    grad_features = tuple(
      _sum_to(x.astype(config.dtype), v)
      for x, v in zip(feature_grad(g, rois, saved, config), f_varying)
    )
    grad_rois = _sum_to(
      box_grad(features, rois, g, saved, config)
      if rules.box_grad is not None
      else jnp.zeros_like(rois),
      r_varying,
    )
    return grad_features, grad_rois

  # -- the forward that also returns its residuals: differentiable, so that
  # the forward pass of a gradient can be differentiated again ------------
  @functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
  def saving(features, rois, config):
    return rules.forward_saving(features, rois, config)

  def saving_fwd(features, rois, config):
    out, saved = saving(_values(features), rois.value, config)
    return (out, saved), residuals(features, rois, saved)

  def saving_bwd(config, res, cotangents):
    return backward(config, res, cotangents[0])

  saving.defvjp(saving_fwd, saving_bwd, symbolic_zeros=True)

  # -- the op ---------------------------------------------------------------
  @functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
  def op(features, rois, config):
    return rules.forward(features, rois, config)

  def op_fwd(features, rois, config):
    if rules.saves(config):
      out, saved = saving(_values(features), rois.value, config)
    else:
      out, saved = op(_values(features), rois.value, config), ()
    return out, residuals(features, rois, saved)

  op.defvjp(op_fwd, backward, symbolic_zeros=True)
  return op
