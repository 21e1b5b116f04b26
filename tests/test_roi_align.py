"""roi_align (avg and max modes): torchvision's golden vectors, the float64
loop reference, box gradients, property tests, dtypes, layouts, formats."""

from __future__ import annotations

import time

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
  stable_seed,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import jax_roi

LAYOUTS = ("NCHW", "NHWC")
IMPLEMENTATIONS = ("ffi", "xla")


def _golden_cases(golden):
  return [str(c) for c in golden["cases"] if str(c).startswith("roi_align")]


def _parse(name):
  # roi_align_s{scale}_{PH}x{PW}_a{aligned}_sr{sr}_{dtype}
  _, _, scale, size, aligned, sr, dtype = name.split("_")
  return (
    float(scale[1:]),
    tuple(int(v) for v in size.split("x")),
    aligned == "a1",
    int(sr[2:]),
    dtype,
    scale[1:],
  )


@pytest.mark.parametrize("implementation", ["ffi", pytest.param("xla", marks=pytest.mark.slow)])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_golden_torchvision(golden, layout, implementation):
  """Every roi_align case of the golden file: the kernels' forward is bit
  for bit torchvision's, their feature gradient equal to float rounding. The
  pure-JAX version (slow to compile) is checked on one scale per option set."""
  cases = _golden_cases(golden)
  if implementation == "xla":
    cases = [c for c in cases if "_s0.5_3x3_" in c and c.endswith("float32")]
  for name in cases:
    scale, size, aligned, sr, dtype, scale_key = _parse(name)
    with jax.enable_x64(dtype == "float64"):
      x = nchw_to(golden["features"].astype(dtype), layout)
      rois = golden[f"rois_s{scale_key}"].astype(dtype)
      cot = pooled_from_nchw(golden[f"{name}_cot"], layout)

      def align(x):
        return jax_roi.roi_align(
          x,
          rois,
          size,
          spatial_scale=scale,
          sampling_ratio=sr,
          aligned=aligned,
          layout=layout,
          implementation=implementation,
        )

      out = np.asarray(pooled_to_nchw(align(x), layout))
      grad = nchw_of(jax.grad(lambda x: jnp.sum(align(x) * cot))(x), layout)
      if implementation == "ffi":
        np.testing.assert_array_equal(out, golden[f"{name}_out"], err_msg=name)
        tol = 1e-6 if dtype == "float32" else 1e-13
      else:  # XLA may contract and reorder: a tolerance, not bits.
        tol = 1e-5 if dtype == "float32" else 1e-12
        np.testing.assert_allclose(out, golden[f"{name}_out"], rtol=tol, atol=tol, err_msg=name)
      np.testing.assert_allclose(grad, golden[f"{name}_grad"], rtol=tol, atol=tol, err_msg=name)


# anchors.md section 4: x = arange(2*2*6*8).reshape(2, 2, 6, 8), 2x2
# output, channel 0, torchvision 0.29.1 (sr=2 not aligned, sr=2 aligned,
# adaptive aligned).
EDGE_CASES = [
  (
    (0, 0, 0, 7, 5),
    [11.75, 15.25, 31.75, 35.25],
    [7.25, 10.75, 27.25, 30.75],
    [7.4878, 10.9722, 27.2656, 30.75],
  ),
  ((0, 10, 10, 20, 20), [0] * 4, [0] * 4, [0] * 4),
  ((0, 2, 2, 2, 2), [20.25, 20.75, 24.25, 24.75], [13.5] * 4, [0] * 4),
  ((0, -3, -3, 1, 1), [0, 0, 0, 2.25], [0] * 4, [0] * 4),
  (
    (1, 1, 1, 4, 3),
    [109.75, 111.25, 117.75, 119.25],
    [105.25, 106.75, 113.25, 114.75],
    [105.25, 106.75, 113.25, 114.75],
  ),
  ((0, 5, 4, 2, 1), [39.25, 39.75, 43.25, 43.75], [25.75, 24.25, 13.75, 12.25], [0] * 4),
  ((0, 1.5, 1.5, 3.5, 3.5), [18, 19, 26, 27], [13.5, 14.5, 21.5, 22.5], [13.5, 14.5, 21.5, 22.5]),
  ((0, 2.5, 0.5, 4.5, 2.5), [11, 12, 19, 20], [6.5, 7.5, 14.5, 15.5], [6.5, 7.5, 14.5, 15.5]),
]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("roi,sr2,sr2_aligned,adaptive_aligned", EDGE_CASES)
def test_edge_case_table(roi, sr2, sr2_aligned, adaptive_aligned, layout, implementation):
  x = nchw_to(np.arange(2 * 2 * 6 * 8, dtype=np.float32).reshape(2, 2, 6, 8), layout)
  rois = np.array([roi], np.float32)
  for sr, aligned, expected, tol in [
    (2, False, sr2, 1e-6),
    (2, True, sr2_aligned, 1e-6),
    (0, True, adaptive_aligned, 1e-4),
    (-1, True, adaptive_aligned, 1e-4),
  ]:
    out = jax_roi.roi_align(
      x, rois, 2, sampling_ratio=sr, aligned=aligned, layout=layout, implementation=implementation
    )
    out = np.asarray(pooled_to_nchw(out, layout))[0, 0].ravel()
    np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)


