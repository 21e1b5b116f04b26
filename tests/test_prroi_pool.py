"""prroi_pool: the float64 quadrature reference (tests/loop_reference.py),
exact properties of the integral (constant maps, the fade past the edge,
continuity in the boxes, additivity of bins), box gradients against finite
differences of the reference and of the op, dtypes, layouts, formats,
hostile input, transforms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import loop_reference as ref
import numpy as np
import pytest
from helpers import DTYPES, random_features, random_rois, stable_seed
from jax.test_util import check_grads

import jax_roi

LAYOUTS = ("NCHW", "NHWC")
IMPLEMENTATIONS = ("ffi", "xla")
SIZE, SCALE = (3, 4), 0.5
SLOW = pytest.mark.slow  # the pure-JAX version compiles in seconds per configuration


def _op(x, rois, size=SIZE, scale=SCALE, **kw):
  return jax_roi.prroi_pool(x, rois, size, scale, **kw)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fmt", ("indexed", "batched"))
def test_matches_quadrature_reference_float64(x64, fmt, layout, implementation):
  rng = np.random.default_rng(stable_seed("prroi", fmt, layout))
  x = random_features(rng, 2, 3, 9, 11, layout, np.float64)
  rois = random_rois(rng, fmt, 2, 8, 9, 11, SCALE, False)
  out = _op(x, rois, layout=layout, implementation=implementation)
  expected = ref.prroi_pool(x, rois, SIZE, SCALE, layout)
  assert out.shape == expected.shape and out.dtype == np.float64
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_dtypes_against_the_reference(dtype, layout):
  """float32 boxes; half-precision features are computed in float32 and
  rounded once."""
  rng = np.random.default_rng(stable_seed("prroi", dtype, layout))
  x = random_features(rng, 2, 4, 10, 8, layout, DTYPES[dtype])
  rois = random_rois(rng, "indexed", 2, 9, 10, 8, SCALE, False).astype(np.float32)
  with jax.enable_x64(dtype == "float64"):
    out = np.asarray(_op(x, rois, layout=layout)).astype(np.float64)
  expected = ref.prroi_pool(np.asarray(x, np.float64), rois, SIZE, SCALE, layout)
  tol = {"float16": 4e-3, "bfloat16": 3e-2}.get(dtype, 2e-5)
  np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)


def test_kernel_equals_pure_jax_float32():
  rng = np.random.default_rng(5)
  x = random_features(rng, 2, 5, 12, 13)
  rois = random_rois(rng, "indexed", 2, 16, 12, 13, SCALE, True).astype(np.float32)
  a = _op(x, rois, implementation="ffi")
  b = _op(x, rois, implementation="xla")
  np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


def test_exact_properties_of_the_integral(x64):
  """A constant map pools to its value wherever the bin stays >= 1 pixel
  from the edge (the surface is constant there); a bin wholly beyond one
  pixel past the edge pools 0; the surface fades linearly in between; two
  bins side by side average to the bin that covers both."""
  c = 2.5
  x = np.full((1, 1, 8, 10), c)
  inside = np.array([[0, 1.0, 1.0, 8.5, 6.0], [0, 2.25, 3.5, 2.75, 4.0]])
  np.testing.assert_allclose(jax_roi.prroi_pool(x, inside, (2, 3)), c, rtol=1e-13)
  outside = np.array([[0, 11.0, 0.0, 15.0, 7.0], [0, -9.0, -9.0, -1.0, -1.0]])
  np.testing.assert_array_equal(jax_roi.prroi_pool(x, outside, (2, 3)), 0)
  # Past the right edge (column 9) the surface is c * (10 - x) on [9, 10].
  edge = np.array([[0, 9.0, 2.0, 10.0, 3.0]])
  np.testing.assert_allclose(jax_roi.prroi_pool(x, edge, 1), c / 2, rtol=1e-13)
  rng = np.random.default_rng(2)
  y = random_features(rng, 1, 3, 9, 11, dtype=np.float64)
  box = np.array([[0, 0.7, 1.3, 8.9, 7.4]])
  halves = jax_roi.prroi_pool(y, box, (1, 2))
  whole = jax_roi.prroi_pool(y, box, 1)
  np.testing.assert_allclose(halves.mean(axis=3), whole[..., 0], rtol=1e-12, atol=1e-12)


def test_continuous_in_the_boxes(x64):
  """No quantization: moving a corner across pixel boundaries changes the
  output by O(eps), unlike roi_pool and roi_align's adaptive grid."""
  rng = np.random.default_rng(3)
  x = random_features(rng, 1, 2, 9, 9, dtype=np.float64)
  for edge in (2.0, 3.0, 4.5, 9.0, -1.0):
    lo = jax_roi.prroi_pool(x, np.array([[0, 1.0, 1.0, edge + 3.0, edge - 1e-9]]), 2)
    hi = jax_roi.prroi_pool(x, np.array([[0, 1.0, 1.0, edge + 3.0, edge + 1e-9]]), 2)
    assert np.abs(np.asarray(lo) - np.asarray(hi)).max() < 1e-7


