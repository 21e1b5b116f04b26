"""roi_align_rotated: the float64 loop reference (detectron2's and mmcv's
conventions), its relations to roi_align (angles 0, 90, 180, 270 degrees),
periodicity and mirror properties, box gradients (incl. the angle) against
finite differences, dtypes, layouts, formats, hostile input, transforms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import loop_reference as ref
import numpy as np
import pytest
from helpers import DTYPES, random_features, rotated_boxes, rotated_rois, stable_seed
from jax.test_util import check_grads

import jax_roi

LAYOUTS = ("NCHW", "NHWC")
IMPLEMENTATIONS = ("ffi", "xla")
# (sampling_ratio, aligned, angle_unit, clockwise): detectron2's defaults,
# mmcv's conventions, adaptive and fixed grids.
CONVENTIONS = [
  (-1, True, "degrees", False),
  (2, True, "degrees", False),
  (3, False, "radians", True),
  (0, False, "radians", False),
  (1, True, "radians", True),
]


def _op(x, rois, size=(3, 4), scale=0.5, conv=CONVENTIONS[0], **kw):
  sr, aligned, unit, cw = conv
  return jax_roi.roi_align_rotated(
    x, rois, size, scale, sr, angle_unit=unit, clockwise=cw, aligned=aligned, **kw
  )


SLOW = pytest.mark.slow
# The pure-JAX version compiles slowly (seconds per configuration): two
# cases in the quick run, the rest marked slow.
REFERENCE_CASES = [
  pytest.param(
    fmt,
    layout,
    conv,
    impl,
    id=f"{fmt}-{layout}-{conv}-{impl}",
    marks=()
    if impl == "ffi"
    or (fmt, layout, conv)
    in (("indexed", "NCHW", CONVENTIONS[0]), ("batched", "NHWC", CONVENTIONS[2]))
    else SLOW,
  )
  for fmt in ("indexed", "batched")
  for layout in LAYOUTS
  for conv in CONVENTIONS
  for impl in IMPLEMENTATIONS
]


@pytest.mark.parametrize("fmt,layout,conv,implementation", REFERENCE_CASES)
def test_matches_loop_reference_float64(x64, fmt, layout, conv, implementation):
  seed = stable_seed(fmt, layout, conv)
  rng = np.random.default_rng(seed)
  x = random_features(rng, 2, 3, 9, 11, layout, np.float64)
  rois = rotated_rois(rng, fmt, 2, 7, 9, 11, 0.5, degrees=conv[2] == "degrees")
  out = _op(x, rois, conv=conv, layout=layout, implementation=implementation)
  expected = ref.roi_align_rotated(x, rois, (3, 4), 0.5, conv[0], conv[1], conv[2], conv[3], layout)
  assert out.shape == expected.shape and out.dtype == np.float64
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_dtypes_against_the_reference(dtype, layout):
  """float32 boxes; half-precision features are computed in float32 and
  rounded once."""
  rng = np.random.default_rng(stable_seed(dtype, layout))
  x = random_features(rng, 2, 4, 10, 8, layout, DTYPES[dtype])
  rois = rotated_rois(rng, "indexed", 2, 9, 10, 8).astype(np.float32)
  with jax.enable_x64(dtype == "float64"):
    out = np.asarray(_op(x, rois, layout=layout)).astype(np.float64)
  expected = ref.roi_align_rotated(np.asarray(x, np.float64), rois, (3, 4), 0.5, layout=layout)
  tol = {"float16": 4e-3, "bfloat16": 3e-2}.get(dtype, 2e-5)
  np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)


def test_kernel_equals_pure_jax_float32():
  rng = np.random.default_rng(5)
  x = random_features(rng, 2, 5, 12, 13)
  for conv in CONVENTIONS[1:4]:
    rois = rotated_rois(rng, "indexed", 2, 12, 12, 13, 0.5).astype(np.float32)
    a = _op(x, rois, conv=conv, implementation="ffi")
    b = _op(x, rois, conv=conv, implementation="xla")
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5, err_msg=str(conv))


def _axis_aligned(boxes):
  cx, cy, w, h = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
  return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


@pytest.mark.parametrize("sr", [2, -1])
def test_angle_zero_is_roi_align(x64, sr):
  rng = np.random.default_rng(11)
  x = random_features(rng, 1, 3, 12, 10, dtype=np.float64)
  boxes = rotated_boxes(rng, 10, 12, 10)
  boxes[:, 4] = 0.0
  index = np.zeros((10, 1))
  out = jax_roi.roi_align_rotated(x, np.concatenate([index, boxes], 1), (3, 3), 1.0, sr)
  expected = jax_roi.roi_align(
    x, np.concatenate([index, _axis_aligned(boxes)], 1), (3, 3), sampling_ratio=sr, aligned=True
  )
  np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
  "angle,implementation",
  [
    (a, i) if i == "ffi" or a == 90 else pytest.param(a, i, marks=SLOW)
    for a in (90, 180, 270, -90)
    for i in IMPLEMENTATIONS
  ],
)
def test_right_angles_are_roi_align_on_a_rotated_map(angle, implementation):
  """float32: cos(90 degrees) is -4.4e-8 there, not 0 (a tolerance)."""
  rng = np.random.default_rng(angle % 360)
  h, w = 9, 12
  x = random_features(rng, 1, 2, h, w)
  boxes = rotated_boxes(rng, 8, h, w)
  boxes[:, 4] = angle
  cx, cy = boxes[:, 0], boxes[:, 1]
  a = angle % 360
  if a == 90:  # G[u, v] = F[H - 1 - v, u]: rows follow yy, columns follow xx
    g = x[:, :, ::-1, :].transpose(0, 1, 3, 2)
    centre_u, centre_v = cx, h - cy
  elif a == 180:  # G = F flipped along both axes
    g = x[:, :, ::-1, ::-1]
    centre_u, centre_v = h - cy, w - cx
  else:  # 270: G[u, v] = F[v, W - 1 - u]
    g = x[:, :, :, ::-1].transpose(0, 1, 3, 2)
    centre_u, centre_v = w - cx, cy
  bw, bh = boxes[:, 2], boxes[:, 3]
  aa = np.stack([centre_v - bw / 2, centre_u - bh / 2, centre_v + bw / 2, centre_u + bh / 2], 1)
  index = np.zeros((8, 1))
  out = jax_roi.roi_align_rotated(
    x,
    np.concatenate([index, boxes], 1).astype(np.float32),
    (3, 2),
    1.0,
    2,
    implementation=implementation,
  )
  expected = jax_roi.roi_align(
    np.ascontiguousarray(g),
    np.concatenate([index, aa], 1).astype(np.float32),
    (3, 2),
    sampling_ratio=2,
    aligned=True,
  )
  np.testing.assert_allclose(out, expected, rtol=2e-5, atol=2e-5)


def test_periodic_in_the_angle_and_clockwise_negates(x64):
  rng = np.random.default_rng(3)
  x = random_features(rng, 2, 3, 10, 10, dtype=np.float64)
  rois = rotated_rois(rng, "indexed", 2, 8, 10, 10, padding=0.0)
  base = _op(x, rois, conv=(2, True, "degrees", False))
  for turns in (-2, 1, 3):
    shifted = rois.copy()
    shifted[:, 5] += 360 * turns
    np.testing.assert_allclose(
      _op(x, shifted, conv=(2, True, "degrees", False)), base, rtol=1e-9, atol=1e-9
    )
  radians = rois.copy()
  radians[:, 5] = np.deg2rad(rois[:, 5]) + 2 * np.pi
  np.testing.assert_allclose(
    _op(x, radians, conv=(2, True, "radians", False)), base, rtol=1e-9, atol=1e-9
  )
  negated = rois.copy()
  negated[:, 5] = -rois[:, 5]
  np.testing.assert_array_equal(_op(x, negated, conv=(2, True, "degrees", True)), base)


def test_negative_sizes_are_defined():
  """aligned: adaptive sampling has no samples (0); a fixed ratio samples
  the mirrored box (bins in reverse order). validate_rotated_rois flags them."""
  rng = np.random.default_rng(8)
  x = random_features(rng, 1, 2, 10, 10)
  rois = rotated_rois(rng, "indexed", 1, 6, 10, 10, padding=0.0).astype(np.float32)
  rois[:, 3] = np.maximum(rois[:, 3], 2.0)
  mirrored = rois.copy()
  mirrored[:, 3] = -rois[:, 3]
  for impl in IMPLEMENTATIONS:
    out = jax_roi.roi_align_rotated(x, mirrored, (2, 3), 1.0, 2, implementation=impl)
    expected = jax_roi.roi_align_rotated(x, rois, (2, 3), 1.0, 2, implementation=impl)
    np.testing.assert_allclose(out, expected[..., ::-1], rtol=1e-5, atol=1e-5)
    adaptive = jax_roi.roi_align_rotated(x, mirrored, (2, 3), 1.0, -1, implementation=impl)
    np.testing.assert_array_equal(adaptive, np.zeros_like(adaptive))
  flags = jax_roi.validate_rotated_rois(mirrored, 1)
  assert bool(flags["negative_size"].all()) and not bool(flags["non_finite"].any())


@pytest.mark.parametrize(
  "conv,layout,implementations",
  [
    (CONVENTIONS[0], "NCHW", ("ffi",)),
    (CONVENTIONS[2], "NHWC", ("ffi", "xla")),
    pytest.param(CONVENTIONS[0], "NHWC", IMPLEMENTATIONS, marks=SLOW),
    pytest.param(CONVENTIONS[2], "NCHW", IMPLEMENTATIONS, marks=SLOW),
  ],
  ids=str,
)
def test_gradients_against_finite_differences(x64, conv, layout, implementations):
  """Features and all five box parameters (the angle included), float64."""
  rng = np.random.default_rng(stable_seed(conv, layout))
  x = random_features(rng, 2, 2, 8, 9, layout, np.float64)
  rois = rotated_rois(rng, "indexed", 2, 5, 8, 9, padding=0.0, degrees=conv[2] == "degrees")
  rois[:, 3:5] = np.maximum(rois[:, 3:5], 3.0)  # no 1-pixel clamp at the FD points
  index, boxes = rois[:, :1], rois[:, 1:]
  for impl in implementations:
    f = lambda x, b: _op(
      x, jnp.concatenate([index, b], 1), conv=conv, layout=layout, implementation=impl
    )
    check_grads(f, (x, boxes), order=1, modes=["rev"], eps=1e-6, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
  "conv,fmt",
  [
    (CONVENTIONS[0], "indexed"),
    pytest.param(CONVENTIONS[1], "batched", marks=SLOW),
    pytest.param(CONVENTIONS[2], "indexed", marks=SLOW),
  ],
  ids=str,
)
def test_box_gradient_kernel_equals_pure_jax(conv, fmt):
  rng = np.random.default_rng(21)
  x = random_features(rng, 2, 3, 11, 12)
  rois = rotated_rois(rng, fmt, 2, 6, 11, 12, 0.5).astype(np.float32)
  cot = rng.standard_normal(_op(x, rois, conv=conv).shape).astype(np.float32)
  grads = [
    jax.grad(lambda x, r: jnp.sum(_op(x, r, conv=conv, implementation=i) * cot), argnums=(0, 1))(
      x, rois
    )
    for i in IMPLEMENTATIONS
  ]
  np.testing.assert_allclose(grads[0][0], grads[1][0], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(grads[0][1], grads[1][1], rtol=1e-3, atol=1e-3)


def test_hostile_boxes():
  """NaN/inf centres, sizes and angles; huge boxes (bounded work): defined,
  finite outputs and gradients, kernel == pure JAX."""
  rng = np.random.default_rng(4)
  x = random_features(rng, 2, 3, 9, 9)
  rois = rotated_rois(rng, "indexed", 2, 24, 9, 9).astype(np.float32)
  for col, value in [
    (1, np.nan),
    (2, np.inf),
    (3, 1e30),
    (4, -np.inf),
    (5, np.nan),
    (5, np.inf),
    (5, 1e30),
    (3, 3e9),
    (4, -1e30),
    (1, -1e30),
  ]:
    rois[rng.integers(0, 24, 2), col] = value
  non_finite = ~np.isfinite(rois[:, 1:]).all(1)
  for sr in (-1, 2):
    outs = []
    for impl in IMPLEMENTATIONS:
      out = jax_roi.roi_align_rotated(x, rois, 3, 1.0, sr, implementation=impl)
      assert np.isfinite(np.asarray(out)).all()
      np.testing.assert_array_equal(np.asarray(out)[non_finite], 0)
      outs.append(out)
      if impl == "xla" and sr != 2:
        continue  # the pure-JAX loop form's gradient: test_box_gradient_kernel_equals_pure_jax
      gx, gr = jax.grad(
        lambda x, r: jnp.sum(jax_roi.roi_align_rotated(x, r, 3, 1.0, sr, implementation=impl)),
        argnums=(0, 1),
      )(x, rois)
      assert np.isfinite(np.asarray(gx)).all() and np.isfinite(np.asarray(gr)).all()
      np.testing.assert_array_equal(np.asarray(gr)[non_finite], 0)
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=1e-4)
  flags = jax_roi.validate_rotated_rois(rois, 2)
  np.testing.assert_array_equal(np.asarray(flags["non_finite"]), non_finite)


def test_largest_sampling_ratio():
  """sampling_ratio 1024 (2^20 samples per bin) against the reference."""
  rng = np.random.default_rng(9)
  x = random_features(rng, 1, 2, 6, 6, dtype=np.float32)
  rois = np.array([[0, 3.0, 2.5, 4.0, 3.0, 30.0]], np.float32)
  out = jax_roi.roi_align_rotated(x, rois, 1, 1.0, 1024, implementation="ffi")
  # Dense sampling converges to the mean of the bilinear surface over the box.
  fine = jax_roi.roi_align_rotated(x, rois, 1, 1.0, 512, implementation="ffi")
  np.testing.assert_allclose(out, fine, rtol=1e-4, atol=1e-4)
  coarse = ref.roi_align_rotated(x, rois, (1, 1), 1.0, 64)
  np.testing.assert_allclose(out, coarse, rtol=2e-3, atol=2e-3)


def test_empty_inputs_and_padding():
  x = np.ones((2, 3, 5, 5), np.float32)
  assert jax_roi.roi_align_rotated(x, np.zeros((0, 6), np.float32), 2).shape == (0, 3, 2, 2)
  assert jax_roi.roi_align_rotated(x, np.zeros((2, 0, 5), np.float32), 2).shape == (2, 0, 3, 2, 2)
  pad = np.array([[-1, 2, 2, 3, 3, 10], [2, 2, 2, 3, 3, 10], [np.nan, 2, 2, 3, 3, 10]], np.float32)
  for impl in IMPLEMENTATIONS:
    out = jax_roi.roi_align_rotated(x, pad, 2, implementation=impl)
    np.testing.assert_array_equal(out, np.zeros((3, 3, 2, 2), np.float32))


def test_argument_validation():
  x = np.ones((1, 2, 5, 5), np.float32)
  r = np.zeros((1, 6), np.float32)
  with pytest.raises(ValueError, match=r"rois must have shape \(K, 6\)"):
    jax_roi.roi_align_rotated(x, np.zeros((1, 5), np.float32), 2)
  with pytest.raises(ValueError, match="angle_unit"):
    jax_roi.roi_align_rotated(x, r, 2, angle_unit="turns")
  with pytest.raises(TypeError, match="clockwise"):
    jax_roi.roi_align_rotated(x, r, 2, clockwise=1)
  with pytest.raises(TypeError, match="aligned"):
    jax_roi.roi_align_rotated(x, r, 2, aligned=None)
  with pytest.raises(ValueError, match="sampling_ratio"):
    jax_roi.roi_align_rotated(x, r, 2, 1.0, 4096)
  with pytest.raises(ValueError, match="spatial_scale"):
    jax_roi.roi_align_rotated(x, r, 2, -1.0)
  with pytest.raises(ValueError, match="rois must have shape"):
    jax_roi.validate_rotated_rois(np.zeros((2, 5)), 1)


@pytest.mark.parametrize(
  "fmt,in_axes",
  [
    (f, a)
    if (f, a) in (("indexed", (0, None)), ("batched", (None, 0)), ("indexed", (0, 0)))
    else pytest.param(f, a, marks=SLOW)
    for f in ("indexed", "batched")
    for a in ((0, None), (None, 0), (0, 0))
  ],
)
def test_vmap_is_one_launch_with_box_gradients(fmt, in_axes):
  v = 2
  rng = np.random.default_rng(30)
  xs = np.stack([random_features(rng, 2, 3, 8, 9) for _ in range(v)])
  rs = np.stack([rotated_rois(rng, fmt, 2, 4, 8, 9).astype(np.float32) for _ in range(v)])
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
  assert text.count('custom_call_target="jax_roi_roi_align_rotated_fwd_v1"') == 1
  assert "while" not in text


@pytest.mark.slow  # (~20 s)
def test_grad_of_grad_and_checkpoint():
  rng = np.random.default_rng(31)
  x = random_features(rng, 2, 3, 8, 9)
  rois = rotated_rois(rng, "indexed", 2, 5, 8, 9).astype(np.float32)
  direction = rng.standard_normal(x.shape).astype(np.float32)

  def hvp(impl):
    loss = lambda x: jnp.sum(
      _op(x, rois, conv=(2, True, "degrees", False), implementation=impl) ** 3
    )
    return jax.grad(lambda x: jnp.vdot(jax.grad(loss)(x), direction))(x)

  np.testing.assert_allclose(hvp("ffi"), hvp("xla"), rtol=1e-4, atol=1e-4)
  loss = lambda x: jnp.sum(jnp.sin(_op(x, rois)))
  np.testing.assert_array_equal(jax.grad(jax.checkpoint(loss))(x), jax.grad(loss)(x))
  box_loss = lambda r: jnp.sum(_op(x, r) ** 2)
  with pytest.raises(NotImplementedError, match="roi_align_rotated"):
    jax.grad(lambda r: jnp.sum(jax.grad(box_loss)(r) ** 2))(rois)


def test_backward_is_deterministic():
  rng = np.random.default_rng(32)
  x = random_features(rng, 1, 16, 12, 12, "NHWC")
  rois = rotated_rois(rng, "indexed", 1, 40, 12, 12, padding=0.0).astype(np.float32)
  g = jax.jit(jax.grad(lambda x, r: jnp.sum(_op(x, r, layout="NHWC") ** 2), argnums=(0, 1)))
  first = [np.asarray(a) for a in g(x, rois)]
  for _ in range(2):
    for a, b in zip(g(x, rois), first):
      np.testing.assert_array_equal(np.asarray(a), b)


def test_export_round_trip():
  rng = np.random.default_rng(33)
  x = random_features(rng, 1, 2, 8, 8)
  rois = rotated_rois(rng, "indexed", 1, 3, 8, 8).astype(np.float32)
  f = jax.jit(lambda x, r: _op(x, r))
  exported = jax.export.export(
    f, platforms=("cpu",), disabled_checks=jax_roi.export_safety_checks()
  )(x, rois)
  restored = jax.export.deserialize(exported.serialize())
  np.testing.assert_array_equal(restored.call(x, rois), f(x, rois))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
# Adaptive sampling's cases take 4-7 s each: behind the slow marker.
@pytest.mark.parametrize("sr", [2, pytest.param(0, marks=pytest.mark.slow)])
def test_nchw_gradient_paths_give_the_bits_of_nhwc(sr, dtype):
  """The CPU backward sums an NCHW gradient in NHWC scratch (channels
  contiguous), then transposes it into place, when the RoIs read the map at
  least a quarter of a time over; otherwise it scatters plane by plane. 6
  RoIs of 3x3 bins on a 24 x 24 map (about 3500 reads for 576 positions)
  take the scratch; the same RoIs on the map padded to 64 x 64 (4096
  positions) take the planes. Both must give, bit for bit, the NHWC
  gradient (same terms, same order), exactly 0 on the padding, and the
  float64 loop reference."""
  rng = np.random.default_rng(stable_seed("nchw-paths", sr, dtype))
  ftype = np.dtype(dtype)
  small = rng.standard_normal((2, 5, 24, 24)).astype(ftype)
  big = np.zeros((2, 5, 64, 64), ftype)
  big[:, :, :24, :24] = small
  # Centres in [8, 16], sides <= 6, any angle: every sample stays more than a
  # pixel inside the small map, so the padding changes no sample.
  k = 6
  rois = np.stack(
    [
      np.arange(k) % 2,
      rng.uniform(8, 16, k),
      rng.uniform(8, 16, k),
      rng.uniform(2, 6, k),
      rng.uniform(2, 6, k),
      rng.uniform(-180, 180, k),
    ],
    1,
  ).astype(ftype)
  cot = rng.standard_normal((k, 5, 3, 3)).astype(ftype)

  def grad(x, layout):
    c = cot if layout == "NCHW" else cot.transpose(0, 2, 3, 1)
    x = x if layout == "NCHW" else x.transpose(0, 2, 3, 1)
    op = lambda v: jax_roi.roi_align_rotated(v, rois, 3, 1.0, sr, layout=layout)
    g = np.asarray(jax.grad(lambda v: jnp.sum(op(v) * c))(jnp.asarray(x)))
    return g if layout == "NCHW" else g.transpose(0, 3, 1, 2)

  with jax.enable_x64(dtype == "float64"):
    g_nhwc = grad(small, "NHWC")
    g_scratch = grad(small, "NCHW")
    g_planes = grad(big, "NCHW")
  np.testing.assert_array_equal(g_scratch, g_nhwc)
  np.testing.assert_array_equal(g_planes[:, :, :24, :24], g_nhwc)
  rest = g_planes.copy()
  rest[:, :, :24, :24] = 0
  assert not rest.any() and np.abs(g_nhwc).max() > 0
  want = ref.roi_align_rotated_grad(
    small.shape, rois.astype(np.float64), cot.astype(np.float64), (3, 3), 1.0, sr
  )
  tol = 1e-12 if dtype == "float64" else 2e-5
  np.testing.assert_allclose(g_scratch, want, rtol=tol, atol=tol)