def _case(seed, layout, fmt, dtype, box_dtype, **kw):
  return random_case(seed, layout, fmt, dtype, box_dtype, **{"k": 6, **kw})


CONFIGS = [  # (mode, sampling_ratio, aligned)
  ("avg", 2, False),
  ("avg", 0, True),
  ("avg", 3, True),
  ("avg", -1, False),
  ("max", 2, False),
  ("max", 0, True),
  ("max", 1, True),
]


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fmt", ["indexed", "batched"])
@pytest.mark.parametrize("mode,sr,aligned", CONFIGS)
def test_matches_loop_reference(layout, fmt, mode, sr, aligned):
  """float64: outputs bit for bit, feature and box gradients to rounding.
  float32: to float32 rounding (the reference accumulates in float64)."""
  for dtype in ("float64", "float32"):
    with jax.enable_x64(dtype == "float64"):
      x, rois = _case(
        stable_seed(layout, fmt, mode, sr, aligned, modulo=997), layout, fmt, dtype, dtype
      )
      kw = dict(spatial_scale=0.5, sampling_ratio=sr, aligned=aligned, mode=mode)
      expected, _ = ref.roi_align(x, rois, (3, 2), layout=layout, **kw)
      out = jax_roi.roi_align(x, rois, (3, 2), layout=layout, **kw)
      assert out.dtype == x.dtype and out.shape == expected.shape
      if dtype == "float64" and mode == "avg":
        np.testing.assert_array_equal(np.asarray(out), expected)
      else:
        np.testing.assert_allclose(np.asarray(out, np.float64), expected, rtol=2e-6, atol=2e-6)
      cot = np.cos(np.arange(out.size)).reshape(out.shape).astype(dtype)
      loss = lambda x, r: jnp.sum(jax_roi.roi_align(x, r, (3, 2), layout=layout, **kw) * cot)
      grad_x, grad_r = jax.grad(loss, argnums=(0, 1))(x, rois)
      assert grad_x.dtype == x.dtype and grad_r.dtype == rois.dtype
      exp_x, exp_r = ref.roi_align_grad(x, rois, cot, (3, 2), layout=layout, **kw)
      tol = 1e-12 if dtype == "float64" else 2e-5
      np.testing.assert_allclose(np.asarray(grad_x, np.float64), exp_x, rtol=tol, atol=tol)
      np.testing.assert_allclose(np.asarray(grad_r, np.float64), exp_r, rtol=tol, atol=tol)


