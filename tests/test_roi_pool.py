"""roi_pool: torchvision's golden vectors, the float64 loop reference,
property tests, dtypes, layouts, RoI formats and padding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import loop_reference as ref
import numpy as np
import pytest
from helpers import (
  DTYPES,
  draw_dims,
  indexed_rois,
  nchw_of,
  nchw_to,
  pooled_from_nchw,
  pooled_to_nchw,
  random_boxes,
  random_case,
  random_features,
  random_rois,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import jax_roi

LAYOUTS = ("NCHW", "NHWC")
IMPLEMENTATIONS = ("ffi", "xla")
GOLDEN = [
  (scale, size, dtype)
  for scale in ("1.0", "0.5", "0.25")
  for size in ("3x3", "2x4")
  for dtype in ("float32", "float64")
]
# The pure-JAX version compiles slowly: one scale in the default run, every
# scale under the slow marker (as roi_align's golden test does).
GOLDEN_CASES = [
  pytest.param(
    *case, layout, impl, marks=[pytest.mark.slow] if impl == "xla" and case[0] != "0.5" else []
  )
  for case in GOLDEN
  for layout in LAYOUTS
  for impl in IMPLEMENTATIONS
]


@pytest.mark.parametrize("scale,size,dtype,layout,implementation", GOLDEN_CASES)
def test_golden_torchvision(golden, scale, size, dtype, layout, implementation):
  """Forward bit for bit, gradient up to summation order."""
  name = f"roi_pool_s{scale}_{size}_{dtype}"
  output_size = tuple(int(v) for v in size.split("x"))
  with jax.enable_x64(dtype == "float64"):
    x = nchw_to(golden["features"].astype(dtype), layout)
    rois = golden[f"rois_s{scale}"].astype(dtype)
    cot = pooled_from_nchw(golden[f"{name}_cot"], layout)

    def pool(x):
      return jax_roi.roi_pool(
        x,
        rois,
        output_size,
        spatial_scale=float(scale),
        layout=layout,
        implementation=implementation,
      )

    out = pool(x)
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(pooled_to_nchw(out, layout), golden[f"{name}_out"])
    grad = jax.grad(lambda x: jnp.sum(pool(x) * cot))(x)
    assert grad.dtype == np.dtype(dtype)
    tol = 1e-6 if dtype == "float32" else 1e-13
    np.testing.assert_allclose(nchw_of(grad, layout), golden[f"{name}_grad"], rtol=tol, atol=tol)


# README / anchors.md section 4: x = arange(2*2*6*8).reshape(2, 2, 6, 8),
# 2x2 output, channel 0, torchvision 0.29.1.
EDGE_CASES = [
  ((0, 0, 0, 7, 5), [19, 23, 43, 47]),  # whole map
  ((0, 10, 10, 20, 20), [0, 0, 0, 0]),  # outside: empty bins
  ((0, 2, 2, 2, 2), [18, 18, 18, 18]),  # zero size: 1x1
  ((0, -3, -3, 1, 1), [0, 0, 0, 9]),  # negative start
  ((1, 1, 1, 4, 3), [114, 116, 122, 124]),  # image 1
  ((0, 5, 4, 2, 1), [37, 37, 37, 37]),  # inverted: 1x1 at the start
  ((0, 1.5, 1.5, 3.5, 3.5), [27, 28, 35, 36]),  # halves round away from 0
  ((0, 2.5, 0.5, 4.5, 2.5), [20, 21, 28, 29]),
]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("roi,expected", EDGE_CASES)
def test_edge_case_table(roi, expected, layout, implementation):
  x = np.arange(2 * 2 * 6 * 8, dtype=np.float32).reshape(2, 2, 6, 8)
  out = jax_roi.roi_pool(
    nchw_to(x, layout), np.array([roi], np.float32), 2, layout=layout, implementation=implementation
  )
  out = np.asarray(pooled_to_nchw(out, layout))
  np.testing.assert_array_equal(out[0, 0].ravel(), np.array(expected, np.float32))


def _case(seed, layout, fmt, dtype, box_dtype, **kw):
  return random_case(seed, layout, fmt, dtype, box_dtype, **{"k": 7, **kw})


@st.composite
def pool_problems(draw, hostile=True):
  n, c, h, w, k, output_size, scale = draw_dims(
    draw, st, 12, 10, 5, [1.0, 0.5, 0.25, 1 / 16, 0.3, 2.0, 0.0]
  )
  layout = draw(st.sampled_from(LAYOUTS))
  fmt = draw(st.sampled_from(["indexed", "batched"]))
  box_order = draw(st.sampled_from(["xyxy", "yxyx"]))
  seed = draw(st.integers(0, 2**32 - 1))
  rng = np.random.default_rng(seed)
  x = random_features(rng, n, c, h, w, layout)
  if rng.random() < 0.2:  # ties and NaN features
    x = np.round(x).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
  rois = random_rois(rng, fmt, n, k, h, w, scale, hostile)
  if box_order == "yxyx":
    perm = [0, 2, 1, 4, 3] if fmt == "indexed" else [1, 0, 3, 2]
    rois = rois[..., perm]
  return x, rois.astype(np.float32), output_size, scale, layout, box_order


@pytest.mark.slow  # (~6 s; kernel against the float64 loop reference)
@given(pool_problems())
def test_property_kernel_equals_loop_reference(problem):
  x, rois, output_size, scale, layout, box_order = problem
  expected, _ = ref.roi_pool(x, rois, output_size, scale, layout, box_order)
  out = jax_roi.roi_pool(
    x,
    rois,
    output_size,
    spatial_scale=scale,
    layout=layout,
    box_order=box_order,
    implementation="ffi",
  )
  np.testing.assert_array_equal(np.asarray(out), expected.astype(np.float32))


@settings(max_examples=10)  # the pure-JAX version compiles slowly per shape
@given(pool_problems(hostile=True))
def test_property_xla_equals_kernel(problem):
  x, rois, output_size, scale, layout, box_order = problem
  kwargs = dict(spatial_scale=scale, layout=layout, box_order=box_order)
  out = jax_roi.roi_pool(x, rois, output_size, implementation="ffi", **kwargs)
  out_xla = jax_roi.roi_pool(x, rois, output_size, implementation="xla", **kwargs)
  np.testing.assert_array_equal(np.asarray(out_xla), np.asarray(out))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fmt", ["indexed", "batched"])
def test_check_grads_float64(x64, layout, fmt):
  """Reverse-mode gradients, and gradients of gradients, by finite differences."""
  x, rois = _case(
    3, layout, fmt, np.float64, np.float64, n=2, c=2, h=6, w=7, k=4, scale=1.0, padding=0.25
  )
  check_grads(
    lambda f: jax_roi.roi_pool(f, rois, (3, 2), layout=layout),
    (x,),
    order=2,
    modes=["rev"],
    eps=1e-5,
  )


def test_layouts_and_formats_agree():
  rng = np.random.default_rng(0)
  x = random_features(rng, 2, 5, 10, 12)
  boxes = random_boxes(rng, 2 * 6, 10, 12).reshape(2, 6, 4).astype(np.float32)
  batched = jax_roi.roi_pool(x, boxes, (3, 4))
  indexed_rois_ = np.concatenate(
    [np.repeat(np.arange(2.0), 6)[:, None], boxes.reshape(-1, 4)], 1
  ).astype(np.float32)
  indexed = jax_roi.roi_pool(x, indexed_rois_, (3, 4))
  assert batched.shape == (2, 6, 5, 3, 4)
  np.testing.assert_array_equal(np.asarray(batched).reshape(12, 5, 3, 4), indexed)
  nhwc = jax_roi.roi_pool(x.transpose(0, 2, 3, 1), boxes, (3, 4), layout="NHWC")
  assert nhwc.shape == (2, 6, 3, 4, 5)
  np.testing.assert_array_equal(np.moveaxis(np.asarray(nhwc), -1, -3), batched)
  yx = jax_roi.roi_pool(x, boxes[..., [1, 0, 3, 2]], (3, 4), box_order="yxyx")
  np.testing.assert_array_equal(yx, batched)


def test_empty_rois():
  x = np.ones((2, 3, 5, 5), np.float32)
  out = jax_roi.roi_pool(x, np.zeros((0, 5), np.float32), (2, 3))
  assert out.shape == (0, 3, 2, 3)
  out = jax_roi.roi_pool(x, np.zeros((2, 0, 4), np.float32), 2, layout="NCHW")
  assert out.shape == (2, 0, 3, 2, 2)
  grad = jax.grad(lambda f: jnp.sum(jax_roi.roi_pool(f, np.zeros((0, 5), np.float32), 2)))(x)
  np.testing.assert_array_equal(grad, np.zeros_like(x))
  xla = jax_roi.roi_pool(x, np.zeros((0, 5), np.float32), 2, implementation="xla")
  assert xla.shape == (0, 3, 2, 2)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_padding_rows(implementation):
  """Out-of-range or NaN batch indices: zeros, no gradient, no other effect."""
  rng = np.random.default_rng(5)
  x = random_features(rng, 2, 3, 8, 8)
  good = np.array([[1, 0, 0, 7, 7], [0, 2, 1, 5, 6]], np.float32)
  bad = np.array(
    [
      [-1, 0, 0, 7, 7],
      [2, 0, 0, 7, 7],
      [np.nan, 0, 0, 7, 7],
      [1e9, 0, 0, 7, 7],
      [-1e9, 0, 0, 3, 3],
      [np.inf, 0, 0, 3, 3],
    ],
    np.float32,
  )
  rois = np.concatenate([good[:1], bad, good[1:]])

  def pool(f):
    return jax_roi.roi_pool(f, rois, 2, implementation=implementation)

  out = np.asarray(pool(x))
  np.testing.assert_array_equal(out[1:-1], 0)
  np.testing.assert_array_equal(out[[0, -1]], jax_roi.roi_pool(x, good, 2))
  cot = np.zeros(out.shape, np.float32)
  cot[1:-1] = 1.0
  grad = jax.grad(lambda f: jnp.sum(pool(f) * cot))(x)
  np.testing.assert_array_equal(grad, 0)


def test_fractional_and_negative_fraction_batch_index():
  """torchvision truncates the index: 1.7 is image 1 and -0.5 image 0."""
  rng = np.random.default_rng(2)
  x = random_features(rng, 2, 2, 6, 6)
  box = [0.0, 0.0, 5.0, 5.0]
  out = jax_roi.roi_pool(x, np.array([[1.7] + box, [-0.5] + box], np.float32), 2)
  expected = jax_roi.roi_pool(x, np.array([[1.0] + box, [0.0] + box], np.float32), 2)
  np.testing.assert_array_equal(out, expected)


def test_nan_and_inf_features():
  """NaNs never win the max; a bin of -inf outputs -FLT_MAX, no gradient."""
  x = np.full((1, 1, 4, 4), -np.inf, np.float32)
  x[0, 0, 0, 0] = np.nan
  x[0, 0, 3, 3] = 2.0
  rois = np.array([[0, 0, 0, 1, 1], [0, 0, 0, 3, 3]], np.float32)
  for implementation in IMPLEMENTATIONS:
    out = np.asarray(jax_roi.roi_pool(x, rois, 1, implementation=implementation))
    assert out[0, 0, 0, 0] == -np.finfo(np.float32).max
    assert out[1, 0, 0, 0] == 2.0
    grad = jax.grad(lambda f: jnp.sum(jax_roi.roi_pool(f, rois, 1, implementation=implementation)))(
      x
    )
    expected = np.zeros_like(x)
    expected[0, 0, 3, 3] = 1.0
    np.testing.assert_array_equal(grad, expected)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision(dtype):
  """Half features pool in float32 and come back in their dtype; half RoIs
  are widened exactly."""
  rng = np.random.default_rng(4)
  x = random_features(rng, 2, 4, 9, 9, dtype=DTYPES[dtype])
  rois = indexed_rois(rng, random_boxes(rng, 6, 9, 9), 2).astype(np.float32)
  out = jax_roi.roi_pool(x, rois, 3)
  assert out.dtype == x.dtype
  expected = jax_roi.roi_pool(x.astype(np.float32), rois, 3)
  np.testing.assert_array_equal(np.asarray(out, np.float32), expected)
  half_rois = jax_roi.roi_pool(x, rois.astype(DTYPES[dtype]), 3)
  widened = jax_roi.roi_pool(x, rois.astype(DTYPES[dtype]).astype(np.float32), 3)
  np.testing.assert_array_equal(half_rois, widened)


def test_float64_boxes_with_float32_features(x64):
  """Coordinates are computed in the boxes' dtype."""
  rng = np.random.default_rng(6)
  x = random_features(rng, 1, 2, 20, 20)
  rois = indexed_rois(rng, random_boxes(rng, 30, 20, 20, 0.3), 1)
  out = jax_roi.roi_pool(x, rois, 5, spatial_scale=0.3)
  assert out.dtype == np.float32
  expected, _ = ref.roi_pool(x, rois, (5, 5), 0.3, coord_dtype=np.float64)
  np.testing.assert_array_equal(out, expected.astype(np.float32))


