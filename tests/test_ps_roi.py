"""ps_roi_pool and ps_roi_align (position-sensitive, R-FCN): torchvision's
golden vectors (forward bit for bit, gradients equal to the true VJP), the
float64 loop reference, the two documented departures from torchvision, box
gradients against finite differences, property tests, dtypes, layouts,
formats and hostile inputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import loop_reference as ref
import numpy as np
import pytest
from helpers import (
  DTYPES,
  nchw_of,
  nchw_to,
  pooled_from_nchw,
  pooled_to_nchw,
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


@pytest.fixture(scope="module")
def ps_golden():
  import pathlib

  with np.load(pathlib.Path(__file__).parent / "data" / "torchvision_ps_roi_ops.npz") as z:
    return {k: z[k] for k in z.files}


def _parse(name):
  """ps_roi_pool_s{scale}_{PH}x{PW}_{dtype} or
  ps_roi_align_sr{sr}_s{scale}_{PH}x{PW}_{dtype}."""
  parts = name.split("_")
  sr = int(parts[3][2:]) if parts[2] == "align" else None
  scale_key, size, dtype = parts[-3][1:], parts[-2], parts[-1]
  return sr, scale_key, tuple(int(v) for v in size.split("x")), dtype


def _call(name, x, rois, size, scale, sr, **kw):
  if name.startswith("ps_roi_pool"):
    return jax_roi.ps_roi_pool(x, rois, size, scale, **kw)
  return jax_roi.ps_roi_align(x, rois, size, scale, sr, **kw)


@pytest.mark.parametrize(
  "layout,implementation",
  [("NCHW", "ffi"), ("NHWC", "ffi"), pytest.param("NCHW", "xla", marks=pytest.mark.slow)],
)
def test_golden_vectors(ps_golden, layout, implementation):
  """Every case of the golden file: the kernels' forward is torchvision's
  bit for bit (0 where torchvision gives NaN: the documented departure),
  the feature gradient equals the true VJP (_true_grad) to float rounding.
  The pure-JAX version (slow to compile): within a tolerance, on the 3x3
  float32 cases at scale 0.5."""
  cases = [str(c) for c in ps_golden["cases"]]
  assert len(cases) == 48
  if implementation == "xla":
    cases = [c for c in cases if "_3x3_" in c and "_s0.5_" in c and c.endswith("float32")]
  for name in cases:
    sr, scale_key, size, dtype = _parse(name)
    with jax.enable_x64(dtype == "float64"):
      x = nchw_to(ps_golden[f"features_{size[0]}x{size[1]}"].astype(dtype), layout)
      rois = ps_golden[f"rois_s{scale_key}_{size[0]}x{size[1]}"].astype(dtype)
      cot = pooled_from_nchw(ps_golden[f"{name}_cot"].astype(dtype), layout)
      op = lambda x: _call(
        name, x, rois, size, float(scale_key), sr, layout=layout, implementation=implementation
      )
      out = np.asarray(pooled_to_nchw(op(x), layout))
      expected = ps_golden[f"{name}_out"]
      expected = np.where(np.isnan(expected), 0, expected)
      grad = nchw_of(jax.grad(lambda x: jnp.sum(op(x) * cot))(x), layout)
      tol = 1e-5 if dtype == "float32" else 1e-12
      if implementation == "ffi":
        np.testing.assert_array_equal(out, expected, err_msg=name)
      else:
        np.testing.assert_allclose(out, expected, rtol=tol, atol=tol, err_msg=name)
      np.testing.assert_allclose(
        grad, ps_golden[f"{name}_true_grad"], rtol=tol, atol=tol, err_msg=name
      )


def test_golden_departures_exist(ps_golden):
  """The golden file does exercise both departures (so the test above
  checks them): NaN bins of ps_roi_align, and ps_roi_pool cases where
  torchvision's backward differs from the true VJP."""
  cases = [str(c) for c in ps_golden["cases"]]
  assert sum(np.isnan(ps_golden[f"{c}_out"]).sum() for c in cases if "align" in c) > 0
  differ = [
    c
    for c in cases
    if c.startswith("ps_roi_pool")
    and not np.allclose(ps_golden[f"{c}_tv_grad"], ps_golden[f"{c}_true_grad"])
  ]
  assert len(differ) == 12