@st.composite
def align_problems(draw, hostile=True):
  n, c, h, w, k, output_size, scale = draw_dims(draw, st, 10, 8, 4, [1.0, 0.5, 0.25, 0.3, 2.0, 0.0])
  sr = draw(st.sampled_from([-1, 0, 1, 2, 3]))
  aligned = draw(st.booleans())
  mode = draw(st.sampled_from(["avg", "max"]))
  layout = draw(st.sampled_from(LAYOUTS))
  fmt = draw(st.sampled_from(["indexed", "batched"]))
  seed = draw(st.integers(0, 2**32 - 1))
  rng = np.random.default_rng(seed)
  x = random_features(rng, n, c, h, w, layout, np.float64)
  if rng.random() < 0.2:
    x[rng.random(x.shape) < 0.1] = rng.choice([np.nan, -np.inf, 0.0])
  rois = random_rois(rng, fmt, n, k, h, w, scale, hostile)
  kw = dict(spatial_scale=scale, sampling_ratio=sr, aligned=aligned, mode=mode, layout=layout)
  return x, rois, output_size, kw


@given(align_problems())
def test_property_kernel_equals_loop_reference(problem):
  """float64, hostile boxes and features: the kernels equal the reference."""
  x, rois, output_size, kw = problem
  with jax.enable_x64(True):
    expected, _ = ref.roi_align(x, rois, output_size, **kw)
    out = jax_roi.roi_align(x, rois, output_size, implementation="ffi", **kw)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=10)  # the pure-JAX version compiles slowly per shape
@given(align_problems(hostile=False))
def test_property_xla_matches_kernel(problem):
  x, rois, output_size, kw = problem
  x = np.nan_to_num(x, nan=0.0, neginf=0.0)
  with jax.enable_x64(True):
    out = jax_roi.roi_align(x, rois, output_size, implementation="ffi", **kw)
    out_xla = jax_roi.roi_align(x, rois, output_size, implementation="xla", **kw)
    np.testing.assert_allclose(np.asarray(out_xla), np.asarray(out), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sr", [2, 0])
def test_box_gradient_finite_differences(x64, mode, aligned, sr):
  """Box gradients against central differences, away from pixel boundaries
  (float64; batch indices 0.5 / 1.5 so that nudging them changes nothing)."""
  rng = np.random.default_rng(3)
  x = rng.standard_normal((2, 2, 9, 10))
  rois = np.array(
    [
      [0.5, 1.37, 2.21, 7.73, 6.12],
      [1.5, -2.13, 0.41, 5.52, 9.93],
      [1.5, 3.31, 3.13, 3.62, 3.44],
      [0.5, 6.2, 5.1, 2.3, 1.7],
    ]
  )
  f = lambda x, r: jax_roi.roi_align(
    x, r, (3, 2), spatial_scale=0.9, sampling_ratio=sr, aligned=aligned, mode=mode
  )
  check_grads(f, (x, rois), order=1, modes=["rev"], eps=1e-6)


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_grad_of_grad_features(x64, mode, layout):
  x, rois = _case(4, layout, "batched", "float64", "float64", k=3)
  check_grads(
    lambda f: jax_roi.roi_align(f, rois, (3, 2), sampling_ratio=2, mode=mode, layout=layout),
    (x,),
    order=2,
    modes=["rev"],
  )


def test_second_derivative_through_box_gradient_raises():
  x, rois = _case(5, "NCHW", "indexed", "float32", "float32")
  inner = lambda r: jnp.sum(jax_roi.roi_align(x, r, 2) ** 2)
  with pytest.raises(NotImplementedError, match="box gradient"):
    jax.grad(lambda r: jnp.sum(jax.grad(inner)(r) ** 2))(rois)


def test_batch_index_and_padding_rows_get_zero_cotangent():
  x, rois = _case(6, "NCHW", "indexed", "float32", "float32", padding=0.5)
  g = jax.grad(lambda r: jnp.sum(jax_roi.roi_align(x, r, 3, sampling_ratio=2) ** 2))(rois)
  np.testing.assert_array_equal(g[:, 0], 0)
  images = np.trunc(np.nan_to_num(rois[:, 0], nan=-1))
  padding = (images < 0) | (images >= 2)
  np.testing.assert_array_equal(np.asarray(g)[padding], 0)
  assert np.abs(np.asarray(g)[~padding]).sum() > 0


def test_box_gradient_follows_box_order():
  x, rois = _case(7, "NCHW", "batched", "float32", "float32")
  loss = lambda r, order: jnp.sum(jax_roi.roi_align(x, r, 2, box_order=order) ** 2)
  g = jax.grad(loss)(rois, "xyxy")
  g_yx = jax.grad(loss)(rois[..., [1, 0, 3, 2]], "yxyx")
  np.testing.assert_allclose(g_yx, g[..., [1, 0, 3, 2]], rtol=1e-6)


def test_layouts_and_formats_agree():
  rng = np.random.default_rng(0)
  x = random_features(rng, 2, 5, 10, 12)
  boxes = random_boxes(rng, 12, 10, 12).reshape(2, 6, 4).astype(np.float32)
  for mode in ("avg", "max"):
    batched = jax_roi.roi_align(x, boxes, (3, 4), sampling_ratio=2, mode=mode)
    rows = np.concatenate([np.repeat(np.arange(2.0), 6)[:, None], boxes.reshape(-1, 4)], 1).astype(
      np.float32
    )
    indexed = jax_roi.roi_align(x, rows, (3, 4), sampling_ratio=2, mode=mode)
    np.testing.assert_array_equal(np.asarray(batched).reshape(12, 5, 3, 4), indexed)
    nhwc = jax_roi.roi_align(
      x.transpose(0, 2, 3, 1), boxes, (3, 4), sampling_ratio=2, mode=mode, layout="NHWC"
    )
    np.testing.assert_array_equal(np.moveaxis(np.asarray(nhwc), -1, -3), batched)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_half_precision(dtype, mode):
  """Computed in float32 from the widened values, rounded once: equal to the
  float32 result cast to the half type; gradients come back in the half type."""
  rng = np.random.default_rng(4)
  x = random_features(rng, 2, 4, 9, 9, dtype=DTYPES[dtype])
  rois = indexed_rois(rng, random_boxes(rng, 6, 9, 9), 2).astype(np.float32)
  out = jax_roi.roi_align(x, rois, 3, sampling_ratio=2, mode=mode)
  assert out.dtype == x.dtype
  expected = jax_roi.roi_align(x.astype(np.float32), rois, 3, sampling_ratio=2, mode=mode)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(expected).astype(x.dtype))
  g = jax.grad(lambda f: jnp.sum(jax_roi.roi_align(f, rois, 3, mode=mode).astype(jnp.float32)))(x)
  assert g.dtype == x.dtype