def test_huge_and_infinite_boxes_are_defined():
  x = np.arange(1 * 1 * 5 * 6, dtype=np.float32).reshape(1, 1, 5, 6)
  rois = np.array(
    [
      [0, -np.inf, -np.inf, np.inf, np.inf],
      [0, -1e30, 0, 1e30, 4],
      [0, 0, 0, 3e9, 3e9],
      [0, 1e30, 1e30, 2e30, 2e30],
    ],
    np.float32,
  )
  out = np.asarray(jax_roi.roi_pool(x, rois, 2))
  expected, _ = ref.roi_pool(x, rois, (2, 2))
  np.testing.assert_array_equal(out, expected)
  # The whole map lands in the last bin of an infinite box.
  assert out[0, 0, 1, 1] == 29.0
  np.testing.assert_array_equal(out[3], 0)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("channels", [32, 77])
@pytest.mark.parametrize("many_rois", [True, False])
@pytest.mark.parametrize("implementation", [None, "ffi"])
def test_wide_channels_equal_loop_reference(layout, channels, many_rois, implementation):
  """Channel counts that fill the CPU kernel's 32-channel vector blocks (and
  leave a tail), with ties, NaN, -inf and signed zeros: outputs and the
  gradient (which follows the argmax) equal the float64 loop reference. With
  many RoIs the NCHW kernel works on an NHWC copy of the map; one small RoI
  on a larger map is pooled straight from the NCHW planes. None: the CPU's
  backward, which finds the winners again in the features; "ffi": the
  backward through the forward's argmax. In NHWC float32 the CPU's backward
  adds into bins of at most 4 positions with masked vector adds and into
  larger ones with scatters; the RoIs here have both."""
  rng = np.random.default_rng(channels)
  n, h, w = 2, 23, 31
  x = np.round(rng.standard_normal((n, channels, h, w)) * 2).astype(np.float32)
  x[rng.random(x.shape) < 0.05] = np.nan
  x[rng.random(x.shape) < 0.05] = -np.inf
  x[rng.random(x.shape) < 0.1] = -0.0
  if many_rois:
    boxes = random_boxes(rng, 40, h, w, scale=1.0)
    rois = indexed_rois(rng, boxes, n, padding=0.1).astype(np.float32)
  else:
    rois = np.array([[1, 3.2, 4.0, 6.9, 8.1]], np.float32)
  x = nchw_to(x, layout)
  expected, argmax = ref.roi_pool(x, rois, (5, 4), 1.0, layout)
  op = lambda f: jax_roi.roi_pool(
    f, rois, (5, 4), 1.0, layout=layout, implementation=implementation
  )
  out = op(x)
  np.testing.assert_array_equal(np.asarray(out), expected.astype(np.float32))
  cot = rng.standard_normal(out.shape).astype(np.float32)
  grad = jax.jit(jax.grad(lambda f: jnp.sum(op(f) * cot)))(x)
  expected_grad = ref.roi_pool_grad(x.shape, rois, cot, argmax, layout)
  np.testing.assert_allclose(np.asarray(grad), expected_grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_float32_channels_do_not_depend_on_the_channel_count(layout):
  """float32 with 45 channels (the CPU kernel pools blocks of 32 channels in
  vector registers, the rest one by one): each channel's output and gradient
  equal, bit for bit, the op on that channel alone."""
  rng = np.random.default_rng(12)
  n, c, h, w = 2, 45, 17, 23
  x = np.round(rng.standard_normal((n, c, h, w)) * 3).astype(np.float32)  # ties
  rois = indexed_rois(rng, random_boxes(rng, 25, h, w, scale=1.0), n, padding=0.1)
  rois = rois.astype(np.float32)
  op = lambda f, lay: jax_roi.roi_pool(f, rois, (4, 3), 1.0, layout=lay, implementation="ffi")
  out = nchw_of(op(nchw_to(x, layout), layout), layout)
  grad = nchw_of(jax.grad(lambda f: jnp.sum(op(f, layout) ** 2))(nchw_to(x, layout)), layout)
  for ch in (0, 17, 31, 32, 44):
    alone = x[:, ch : ch + 1]
    np.testing.assert_array_equal(out[:, ch : ch + 1], np.asarray(op(alone, "NCHW")))
    grad_alone = jax.grad(lambda f: jnp.sum(op(f, "NCHW") ** 2))(alone)
    np.testing.assert_array_equal(grad[:, ch : ch + 1], np.asarray(grad_alone))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
  "dtype",
  # float32 in the default run; the other dtypes take the same kernel paths
  # (slow marker).
  [
    "float32",
    *(pytest.param(t, marks=pytest.mark.slow) for t in ("float64", "bfloat16", "float16")),
  ],
)
@pytest.mark.parametrize("many_rois", [True, False])
def test_cpu_backward_without_argmax_gives_the_argmax_backward_bits(x64, layout, dtype, many_rois):
  """On the CPU the default backward saves no argmax: it finds each bin's
  winner again in the features (on an NHWC copy of NCHW features when many
  RoIs read the map, else plane by plane). Its feature gradient, and the
  gradient of that gradient, equal bit for bit those through the forward's
  argmax (implementation="ffi"), with ties, NaN, -inf, empty and padding
  RoIs."""
  rng = np.random.default_rng(31)
  n, c, h, w = 2, 37, 19, 26
  x = np.round(rng.standard_normal((n, c, h, w)) * 2)
  x[rng.random(x.shape) < 0.05] = np.nan
  x[rng.random(x.shape) < 0.05] = -np.inf
  x = nchw_to(x.astype(dtype), layout)
  k = 30 if many_rois else 2
  rois = indexed_rois(rng, random_boxes(rng, k, h, w, scale=1.0), n, padding=0.2)
  rois[0, 1:] = [4.0, 4.0, 2.0, 2.0]  # empty
  rois = rois.astype(np.float32)
  op = lambda impl: (
    lambda f: jax_roi.roi_pool(f, rois, (4, 3), 1.0, layout=layout, implementation=impl)
  )
  cot = jnp.asarray(rng.standard_normal(op("ffi")(x).shape).astype(dtype))
  grads = {}
  for impl in (None, "ffi"):
    loss = lambda f, impl=impl: jnp.sum((op(impl)(f) * cot).astype(jnp.float32))
    g = jax.jit(jax.grad(loss))(x)
    gg = jax.jit(jax.grad(lambda f: jnp.sum(jnp.sin(jax.grad(loss)(f).astype(jnp.float32)))))
    grads[impl] = (np.asarray(g), np.asarray(gg(x)))
  assert np.any(grads["ffi"][0] != 0)
  for a, b in zip(grads[None], grads["ffi"]):
    np.testing.assert_array_equal(a, b)


def test_cpu_forward_saves_no_argmax():
  """The default CPU gradient's program: a forward without an argmax result
  and the backward from the features; deterministic=True and "ffi" keep the
  argmax targets."""
  rng = np.random.default_rng(2)
  x = rng.standard_normal((1, 8, 10, 12)).astype(np.float32)
  rois = np.array([[0, 1, 1, 8, 7], [0, 0, 2, 5, 9]], np.float32)

  def hlo(**kw):
    loss = lambda f: jnp.sum(jax_roi.roi_pool(f, rois, 3, **kw) ** 2)
    return jax.jit(jax.grad(loss)).lower(x).compile().as_text()

  text = hlo()
  assert "jax_roi_roi_pool_bwd_from_features_v1" in text
  assert "s32[2,8,3,3]" not in text  # no argmax anywhere
  for kw in ({"deterministic": True}, {"implementation": "ffi"}):
    text = hlo(**kw)
    assert "jax_roi_roi_pool_bwd_from_features_v1" not in text
    assert "s32[2,8,3,3]" in text