@pytest.mark.parametrize(
  "fmt,layout,implementation",
  [
    ("indexed", "NCHW", "ffi"),
    ("batched", "NHWC", "ffi"),
    pytest.param("indexed", "NHWC", "xla", marks=SLOW),
    pytest.param("batched", "NCHW", "xla", marks=SLOW),
  ],
)
def test_box_gradient_against_finite_differences_of_the_reference(x64, fmt, layout, implementation):
  """The exact derivative of the integral, against central differences of
  the independent quadrature reference (float64)."""
  rng = np.random.default_rng(stable_seed("prroi-fd", fmt, layout))
  x = random_features(rng, 2, 3, 8, 9, layout, np.float64)
  rois = random_rois(rng, fmt, 2, 4, 8, 9, SCALE, False, padding=0.0)
  boxes = rois[..., -4:]
  # Boxes at least 0.2 pixel wide, off the exact kinks (integer feature coordinates).
  boxes[..., 2:] = np.maximum(boxes[..., 2:], boxes[..., :2] + 0.4 / SCALE)
  boxes += 0.0123
  cot = rng.standard_normal(ref.prroi_pool(x, rois, SIZE, SCALE, layout).shape)
  grad = jax.grad(lambda r: jnp.sum(_op(x, r, layout=layout, implementation=implementation) * cot))(
    rois
  )
  eps = 1e-6
  fd = np.zeros_like(rois)
  for idx in np.ndindex(rois.shape[:-1]):
    for j in range(rois.shape[-1] - 4, rois.shape[-1]):
      plus, minus = rois.copy(), rois.copy()
      plus[idx + (j,)] += eps
      minus[idx + (j,)] -= eps
      fd[idx + (j,)] = np.sum(
        (
          ref.prroi_pool(x, plus, SIZE, SCALE, layout)
          - ref.prroi_pool(x, minus, SIZE, SCALE, layout)
        )
        * cot
      ) / (2 * eps)
  np.testing.assert_allclose(np.asarray(grad), fd, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
  "layout,implementation", [("NCHW", "ffi"), ("NHWC", "ffi"), ("NHWC", "xla")]
)
def test_gradients_against_finite_differences(x64, layout, implementation):
  """Features and all four box coordinates, float64 (jax's check_grads)."""
  rng = np.random.default_rng(stable_seed("prroi-cg", layout))
  x = random_features(rng, 2, 2, 8, 9, layout, np.float64)
  rois = random_rois(rng, "indexed", 2, 5, 8, 9, SCALE, False, padding=0.0)
  rois[:, 3:] = np.maximum(rois[:, 3:], rois[:, 1:3] + 1.0) + 0.0123
  index, boxes = rois[:, :1], rois[:, 1:]
  f = lambda x, b: _op(
    x, jnp.concatenate([index, b], 1), layout=layout, implementation=implementation
  )
  check_grads(f, (x, boxes), order=1, modes=["rev"], eps=1e-6, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fmt", ["indexed", pytest.param("batched", marks=SLOW)])
def test_box_gradient_kernel_equals_pure_jax(fmt):
  """Boxes on whole and half pixels: bin edges on grid points, where each
  edge's derivative must come from one pixel cell."""
  rng = np.random.default_rng(21)
  x = random_features(rng, 2, 3, 11, 12)
  rois = random_rois(rng, fmt, 2, 6, 11, 12, SCALE, False).astype(np.float32)
  cot = rng.standard_normal(_op(x, rois).shape).astype(np.float32)
  grads = [
    jax.grad(lambda x, r: jnp.sum(_op(x, r, implementation=i) * cot), argnums=(0, 1))(x, rois)
    for i in IMPLEMENTATIONS
  ]
  np.testing.assert_allclose(grads[0][0], grads[1][0], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(grads[0][1], grads[1][1], rtol=1e-3, atol=1e-3)


def test_zero_area_and_inverted_boxes():
  """roi_w = max(x2 - x1, 0): a zero-width, zero-height or inverted box
  outputs 0, with zero gradients."""
  rng = np.random.default_rng(6)
  x = random_features(rng, 1, 2, 8, 8)
  rois = np.array([[0, 3, 2, 3, 6], [0, 2, 4, 6, 4], [0, 6, 2, 2, 6], [0, 2, 6, 6, 2]], np.float32)
  for impl in IMPLEMENTATIONS:
    out = jax_roi.prroi_pool(x, rois, 2, implementation=impl)
    np.testing.assert_array_equal(out, 0)
    gx, gr = jax.grad(
      lambda x, r: jnp.sum(jax_roi.prroi_pool(x, r, 2, implementation=impl)), argnums=(0, 1)
    )(x, rois)
    np.testing.assert_array_equal(gx, 0)
    np.testing.assert_array_equal(gr, 0)


def test_hostile_boxes():
  """NaN/inf corners, huge boxes (bounded work): finite outputs and
  gradients, zeros for non-finite boxes, kernel == pure JAX."""
  rng = np.random.default_rng(4)
  x = random_features(rng, 2, 3, 9, 9)
  rois = random_rois(rng, "indexed", 2, 24, 9, 9, 1.0, True).astype(np.float32)
  for col, value in [
    (1, np.nan),
    (2, np.inf),
    (3, 1e30),
    (4, -np.inf),
    (3, 3e9),
    (4, 1e38),
    (1, -1e30),
    (2, -3e38),
  ]:
    rois[rng.integers(0, 24, 2), col] = value
  non_finite = ~np.isfinite(rois[:, 1:]).all(1)
  outs = []
  for impl in IMPLEMENTATIONS:
    out = jax_roi.prroi_pool(x, rois, 3, implementation=impl)
    assert np.isfinite(np.asarray(out)).all()
    np.testing.assert_array_equal(np.asarray(out)[non_finite], 0)
    outs.append(out)
    gx, gr = jax.grad(
      lambda x, r: jnp.sum(jax_roi.prroi_pool(x, r, 3, implementation=impl)), argnums=(0, 1)
    )(x, rois)
    assert np.isfinite(np.asarray(gx)).all() and np.isfinite(np.asarray(gr)).all()
    np.testing.assert_array_equal(np.asarray(gr)[non_finite], 0)
  np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=1e-4)


def test_empty_inputs_and_padding():
  x = np.ones((2, 3, 5, 5), np.float32)
  assert jax_roi.prroi_pool(x, np.zeros((0, 5), np.float32), 2).shape == (0, 3, 2, 2)
  assert jax_roi.prroi_pool(x, np.zeros((2, 0, 4), np.float32), 2).shape == (2, 0, 3, 2, 2)
  pad = np.array([[-1, 1, 1, 3, 3], [2, 1, 1, 3, 3], [np.nan, 1, 1, 3, 3]], np.float32)
  for impl in IMPLEMENTATIONS:
    out = jax_roi.prroi_pool(x, pad, 2, implementation=impl)
    np.testing.assert_array_equal(out, np.zeros((3, 3, 2, 2), np.float32))
    g = jax.grad(lambda r: jnp.sum(jax_roi.prroi_pool(x, r, 2, implementation=impl)))(pad)
    np.testing.assert_array_equal(g, 0)


def test_yxyx_box_order():
  rng = np.random.default_rng(7)
  x = random_features(rng, 2, 2, 8, 9)
  rois = random_rois(rng, "indexed", 2, 5, 8, 9, 1.0, False).astype(np.float32)
  swapped = rois[:, [0, 2, 1, 4, 3]]
  np.testing.assert_array_equal(
    jax_roi.prroi_pool(x, swapped, 2, box_order="yxyx"), jax_roi.prroi_pool(x, rois, 2)
  )


def test_argument_validation():
  x = np.ones((1, 2, 5, 5), np.float32)
  r = np.zeros((1, 5), np.float32)
  with pytest.raises(ValueError, match=r"rois must have shape"):
    jax_roi.prroi_pool(x, np.zeros((1, 6), np.float32), 2)
  with pytest.raises(ValueError, match="spatial_scale"):
    jax_roi.prroi_pool(x, r, 2, -1.0)
  with pytest.raises(ValueError, match="output_size"):
    jax_roi.prroi_pool(x, r, 0)
  with pytest.raises(ValueError, match="layout"):
    jax_roi.prroi_pool(x, r, 2, layout="HWC")
  with pytest.raises(TypeError, match="features"):
    jax_roi.prroi_pool(x.astype(np.int32), r, 2)


@pytest.mark.parametrize(
  "fmt,in_axes",
  [
    ("indexed", (0, None)),
    pytest.param("batched", (None, 0), marks=SLOW),
    pytest.param("indexed", (0, 0), marks=SLOW),
  ],
)
def test_vmap_is_one_launch_with_box_gradients(fmt, in_axes):
  v = 2
  rng = np.random.default_rng(30)
  xs = np.stack([random_features(rng, 2, 3, 8, 9) for _ in range(v)])
  rs = np.stack(
    [random_rois(rng, fmt, 2, 4, 8, 9, SCALE, False).astype(np.float32) for _ in range(v)]
  )
  x_arg = xs if in_axes[0] == 0 else xs[0]
  r_arg = rs if in_axes[1] == 0 else rs[0]
  f = lambda x, r: _op(x, r)
  out = jax.vmap(f, in_axes=in_axes)(x_arg, r_arg)
  loss = lambda x, r: jnp.sum(f(x, r) ** 2)
  gx, gr = jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=in_axes)(x_arg, r_arg)
  for i in range(v):
    xi = xs[i] if in_axes[0] == 0 else xs[0]
    ri = rs[i] if in_axes[1] == 0 else rs[0]
    np.testing.assert_array_equal(out[i], f(xi, ri))
    ex, er = jax.grad(loss, argnums=(0, 1))(xi, ri)
    np.testing.assert_allclose(gx[i], ex, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gr[i], er, rtol=1e-5, atol=1e-5)
  text = jax.jit(jax.vmap(f, in_axes=in_axes)).lower(x_arg, r_arg).compile().as_text()
  assert text.count('custom_call_target="jax_roi_prroi_pool_fwd_v1"') == 1
  assert "while" not in text