def test_float64_boxes_with_float32_features(x64):
  rng = np.random.default_rng(6)
  x = random_features(rng, 1, 2, 20, 20)
  rois = indexed_rois(rng, random_boxes(rng, 20, 20, 20, 0.3), 1)
  out = jax_roi.roi_align(x, rois, 5, spatial_scale=0.3, sampling_ratio=2)
  assert out.dtype == np.float32
  expected, _ = ref.roi_align(x, rois, (5, 5), 0.3, 2, coord_dtype=np.float64)
  np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_empty_rois_and_padding():
  x = np.ones((2, 3, 5, 5), np.float32)
  for mode in ("avg", "max"):
    out = jax_roi.roi_align(x, np.zeros((0, 5), np.float32), (2, 3), mode=mode)
    assert out.shape == (0, 3, 2, 3)
    out = jax_roi.roi_align(x, np.zeros((2, 0, 4), np.float32), 2, mode=mode)
    assert out.shape == (2, 0, 3, 2, 2)
    rois = np.array([[-1, 0, 0, 4, 4], [2, 0, 0, 4, 4], [np.nan, 0, 0, 4, 4]], np.float32)
    for implementation in IMPLEMENTATIONS:
      out = jax_roi.roi_align(x, rois, 2, mode=mode, implementation=implementation)
      np.testing.assert_array_equal(out, 0)


def test_huge_box_adaptive_sampling_is_bounded():
  """A 1e7-pixel box with adaptive sampling would need 1e13 samples per bin;
  only those on the map are visited, and the result is the reference's."""
  x = np.random.default_rng(8).standard_normal((1, 2, 12, 14)).astype(np.float32)
  rois = np.array([[0, -1e7, -1e7, 1e7, 1e7], [0, -5e6, 2, 3e6, 9]], np.float32)
  for mode in ("avg", "max"):
    start = time.perf_counter()
    out = np.asarray(jax_roi.roi_align(x, rois, 3, sampling_ratio=0, aligned=True, mode=mode))
    assert time.perf_counter() - start < 20
    expected, _ = ref.roi_align(x, rois, (3, 3), 1.0, 0, True, mode)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-12)


