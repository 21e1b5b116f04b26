"""jit, vmap (one kernel launch), grad, checkpoint and grad of grad."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import OPS, indexed_rois, random_boxes, random_features

import jax_roi

BOX_GRAD_OPS = ("roi_align", "roi_align_max", "ps_roi_align", "prroi_pool")
LAYOUTS = ("NCHW", "NHWC")
# The README's quick run keeps prroi_pool's transform cases short: the ones
# that compile its pure-JAX version or many gradients (> 10 s each) run
# under the slow marker (tests/test_prroi_pool.py covers one of each).
_SLOW_OPS = ("prroi_pool",)


def _ops(names=None):
  return [pytest.param(o, marks=pytest.mark.slow) if o in _SLOW_OPS else o for o in (names or OPS)]


def _inputs(seed, layout, fmt, n=2, k=5, c=3, h=9, w=10):
  rng = np.random.default_rng(seed)
  x = random_features(rng, n, c, h, w, layout)
  if fmt == "indexed":
    rois = indexed_rois(rng, random_boxes(rng, k, h, w, 0.5), n, padding=0.2)
  else:
    rois = random_boxes(rng, n * k, h, w, 0.5).reshape(n, k, 4)
  return x, rois.astype(np.float32)


def _compiled_text(fn, *args):
  return jax.jit(fn).lower(*args).compile().as_text()


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fmt", ["indexed", "batched"])
def test_jit_matches_eager(op, layout, fmt):
  x, rois = _inputs(0, layout, fmt)
  f = lambda x, r: OPS[op](x, r, layout=layout)
  np.testing.assert_array_equal(jax.jit(f)(x, rois), f(x, rois))


IN_AXES = [(0, None), (None, 0), (0, 0)]


def _slow_unless(keep: bool) -> list:
  return [] if keep else [pytest.mark.slow]


@pytest.mark.parametrize("op", _ops())
@pytest.mark.parametrize(
  "layout,fmt,in_axes",
  # The default run: every in_axes in NCHW with indexed RoIs, and mapped
  # features and RoIs in the other layout / format pairs; the rest is slow.
  [
    pytest.param(
      layout,
      fmt,
      in_axes,
      marks=_slow_unless((layout, fmt) == ("NCHW", "indexed") or in_axes == (0, 0)),
    )
    for layout in LAYOUTS
    for fmt in ("indexed", "batched")
    for in_axes in IN_AXES
  ],
)
def test_vmap_is_one_launch_and_matches_loop(op, layout, fmt, in_axes):
  """Mapped features and/or RoIs; padding rows stay padding."""
  v = 3
  xs, rs = zip(*[_inputs(s, layout, fmt) for s in range(v)])
  xs, rs = np.stack(xs), np.stack(rs)
  x_arg = xs if in_axes[0] == 0 else xs[0]
  r_arg = rs if in_axes[1] == 0 else rs[0]
  f = lambda x, r: OPS[op](x, r, layout=layout)
  out = jax.vmap(f, in_axes=in_axes)(x_arg, r_arg)
  expected = np.stack(
    [f(xs[i] if in_axes[0] == 0 else xs[0], rs[i] if in_axes[1] == 0 else rs[0]) for i in range(v)]
  )
  np.testing.assert_array_equal(out, expected)
  text = _compiled_text(jax.vmap(f, in_axes=in_axes), x_arg, r_arg)
  assert text.count('custom_call_target="jax_roi_') == 1
  assert "while" not in text


@pytest.mark.parametrize("op", _ops())
@pytest.mark.parametrize("fmt", ["indexed", pytest.param("batched", marks=pytest.mark.slow)])
def test_vmap_of_grad_and_nested_vmap(op, fmt):
  v = 2
  xs, rs = zip(*[_inputs(10 + s, "NCHW", fmt) for s in range(v)])
  xs, rs = np.stack(xs), np.stack(rs)
  loss = lambda x, r: jnp.sum(OPS[op](x, r) ** 2)
  grads = jax.vmap(jax.grad(loss))(xs, rs)
  expected = np.stack([jax.grad(loss)(xs[i], rs[i]) for i in range(v)])
  np.testing.assert_allclose(grads, expected, rtol=1e-6, atol=1e-6)
  text = _compiled_text(jax.vmap(jax.grad(loss)), xs, rs)
  assert "while" not in text
  # vmap of vmap: (2, 2, ...) leading axes.
  xx = np.stack([xs, xs[::-1]])
  rr = np.stack([rs, rs])
  out = jax.vmap(jax.vmap(lambda x, r: OPS[op](x, r)))(xx, rr)
  for i in range(2):
    for j in range(v):
      np.testing.assert_array_equal(out[i, j], OPS[op](xx[i, j], rr[i, j]))
  # grad of vmap.
  g = jax.grad(lambda x: jnp.sum(jax.vmap(OPS[op])(x, rs) ** 2))(xs)
  np.testing.assert_allclose(g, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("op", list(OPS))
def test_checkpoint(op, assert_same_gradient):
  x, rois = _inputs(1, "NCHW", "indexed")
  loss = lambda x: jnp.sum(jnp.sin(OPS[op](x, rois)))
  assert_same_gradient(jax.grad(jax.checkpoint(loss))(x), jax.grad(loss)(x))


@pytest.mark.parametrize("op", _ops())
@pytest.mark.parametrize("layout", ["NCHW", pytest.param("NHWC", marks=pytest.mark.slow)])
def test_grad_of_grad_matches_xla(op, layout):
  """Hessian-vector products through the kernel's backward equal those of
  the pure-JAX version (plain autodiff)."""
  x, rois = _inputs(2, layout, "indexed")
  direction = np.random.default_rng(3).standard_normal(x.shape).astype(np.float32)

  def hvp(implementation):
    loss = lambda x: jnp.sum(OPS[op](x, rois, layout=layout, implementation=implementation) ** 3)
    return jax.grad(lambda x: jnp.vdot(jax.grad(loss)(x), direction))(x)

  np.testing.assert_allclose(hvp("ffi"), hvp("xla"), rtol=1e-5, atol=1e-5)


def test_roi_pool_rois_get_zero_cotangent():
  x, rois = _inputs(4, "NCHW", "indexed")
  g = jax.grad(lambda r: jnp.sum(jax_roi.roi_pool(x, r, 2)))(rois)
  np.testing.assert_array_equal(g, np.zeros_like(rois))


def test_default_implementation_uses_the_kernel():
  """On the CPU (and CUDA, where compiled) the default is the kernel."""
  x, rois = _inputs(0, "NCHW", "indexed")
  text = _compiled_text(lambda x, r: jax_roi.roi_pool(x, r, 2), x, rois)
  assert 'custom_call_target="jax_roi_roi_pool_fwd_v1"' in text
  text = _compiled_text(lambda x, r: jax_roi.roi_pool(x, r, 2, implementation="xla"), x, rois)
  assert "jax_roi_" not in text


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CUDA backward sums with atomics")
def test_backward_is_deterministic():
  x, rois = _inputs(7, "NCHW", "indexed", k=40)
  rois[:, 0] = 0  # many overlapping RoIs on one image
  g = jax.jit(jax.grad(lambda x: jnp.sum(jax_roi.roi_pool(x, rois, 4) ** 2)))
  first = np.asarray(g(x))
  for _ in range(3):
    np.testing.assert_array_equal(np.asarray(g(x)), first)


@pytest.mark.parametrize("op", _ops(BOX_GRAD_OPS))
@pytest.mark.parametrize(
  "fmt,in_axes",
  # The default run: every in_axes with indexed RoIs, mapped features and
  # RoIs with batched ones; the rest is slow.
  [
    pytest.param(fmt, in_axes, marks=_slow_unless(fmt == "indexed" or in_axes == (0, 0)))
    for fmt in ("indexed", "batched")
    for in_axes in IN_AXES
  ],
)
def test_vmap_of_box_gradients(op, fmt, in_axes):
  """Feature and box gradients under vmap equal the per-example ones."""
  v = 2
  xs, rs = zip(*[_inputs(20 + s, "NCHW", fmt) for s in range(v)])
  xs, rs = np.stack(xs), np.stack(rs)
  x_arg = xs if in_axes[0] == 0 else xs[0]
  r_arg = rs if in_axes[1] == 0 else rs[0]
  loss = lambda x, r: jnp.sum(OPS[op](x, r) ** 2)
  gx, gr = jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=in_axes)(x_arg, r_arg)
  for i in range(v):
    ex, er = jax.grad(loss, argnums=(0, 1))(
      xs[i] if in_axes[0] == 0 else xs[0], rs[i] if in_axes[1] == 0 else rs[0]
    )
    np.testing.assert_allclose(gx[i], ex, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gr[i], er, rtol=1e-5, atol=1e-5)


def test_rois_not_differentiated_skip_the_box_gradient():
  """Without a rois cotangent the box-gradient kernel does not run (it is
  dead code in the compiled program), and likewise the feature gradient."""
  x, rois = _inputs(8, "NCHW", "indexed")
  text = _compiled_text(jax.grad(lambda x: jnp.sum(OPS["roi_align"](x, rois))), x)
  assert "jax_roi_roi_align_box_grad" not in text
  assert "jax_roi_roi_align_bwd" in text
  text = _compiled_text(jax.grad(lambda r: jnp.sum(OPS["roi_align"](x, r))), rois)
  assert "jax_roi_roi_align_box_grad" in text
  assert "jax_roi_roi_align_bwd" not in text


@pytest.mark.slow
def test_perturbation_patterns_share_cached_traces():
  """Regression: differentiating w.r.t. (features, boxes) and then w.r.t. the
  features only, with the same shapes in one process, failed inside jax's
  custom_vjp (the residuals' structure depended on which inputs were
  perturbed, and jax reused a cached forward trace of the other pattern).
  This sequence of tests reproduced it in a fresh process."""
  import subprocess
  import sys

  keys = (
    "test_grad_of_grad or test_vmap_of_grad_and or test_vmap_of_box or test_rois_not_differentiated"
  )
  proc = subprocess.run(
    [
      sys.executable,
      "-P",  # the installed jax_roi, not the source tree (in CI it has no extension)
      "-m",
      "pytest",
      "-q",
      "-x",
      "-p",
      "no:xdist",
      "-p",
      "no:cacheprovider",
      "-m",
      "not slow",
      "-k",
      keys,
      __file__,
    ],
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