@pytest.mark.slow  # (~10 s)
def test_grad_of_grad():
  rng = np.random.default_rng(31)
  x = random_features(rng, 2, 3, 8, 9)
  rois = random_rois(rng, "indexed", 2, 5, 8, 9, SCALE, False).astype(np.float32)
  direction = rng.standard_normal(x.shape).astype(np.float32)

  def hvp(impl):
    loss = lambda x: jnp.sum(_op(x, rois, implementation=impl) ** 3)
    return jax.grad(lambda x: jnp.vdot(jax.grad(loss)(x), direction))(x)

  np.testing.assert_allclose(hvp("ffi"), hvp("xla"), rtol=1e-4, atol=1e-4)
  box_loss = lambda r: jnp.sum(_op(x, r) ** 2)
  with pytest.raises(NotImplementedError, match="prroi_pool"):
    jax.grad(lambda r: jnp.sum(jax.grad(box_loss)(r) ** 2))(rois)


def test_backward_is_deterministic():
  rng = np.random.default_rng(32)
  x = random_features(rng, 1, 16, 12, 12, "NHWC")
  rois = random_rois(rng, "indexed", 1, 40, 12, 12, 1.0, False, padding=0.0).astype(np.float32)
  g = jax.jit(jax.grad(lambda x, r: jnp.sum(_op(x, r, layout="NHWC") ** 2), argnums=(0, 1)))
  first = [np.asarray(a) for a in g(x, rois)]
  for _ in range(2):
    for a, b in zip(g(x, rois), first):
      np.testing.assert_array_equal(np.asarray(a), b)