def test_max_mode_rules():
  """Zeros outside the map compete (mmcv); all -inf -> -FLT_MAX; a bin
  without samples outputs 0 (mmcv outputs -FLT_MAX)."""
  x = -np.ones((1, 1, 4, 4), np.float32)
  # Half of the samples of this box are beyond one pixel outside the map.
  out = jax_roi.roi_align(
    x, np.array([[0, -6, 0, 2, 3]], np.float32), 1, sampling_ratio=2, mode="max"
  )
  assert float(out[0, 0, 0, 0]) == 0.0
  inside = jax_roi.roi_align(
    x, np.array([[0, 0, 0, 3, 3]], np.float32), 1, sampling_ratio=2, mode="max"
  )
  assert float(inside[0, 0, 0, 0]) == -1.0
  neg_inf = np.full((1, 1, 4, 4), -np.inf, np.float32)
  out = jax_roi.roi_align(
    neg_inf, np.array([[0, 0, 0, 3, 3]], np.float32), 1, sampling_ratio=2, mode="max"
  )
  assert float(out[0, 0, 0, 0]) == -np.finfo(np.float32).max
  # Aligned zero-size box, adaptive: no samples at all.
  out = jax_roi.roi_align(
    x, np.array([[0, 2, 2, 2, 2]], np.float32), 2, sampling_ratio=0, aligned=True, mode="max"
  )
  np.testing.assert_array_equal(out, 0)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("many_rois", [True, False])