def test_pool_edge_case_anchors():
  """anchors.md 3.3: box [0, 0, 7, 7] on a 4x4 map, 2x2 output: bin (0, 0)
  averages rows/cols [0, 3) only (clipped to H - 1 = 3), bin (1, 1) is empty
  (output 0, no gradient); the gradient never reaches row or column 3."""
  x = np.arange(4 * 16, dtype=np.float32).reshape(1, 4, 4, 4)
  rois = np.array([[0, 0, 0, 7, 7]], np.float32)
  out = np.asarray(jax_roi.ps_roi_pool(x, rois, 2))
  np.testing.assert_array_equal(out[0, 0, 0, 0], x[0, 0, :3, :3].mean())
  assert out[0, 0, 1, 1] == 0
  g = np.asarray(jax.grad(lambda x: jnp.sum(jax_roi.ps_roi_pool(x, rois, 2)))(x))
  assert np.all(g[:, :, 3, :] == 0) and np.all(g[:, :, :, 3] == 0)
  np.testing.assert_allclose(g[0, 0, :3, :3], 1 / 9)
  assert np.all(g[0, 3] == 0)  # bin (1, 1): empty


def test_align_zero_size_box_gives_zero_not_nan():
  """anchors.md 3.4: [0, 2, 2, 2, 2] with adaptive sampling: torchvision
  gives 8 NaNs; jax_roi zeros, with zero (finite) gradients."""
  x = np.random.default_rng(0).standard_normal((1, 8, 5, 5)).astype(np.float32)
  rois = np.array([[0, 2, 2, 2, 2]], np.float32)
  for impl in IMPLEMENTATIONS:
    out = np.asarray(jax_roi.ps_roi_align(x, rois, 2, 1.0, 0, implementation=impl))
    assert out.shape == (1, 2, 2, 2)
    np.testing.assert_array_equal(out, 0)
    gx, gr = jax.grad(
      lambda x, r: jnp.sum(jax_roi.ps_roi_align(x, r, 2, 1.0, 0, implementation=impl)),
      argnums=(0, 1),
    )(x, rois)
    np.testing.assert_array_equal(gx, 0)
    np.testing.assert_array_equal(gr, 0)


def _case(seed, op, layout, fmt, dtype, size=(2, 3), c_out=2, hostile=False, padding=0.2):
  rng = np.random.default_rng(seed)
  n, h, w, k = 2, 9, 11, 7
  x = random_features(rng, n, c_out * size[0] * size[1], h, w, layout, dtype)
  rois = random_rois(rng, fmt, n, k, h, w, 0.5, hostile, padding)
  box_dtype = np.float64 if dtype == np.float64 else np.float32
  return x, rois.astype(box_dtype)


@pytest.mark.parametrize(
  "layout,fmt,implementation",
  [
    ("NCHW", "indexed", "ffi"),
    ("NHWC", "batched", "ffi"),
    ("NHWC", "indexed", "ffi"),
    ("NCHW", "batched", "ffi"),
    ("NHWC", "indexed", "xla"),
  ],
)
@pytest.mark.parametrize("op", ["ps_roi_pool", "ps_roi_align_sr2", "ps_roi_align_adaptive"])
def test_loop_reference_and_padding(op, layout, fmt, implementation):
  """Forward and feature gradient against the float64 loop reference, with
  padding rows, inverted, zero-size and outside boxes; float64 kernels bit
  for bit."""
  seed = stable_seed(op, layout, fmt)
  sr = {"ps_roi_pool": None, "ps_roi_align_sr2": 2, "ps_roi_align_adaptive": 0}[op]
  size = (2, 3)
  with jax.enable_x64(True):
    x, rois = _case(seed, op, layout, fmt, np.float64, size)
    cot = np.random.default_rng(seed + 1).standard_normal(
      np.asarray(_call(op, x, rois, size, 0.5, sr, layout=layout)).shape
    )
    f = lambda x: _call(op, x, rois, size, 0.5, sr, layout=layout, implementation=implementation)
    out = np.asarray(f(x))
    grad = np.asarray(jax.grad(lambda x: jnp.sum(f(x) * cot))(x))
    if sr is None:
      expected = ref.ps_roi_pool(x, rois, size, 0.5, layout)
      expected_grad = ref.ps_roi_pool_grad(x.shape, rois, cot, size, 0.5, layout)
    else:
      expected = ref.ps_roi_align(x, rois, size, 0.5, sr, layout)
      expected_grad, _ = ref.ps_roi_align_grad(x, rois, cot, size, 0.5, sr, layout)
    if implementation == "ffi" and sr is None:
      np.testing.assert_array_equal(out, expected)
    else:
      np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("op", ["ps_roi_pool", "ps_roi_align"])