def test_ffi_targets_return_errors_naming_the_argument():
  """The targets, called directly with inconsistent operands or attributes,
  fail with an error naming the argument (never an abort)."""
  x = jnp.ones((1, 2, 5, 5), jnp.float32)
  r = jnp.zeros((1, 5), jnp.float32)
  attrs = dict(
    spatial_scale=np.float64(1), pooled_height=np.int64(2), pooled_width=np.int64(2), layout="NCHW"
  )

  def call(target, operands, shape, dtype=jnp.float32, **kw):
    out = jax.ShapeDtypeStruct(shape, dtype)
    return jax.ffi.ffi_call(target, out)(*operands, **dict(attrs, **kw))

  with pytest.raises(Exception, match="output must have shape"):
    call("jax_roi_prroi_pool_fwd_v1", (x, r), (1, 2, 3, 3))
  with pytest.raises(Exception, match="layout"):
    call("jax_roi_prroi_pool_fwd_v1", (x, r), (1, 2, 2, 2), layout="CHW")
  with pytest.raises(Exception, match="spatial_scale"):
    call("jax_roi_prroi_pool_fwd_v1", (x, r), (1, 2, 2, 2), spatial_scale=np.float64(-1))
  with pytest.raises(Exception, match="rois must have shape"):
    call("jax_roi_prroi_pool_fwd_v1", (x, jnp.zeros((1, 6))), (1, 2, 2, 2))
  with pytest.raises(Exception, match="grad_features must have dtype"):
    call(
      "jax_roi_prroi_pool_bwd_v1",
      (jnp.ones((1, 2, 2, 2), jnp.float16), r),
      (1, 2, 5, 5),
      jnp.float16,
    )
  with pytest.raises(Exception, match="grad_rois must have shape"):
    call("jax_roi_prroi_pool_box_grad_v1", (x, r, jnp.ones((1, 2, 2, 2))), (1, 4))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nchw_and_nhwc_give_the_same_bits(dtype):
  """The NCHW kernels copy each image to channels-last (forward) and sum the
  gradient in channels-last scratch (backward), with every element's terms in
  the NHWC kernels' order: outputs and feature gradients equal the NHWC ones
  bit for bit. Three images, the last without RoIs, padding rows, 37
  channels (register tiles and their edges)."""
  rng = np.random.default_rng(33)
  n, c, h, w = 3, 37, 19, 23
  x = rng.standard_normal((n, c, h, w)).astype(dtype)
  rois = random_rois(rng, "indexed", 2, 50, h, w, 1.0, False, padding=0.1).astype(dtype)
  rois[rois[:, 0] == 2, 0] = -1  # (a padding index of 2 images names the third here)
  cot = rng.standard_normal((len(rois), c, *SIZE)).astype(dtype)
  to_nhwc = lambda a: np.ascontiguousarray(np.moveaxis(a, 1, -1))  # noqa: E731

  def value_and_grad(features, layout, cotangent):
    loss = lambda f: jnp.sum(_op(f, rois, layout=layout, implementation="ffi") * cotangent)  # noqa: E731
    out = _op(features, rois, layout=layout, implementation="ffi")
    return np.asarray(out), np.asarray(jax.grad(loss)(features))

  with jax.enable_x64(dtype == np.float64):
    out_nchw, grad_nchw = value_and_grad(x, "NCHW", cot)
    out_nhwc, grad_nhwc = value_and_grad(to_nhwc(x), "NHWC", to_nhwc(cot))
  np.testing.assert_array_equal(out_nchw, np.moveaxis(out_nhwc, -1, 1))
  np.testing.assert_array_equal(grad_nchw, np.moveaxis(grad_nhwc, -1, 1))
  assert np.abs(grad_nchw[:2]).max() > 0
  np.testing.assert_array_equal(grad_nchw[2], 0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_float32_channels_do_not_depend_on_the_channel_count(layout):
  """float32 with 141 channels: the CPU forward sums blocks of 64 channels
  (32 without AVX) in vector registers over a bin's pixels, the rest one
  channel at a time. Each channel's output equals, bit for bit, the op on
  that channel alone (the one-at-a-time sums), and the whole output the
  float64 quadrature reference."""
  rng = np.random.default_rng(14)
  n, c, h, w = 2, 141, 13, 17
  x = rng.standard_normal((n, c, h, w)).astype(np.float32)
  rois = random_rois(rng, "indexed", n, 12, h, w, SCALE, False, padding=0.1).astype(np.float32)
  to = lambda a: a if layout == "NCHW" else np.ascontiguousarray(np.moveaxis(a, 1, -1))  # noqa: E731
  of = lambda a: a if layout == "NCHW" else np.moveaxis(a, -1, 1)  # noqa: E731
  out = of(np.asarray(_op(to(x), rois, layout=layout, implementation="ffi")))
  expected = ref.prroi_pool(x.astype(np.float64), rois, SIZE, SCALE, "NCHW")
  np.testing.assert_allclose(out, expected, rtol=2e-5, atol=2e-5)
  assert np.abs(out).max() > 0.1
  for ch in (0, 31, 32, 63, 64, 127, 128, 140):
    alone = _op(x[:, ch : ch + 1], rois, implementation="ffi")
    np.testing.assert_array_equal(out[:, ch : ch + 1], np.asarray(alone))