def test_wide_channels_equal_loop_reference(x64, layout, mode, many_rois):
  """float64, 40 channels: outputs bit for bit (avg) and the feature gradient
  (max: through the winners) against the loop reference. With many RoIs the
  NCHW kernel works on an NHWC copy of the map and transposes each RoI's
  outputs into place; one small RoI is read straight from the NCHW planes."""
  rng = np.random.default_rng(7)
  n, c, h, w = 2, 40, 19, 27
  x = rng.standard_normal((n, c, h, w))
  x[rng.random(x.shape) < 0.05] = -np.inf if mode == "max" else 0.0
  if many_rois:
    rois = indexed_rois(rng, random_boxes(rng, 30, h, w, scale=0.5), n, padding=0.1)
  else:
    rois = np.array([[1, 6.3, 8.1, 13.7, 16.2]])
  x = nchw_to(x, layout)
  kw = dict(spatial_scale=0.5, sampling_ratio=2, aligned=True, mode=mode)
  expected, _ = ref.roi_align(x, rois, (3, 4), layout=layout, **kw)
  out = jax_roi.roi_align(x, rois, (3, 4), layout=layout, implementation="ffi", **kw)
  if mode == "avg":
    np.testing.assert_array_equal(np.asarray(out), expected)
  else:
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-12, atol=1e-12)
  cot = rng.standard_normal(out.shape)
  grad = jax.grad(
    lambda f: jnp.sum(
      jax_roi.roi_align(f, rois, (3, 4), layout=layout, implementation="ffi", **kw) * cot
    )
  )(x)
  expected_grad, _ = ref.roi_align_grad(x, rois, cot, (3, 4), layout=layout, **kw)
  np.testing.assert_allclose(np.asarray(grad), expected_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("sr", [2, 0])
def test_bins_in_spatial_order_equal_loop_reference(x64, mode, sr):
  """NHWC maps of more than 2 MiB an image: the forward computes the bins of
  all RoIs in the order of the pixels they read (core/spatial_order.h), not
  RoI by RoI. float64, three images of 2.4 MB, RoIs of every image mixed,
  partly off the map, inverted, empty and padding rows: outputs bit for bit
  (avg), and the gradient through the max-mode winners, equal the loop
  reference; the NCHW layout, whose outputs are made RoI by RoI, gives the
  same bits."""
  rng = np.random.default_rng(23)
  n, c, h, w = 3, 66, 64, 70
  x = rng.standard_normal((n, c, h, w))
  rois = indexed_rois(rng, random_boxes(rng, 40, h, w, scale=0.5), n, padding=0.1)
  kw = dict(spatial_scale=0.5, sampling_ratio=sr, aligned=True, mode=mode)
  x_nhwc = nchw_to(x, "NHWC")
  expected, _ = ref.roi_align(x_nhwc, rois, (3, 4), layout="NHWC", **kw)
  out = np.asarray(jax_roi.roi_align(x_nhwc, rois, (3, 4), layout="NHWC", **kw))
  if mode == "avg":
    np.testing.assert_array_equal(out, expected)
  else:
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
  nchw = jax_roi.roi_align(x, rois, (3, 4), layout="NCHW", **kw)
  np.testing.assert_array_equal(pooled_from_nchw(np.asarray(nchw), "NHWC"), out)
  if mode == "max":
    cot = rng.standard_normal(out.shape)
    grad = jax.grad(
      lambda f: jnp.sum(jax_roi.roi_align(f, rois, (3, 4), layout="NHWC", **kw) * cot)
    )(x_nhwc)
    expected_grad, _ = ref.roi_align_grad(x_nhwc, rois, cot, (3, 4), layout="NHWC", **kw)
    np.testing.assert_allclose(np.asarray(grad), expected_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op", ["roi_align", "roi_pool"])
def test_a_map_larger_than_the_caches_is_copied_with_the_same_bits(op):
  """NCHW float32 maps of 32 MiB and more are copied to NHWC scratch with
  streaming (cache-bypassing) stores of whole 16-channel lines, the last
  positions of each tile (here 36019 = 140 * 256 + 179) the ordinary way:
  the outputs equal, bit for bit, those read straight from the same map in
  NHWC."""
  rng = np.random.default_rng(19)
  n, c, h, w = 1, 256, 199, 181  # 36.9 MB
  x = rng.standard_normal((n, c, h, w)).astype(np.float32)
  # The map's last value (a tail position) is read: roi_pool's maximum, and
  # NaN in roi_align's bins that sample it.
  x[0, 255, 198, 180] = 7.0 if op == "roi_pool" else np.nan
  rois = indexed_rois(rng, random_boxes(rng, 60, h, w, scale=1.0), n).astype(np.float32)
  rois = np.concatenate([rois, [[0, 170.0, 185.0, 181.0, 199.0]]]).astype(np.float32)
  if op == "roi_align":
    call = lambda f, layout: jax_roi.roi_align(f, rois, 7, 1.0, 2, True, layout=layout)  # noqa: E731
  else:
    call = lambda f, layout: jax_roi.roi_pool(f, rois, 7, 1.0, layout=layout)  # noqa: E731
  nchw = np.asarray(call(x, "NCHW"))
  nhwc = np.asarray(call(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), "NHWC"))
  np.testing.assert_array_equal(nchw, nhwc.transpose(0, 3, 1, 2))
  assert (nchw[-1, 255] == 7.0).any() if op == "roi_pool" else np.isnan(nchw[-1, 255]).any()


@pytest.mark.slow  # (3 x 2-4 s: 37 MB maps)
@pytest.mark.parametrize(
  "op, hw",
  [("roi_align", (200, 184)), ("roi_align_rotated", (200, 184)), ("roi_align", (199, 181))],
)
def test_a_large_nchw_gradient_is_moved_into_place_with_the_same_bits(op, hw):
  """An NCHW float32 gradient summed in NHWC scratch is moved into place in
  tiles of 256 positions, 8 channel rows at a time. At 32 MiB and more, when
  every row starts on a 64-byte line (H * W a multiple of 16: 200 x 184),
  whole 16-position lines are written with streaming stores; otherwise
  (199 x 181, whose last tile has 179 positions) the ordinary way. Either
  way the gradient equals, bit for bit, the NHWC layout's transposed."""
  rng = np.random.default_rng(29)
  n, c, (h, w) = 1, 256, hw  # 37.7 / 36.9 MB
  x = rng.standard_normal((n, c, h, w)).astype(np.float32)
  boxes = random_boxes(rng, 60, h, w, scale=1.0)
  if op == "roi_align":
    rois = indexed_rois(rng, boxes, n).astype(np.float32)

    def call(f, layout):
      return jax_roi.roi_align(f, rois, 7, 1.0, 2, True, layout=layout)
  else:
    (x1, y1, x2, y2), angle = boxes.T, rng.uniform(-180, 180, len(boxes))
    rois = np.stack(
      [np.zeros(len(boxes)), (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, angle], 1
    ).astype(np.float32)

    def call(f, layout):
      return jax_roi.roi_align_rotated(f, rois, 7, 1.0, 2, layout=layout)

  cot = rng.standard_normal((len(rois), c, 7, 7)).astype(np.float32)
  g_nchw = jax.grad(lambda f: jnp.sum(call(f, "NCHW") * cot))(jnp.asarray(x))
  cot_nhwc = cot.transpose(0, 2, 3, 1)
  x_nhwc = jnp.asarray(x.transpose(0, 2, 3, 1))
  g_nhwc = jax.grad(lambda f: jnp.sum(call(f, "NHWC") * cot_nhwc))(x_nhwc)
  g_nhwc = np.asarray(g_nhwc).transpose(0, 3, 1, 2)
  np.testing.assert_array_equal(np.asarray(g_nchw), g_nhwc)
  assert np.count_nonzero(g_nhwc) > g_nhwc.size // 8, np.count_nonzero(g_nhwc) / g_nhwc.size


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_float32_channels_do_not_depend_on_the_channel_count(layout, mode):
  """float32 with 45 channels (the CPU kernel sums blocks of 32 channels in
  vector registers, the rest one by one): each channel's output equals, bit
  for bit, the op on that channel alone (the scalar path, bit-exact with
  torchvision's golden vectors)."""
  rng = np.random.default_rng(11)
  n, c, h, w = 2, 45, 17, 23
  x = rng.standard_normal((n, c, h, w)).astype(np.float32)
  rois = indexed_rois(rng, random_boxes(rng, 25, h, w, scale=0.5), n, padding=0.1)
  rois = rois.astype(np.float32)
  kw = dict(spatial_scale=0.5, sampling_ratio=2, aligned=True, mode=mode, implementation="ffi")
  out = nchw_of(jax_roi.roi_align(nchw_to(x, layout), rois, (4, 3), layout=layout, **kw), layout)
  for ch in (0, 17, 31, 32, 44):
    alone = jax_roi.roi_align(x[:, ch : ch + 1], rois, (4, 3), layout="NCHW", **kw)
    np.testing.assert_array_equal(out[:, ch : ch + 1], np.asarray(alone), err_msg=f"channel {ch}")


@pytest.mark.parametrize("many_rois", [True, False])
@pytest.mark.parametrize("sr", [2, 0])
def test_nchw_and_nhwc_gradients_have_the_same_bits(many_rois, sr):
  """The feature gradient sums each element's terms in one order whatever
  the layout: NCHW (on an NHWC scratch copy when many RoIs read the map, on
  the planes for one small RoI) equals NHWC transposed, bit for bit."""
  rng = np.random.default_rng(5)
  n, c, h, w = 2, 24, 15, 21
  x = rng.standard_normal((n, c, h, w)).astype(np.float32)
  if many_rois:
    rois = indexed_rois(rng, random_boxes(rng, 30, h, w, scale=0.5), n, padding=0.1)
  else:
    rois = np.array([[1, 6.3, 8.1, 13.7, 16.2]])
  rois = rois.astype(np.float32)
  cot = rng.standard_normal((len(rois), c, 3, 4)).astype(np.float32)
  kw = dict(spatial_scale=0.5, sampling_ratio=sr, aligned=True, implementation="ffi")

  def grad(layout):
    loss = lambda f: jnp.sum(
      jax_roi.roi_align(f, rois, (3, 4), layout=layout, **kw) * pooled_from_nchw(cot, layout)
    )
    return nchw_of(jax.grad(loss)(nchw_to(x, layout)), layout)

  np.testing.assert_array_equal(grad("NCHW"), grad("NHWC"))