def test_dtypes(op, dtype):
  """Half types compute in float32 and round once; float32 matches the
  reference to float32 rounding."""
  sr = None if op == "ps_roi_pool" else 2
  x, rois = _case(stable_seed(op, dtype), op, "NHWC", "indexed", DTYPES[dtype])
  out = _call(op, x, rois, (2, 3), 0.5, sr, layout="NHWC")
  assert out.dtype == x.dtype
  ref_fn = ref.ps_roi_pool if sr is None else (lambda *a: ref.ps_roi_align(*a[:4], sr, a[4]))
  expected = ref_fn(np.asarray(x, np.float32), rois, (2, 3), 0.5, "NHWC")
  tol = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 2e-2}[dtype]
  np.testing.assert_allclose(np.asarray(out, np.float64), expected, rtol=tol, atol=tol)
  g = jax.grad(
    lambda x: jnp.sum(_call(op, x, rois, (2, 3), 0.5, sr, layout="NHWC").astype(jnp.float32))
  )(x)
  assert g.dtype == x.dtype and np.all(np.isfinite(np.asarray(g, np.float32)))


def test_box_gradient_finite_differences():
  """ps_roi_align's box gradient (kernel and pure JAX) against central
  finite differences in float64, on boxes away from the kinks; ps_roi_pool's
  box gradient is zero."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 2 * 4, 10, 12))
    rois = np.array(
      [[0, 1.3, 2.1, 8.7, 7.4], [1, 3.2, 0.6, 10.1, 9.3], [1, 9.6, 7.7, 2.4, 1.2]]
    )  # the last one inverted
    for impl in IMPLEMENTATIONS:
      for sr in (2, 0):
        # Only the coordinates: the batch-index column is piecewise constant.
        f = lambda b: jax_roi.ps_roi_align(
          x, jnp.concatenate([rois[:, :1], b], axis=1), 2, 1.0, sr, implementation=impl
        )
        check_grads(f, (rois[:, 1:],), order=1, modes=("rev",), eps=1e-6, atol=1e-5, rtol=1e-5)
      gx, gr = jax.grad(
        lambda x, r: jnp.sum(jax_roi.ps_roi_align(x, r, 2, 1.0, 2) ** 2), argnums=(0, 1)
      )(x, rois)
      np.testing.assert_array_equal(gr[:, 0], 0)
    gr = jax.grad(lambda r: jnp.sum(jax_roi.ps_roi_pool(x, r, 2)))(rois)
    np.testing.assert_array_equal(gr, 0)
    _, expected = ref.ps_roi_align_grad(x, rois, np.ones((3, 2, 2, 2)), (2, 2), 1.0, 2)
    gr = jax.grad(lambda r: jnp.sum(jax_roi.ps_roi_align(x, r, 2, 1.0, 2)))(rois)
    np.testing.assert_allclose(gr, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("op", ["ps_roi_pool", "ps_roi_align"])
def test_feature_gradients_check_grads(op):
  """First and second order w.r.t. the features (finite differences)."""
  with jax.enable_x64(True):
    x, rois = _case(3, op, "NCHW", "indexed", np.float64)
    sr = None if op == "ps_roi_pool" else 0
    f = lambda x: jnp.sin(_call(op, x, rois, (2, 3), 0.5, sr))
    check_grads(f, (x,), order=2, modes=("rev",), eps=1e-4)


@pytest.mark.parametrize("op", ["ps_roi_pool", "ps_roi_align"])
def test_hostile_inputs_huge_nan_padding(op):
  """Huge, infinite and NaN coordinates and hostile padding indices: finite
  outputs equal to the reference, finite gradients (also the sanitizer
  subset of CI)."""
  sr = None if op == "ps_roi_pool" else 0
  for layout in LAYOUTS:
    x, rois = _case(
      stable_seed(op, layout, "hostile"),
      op,
      layout,
      "indexed",
      np.float32,
      hostile=True,
      padding=0.3,
    )
    out = np.asarray(_call(op, x, rois, (2, 3), 0.5, sr, layout=layout, implementation="ffi"))
    assert np.all(np.isfinite(out))
    expected = (
      ref.ps_roi_pool(x, rois, (2, 3), 0.5, layout)
      if sr is None
      else ref.ps_roi_align(x, rois, (2, 3), 0.5, sr, layout)
    )
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    g = jax.grad(
      lambda x, r: jnp.sum(_call(op, x, r, (2, 3), 0.5, sr, layout=layout, implementation="ffi")),
      argnums=(0, 1),
    )(x, rois)
    assert all(np.all(np.isfinite(np.asarray(v))) for v in g)


@pytest.mark.parametrize("op", ["ps_roi_pool", "ps_roi_align"])
def test_empty_shapes(op):
  sr = None if op == "ps_roi_pool" else 2
  x = np.ones((2, 6, 5, 5), np.float32)
  assert _call(op, x, np.zeros((0, 5), np.float32), (2, 3), 1.0, sr).shape == (0, 1, 2, 3)
  assert _call(
    op, np.ones((2, 0, 5, 5), np.float32), np.zeros((3, 5), np.float32), (2, 3), 1.0, sr
  ).shape == (3, 0, 2, 3)
  assert _call(op, x, np.zeros((2, 4, 4), np.float32), (2, 3), 1.0, sr, layout="NCHW").shape == (
    2,
    4,
    1,
    2,
    3,
  )


@pytest.mark.parametrize("op", [jax_roi.ps_roi_pool, jax_roi.ps_roi_align])
def test_validation_rejected(op):
  x = np.ones((1, 8, 5, 5), np.float32)
  rois = np.zeros((1, 5), np.float32)
  with pytest.raises(ValueError, match="features.*divisible by PH \\* PW = 9"):
    op(x, rois, 3)
  with pytest.raises(ValueError, match="spatial_scale"):
    op(x, rois, 2, -1.0)
  with pytest.raises(TypeError, match="layout"):
    op(x, rois, 2, layout=1)
  with pytest.raises(ValueError, match="output_size"):
    op(x, rois, 0)
  with pytest.raises(TypeError):  # jax_roi-only options are keyword-only
    op(x, rois, 2, 1.0, 2, "NHWC") if op is jax_roi.ps_roi_align else op(x, rois, 2, 1.0, "NHWC")
  if op is jax_roi.ps_roi_align:
    with pytest.raises(ValueError, match="sampling_ratio"):
      op(x, rois, 2, 1.0, 5000)


@pytest.mark.parametrize("op", ["ps_roi_pool", "ps_roi_align"])
def test_box_order_yxyx(op):
  sr = None if op == "ps_roi_pool" else 2
  x, rois = _case(9, op, "NCHW", "indexed", np.float32)
  yx = rois[:, [0, 2, 1, 4, 3]]
  np.testing.assert_array_equal(
    _call(op, x, yx, (2, 3), 0.5, sr, box_order="yxyx"), _call(op, x, rois, (2, 3), 0.5, sr)
  )


@pytest.mark.slow  # (~25 s)
@settings(max_examples=12, deadline=None)
@given(st.data())
def test_property_kernel_matches_reference(data):
  """Random shapes, output sizes, scales, sampling ratios, layouts and
  formats: both ops equal the float64 reference (ps_roi_pool bit for bit),
  and the output is linear in the features (the gradient is its transpose:
  <op(x), y> == <x, grad>)."""
  draw = data.draw
  ph, pw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
  c_out = draw(st.integers(1, 3))
  n, h, w, k = (
    draw(st.integers(1, 2)),
    draw(st.integers(1, 9)),
    draw(st.integers(1, 9)),
    draw(st.integers(0, 6)),
  )
  scale = draw(st.sampled_from([1.0, 0.5, 0.25]))
  layout = draw(st.sampled_from(LAYOUTS))
  fmt = draw(st.sampled_from(["indexed", "batched"]))
  sr = draw(st.sampled_from([None, 1, 2, 0, -1]))
  seed = draw(st.integers(0, 2**16))
  rng = np.random.default_rng(seed)
  with jax.enable_x64(True):
    x = random_features(rng, n, c_out * ph * pw, h, w, layout, np.float64)
    rois = random_rois(rng, fmt, n, k, h, w, scale, hostile=False)
    out = np.asarray(
      _call(
        "ps_roi_pool" if sr is None else "ps_roi_align", x, rois, (ph, pw), scale, sr, layout=layout
      )
    )
    if sr is None:
      np.testing.assert_array_equal(out, ref.ps_roi_pool(x, rois, (ph, pw), scale, layout))
    else:
      np.testing.assert_allclose(
        out, ref.ps_roi_align(x, rois, (ph, pw), scale, sr, layout), rtol=1e-12, atol=1e-12
      )
    y = rng.standard_normal(out.shape)
    g = jax.grad(
      lambda x: jnp.sum(
        _call(
          "ps_roi_pool" if sr is None else "ps_roi_align",
          x,
          rois,
          (ph, pw),
          scale,
          sr,
          layout=layout,
        )
        * y
      )
    )(x)
    np.testing.assert_allclose(np.vdot(out, y), np.vdot(x, np.asarray(g)), rtol=1e-9, atol=1e-9)


_SPLIT_BLOCKS = r"""
import os
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
import jax_roi
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 12, 9, 8)).astype(np.float32)  # 12 = 2 outputs x (2 x 3) bins
boxes = np.array([[[0.5, 1, 7, 6], [2, 0, 5, 8]], [[1, 1, 3, 4], [0, 2, 6, 7]]], np.float32)
for name, op in (("pool", lambda f, b: jax_roi.ps_roi_pool(f, b, (2, 3), 1.0)),
                 ("align", lambda f, b: jax_roi.ps_roi_align(f, b, (2, 3), 1.0, 2))):
  loss = lambda f, b: jnp.sum(jnp.sin(op(f, b)))
  want = (np.asarray(op(x, boxes)), np.asarray(jax.grad(loss)(x, boxes)))
  for axis_type in (AxisType.Explicit, AxisType.Auto):
    mesh = jax.make_mesh((4,), ("c",), axis_types=(axis_type,))
    # 3 input channels per device: half a block of 6 bins
    xs = jax.device_put(x, NamedSharding(mesh, P(None, "c")))
    bs = jax.device_put(boxes, NamedSharding(mesh, P()))
    got = (np.asarray(jax.jit(op)(xs, bs)), np.asarray(jax.jit(jax.grad(loss))(xs, bs)))
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6, err_msg=f"{name} {axis_type}")
print("ok")
"""


def test_channel_sharding_that_splits_a_block_of_bins():
  """Channel-sharded features whose shards would cut a block of PH * PW input
  channels (12 channels, 2 x 3 bins, 4 devices): the op still equals one
  device, forward and gradient, on Explicit and Auto meshes (the channels are
  gathered first; with whole blocks per shard they stay split: the sharding
  matrix checks that)."""
  import os
  import pathlib
  import subprocess
  import sys

  root = str(pathlib.Path(jax_roi.__file__).resolve().parent.parent)
  r = subprocess.run(
    [sys.executable, "-P", "-c", _SPLIT_BLOCKS],
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([root] + sys.path)),
  )
  assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr[-3000:]


def _bin_major_case(seed, layout, dtype, c_out, size, margin):
  """Features of 2 images (10 x 12 map) and 64 RoIs inside its top-left
  70%, at spatial scale 0.5; with `margin`, the same map in the top-left
  corner of a (10 + margin) x (12 + margin) canvas of other values."""
  rng = np.random.default_rng(seed)
  n, h, w, k = 2, 10, 12, 64
  ci = c_out * size[0] * size[1]
  x = rng.standard_normal((n, ci, h + margin, w + margin))
  x_small = x[:, :, :h, :w]
  xy1 = rng.uniform(0, 0.5, (k, 2)) * (2 * w, 2 * h)
  wh = rng.uniform(0.05, 0.2, (k, 2)) * (2 * w, 2 * h)
  rois = np.concatenate([rng.integers(0, n, (k, 1)), xy1, xy1 + wh], 1).astype(dtype)
  to = lambda a: jnp.asarray(
    a.astype(dtype) if layout == "NCHW" else a.transpose(0, 2, 3, 1).astype(dtype)
  )
  return to(x_small), to(x), rois, rng.standard_normal((k, c_out, *size))


# float64 takes the same paths as float32: under the slow marker.
@pytest.mark.parametrize("dtype", ["float32", pytest.param("float64", marks=pytest.mark.slow)])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
  "op,size,c_out",
  [
    ("ps_roi_pool", (3, 3), 3),
    ("ps_roi_pool", (1, 1), 3),
    ("ps_roi_align_sr2", (3, 3), 3),
    ("ps_roi_align_adaptive", (2, 2), 5),
  ],
)
def test_many_rois_and_few_take_different_paths_with_the_same_bits(op, size, c_out, layout, dtype):
  """The CPU kernels copy the map bin-major (one map of C_out contiguous
  channels per bin) when the RoIs' bins read the map's (bin, position) pairs
  at least a quarter of a time over, and loop over the map directly
  otherwise. 64 RoIs of 1-2 x 1-2 pixels' bins on a 10 x 12 map take the
  copy (about 3000 window reads against 2 x 9 x 120 pairs); the same RoIs
  on the same map padded to 60 x 62 (67 000 pairs) take the direct loops.
  Forward and feature gradient must be the same bits (the gradient's
  padding exactly 0), and equal the float64 loop reference. (1, 1) bins
  split the copy's work by channels instead of bins."""
  sr = {"ps_roi_pool": None, "ps_roi_align_sr2": 2, "ps_roi_align_adaptive": 0}[op]
  with jax.enable_x64(dtype == "float64"):
    small, big, rois, cot = _bin_major_case(
      stable_seed(op, layout, dtype), layout, dtype, c_out, size, 50
    )
    cot = jnp.asarray(cot if layout == "NCHW" else cot.transpose(0, 2, 3, 1), dtype)
    f = lambda x: _call(op, x, rois, size, 0.5, sr, layout=layout)
    grad = lambda x: jax.grad(lambda x: jnp.sum(f(x) * cot))(x)
    out_small, out_big = np.asarray(f(small)), np.asarray(f(big))
    g_small, g_big = np.asarray(grad(small)), np.asarray(grad(big))
  np.testing.assert_array_equal(out_small, out_big)
  hw = (slice(None), slice(None), slice(0, 10), slice(0, 12))
  if layout == "NHWC":
    hw = (slice(None), slice(0, 10), slice(0, 12), slice(None))
  np.testing.assert_array_equal(g_small, g_big[hw])
  rest = g_big.copy()
  rest[hw] = 0
  assert not rest.any()
  assert np.abs(g_small).max() > 0 and np.abs(out_small).max() > 0
  # The copy's path against the float64 loop reference.
  x64 = np.asarray(small, np.float64)
  cot64 = np.asarray(cot, np.float64)
  if sr is None:
    want = ref.ps_roi_pool(x64, rois.astype(np.float64), size, 0.5, layout)
    want_grad = ref.ps_roi_pool_grad(x64.shape, rois.astype(np.float64), cot64, size, 0.5, layout)
  else:
    want = ref.ps_roi_align(x64, rois.astype(np.float64), size, 0.5, sr, layout)
    want_grad, _ = ref.ps_roi_align_grad(x64, rois.astype(np.float64), cot64, size, 0.5, sr, layout)
  tol = 1e-12 if dtype == "float64" else 2e-5
  np.testing.assert_allclose(out_small, want, rtol=tol, atol=tol)
  np.testing.assert_allclose(g_small, want_grad, rtol=tol, atol=tol)
