"""Hostile and unusual inputs: RoI checks, limits, subnormals, empty batches,
concurrency and (opt-in) tensors past 2**31 elements."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap
import threading

import jax
import jax.numpy as jnp
import loop_reference as ref
import ml_dtypes
import numpy as np
import pytest
from helpers import random_features
from jax.experimental import checkify

import jax_roi

BOXES = np.array(
  [
    [0, 1.0, 1.0, 5.0, 6.0],  # fine
    [-1, 0.0, 0.0, 0.0, 0.0],  # padding
    [0, np.nan, 1.0, 5.0, 6.0],  # non-finite
    [1, 5.0, 1.0, 2.0, 6.0],  # inverted
    [0, 2.0, 2.0, 2.0, 6.0],  # empty
    [2, 1.0, 1.0, 5.0, 6.0],  # index >= N (N = 2)
    [0.5, 1.0, 1.0, 5.0, 6.0],  # fractional index
  ],
  np.float32,
)


def test_validate_rois_flags():
  flags = jax.jit(jax_roi.validate_rois, static_argnums=1)(BOXES, 2)
  expected = {
    "non_finite": [0, 0, 1, 0, 0, 0, 0],
    "inverted": [0, 0, 0, 1, 0, 0, 0],
    "empty": [0, 1, 0, 0, 1, 0, 0],
    "padding": [0, 1, 0, 0, 0, 0, 0],
    "bad_index": [0, 0, 0, 0, 0, 1, 1],
  }
  assert set(flags) == set(expected)
  for name, value in expected.items():
    np.testing.assert_array_equal(np.asarray(flags[name]), np.array(value, bool), err_msg=name)


def test_validate_rois_batched_and_yxyx():
  boxes = np.array([[[1.0, 2.0, 5.0, 3.0], [1.0, 2.0, 0.0, 9.0]]], np.float32)  # (1, 2, 4)
  xyxy = jax_roi.validate_rois(boxes, 1)
  yxyx = jax_roi.validate_rois(boxes, 1, box_order="yxyx")
  assert "padding" not in xyxy and "bad_index" not in xyxy
  np.testing.assert_array_equal(np.asarray(xyxy["inverted"]), [[False, True]])
  # As yxyx, the second box is y1=1 > y2=0.
  np.testing.assert_array_equal(np.asarray(yxyx["inverted"]), [[False, True]])
  np.testing.assert_array_equal(np.asarray(yxyx["inverted"][..., :1]), [[False]])
  with pytest.raises(ValueError, match="rois must have shape"):
    jax_roi.validate_rois(np.zeros((3, 4), np.float32), 1)
  with pytest.raises(ValueError, match="box_order must be one of"):
    jax_roi.validate_rois(boxes, 1, box_order="xywh")


@pytest.mark.parametrize(
  "row,message",
  [
    (2, "RoI 2 has a NaN or infinite coordinate"),
    (3, "RoI 3 is inverted"),
    (4, "RoI 4 has zero width or height"),
    (5, "RoI 5 has a batch index"),
    (6, "RoI 6 has a batch index"),
  ],
)
def test_check_rois_names_the_first_bad_roi(row, message):
  features = jnp.ones((2, 1, 8, 8), jnp.float32)
  # The bad row twice, first at index 2.
  rois = np.concatenate([BOXES[:2], BOXES[row : row + 1], BOXES[row : row + 1]])
  message = message.replace(f"RoI {row}", "RoI 2")

  def pooled(features, rois):
    jax_roi.check_rois(rois, features.shape[0])
    return jax_roi.roi_align(features, rois, 2)

  err, out = checkify.checkify(jax.jit(pooled))(features, rois)
  assert out.shape == (4, 1, 2, 2)
  with pytest.raises(checkify.JaxRuntimeError, match=message):
    err.throw()
  err, _ = checkify.checkify(jax.jit(pooled))(features, BOXES[:2])  # fine + padding
  err.throw()


def test_check_rois_allow_empty():
  rois = BOXES[np.array([0, 4])]
  err, _ = checkify.checkify(lambda r: jax_roi.check_rois(r, 2, allow_empty=True))(rois)
  err.throw()
  err, _ = checkify.checkify(lambda r: jax_roi.check_rois(r, 2))(rois)
  with pytest.raises(checkify.JaxRuntimeError, match="zero width or height"):
    err.throw()


@pytest.mark.parametrize("value", [1025, 10**9])
def test_sampling_ratio_is_capped(value):
  x = jnp.ones((1, 1, 4, 4))
  with pytest.raises(ValueError, match="sampling_ratio"):
    jax_roi.roi_align(x, BOXES[:1], 2, sampling_ratio=value)
  jax_roi.roi_align(x, BOXES[:1], 1, sampling_ratio=1024)  # the cap itself is allowed


@pytest.mark.parametrize("op", [jax_roi.roi_pool, jax_roi.roi_align])
def test_huge_output_size_is_rejected_before_any_allocation(op):
  x = jnp.ones((1, 1, 4, 4))
  with pytest.raises(ValueError, match=r"output_size PH \* PW must be below 2\*\*31"):
    op(x, BOXES[:1], (65536, 32768))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_subnormal_features_are_not_flushed(layout):
  """XLA's CPU threads run with FTZ/DAZ set; the kernels must not flush."""
  tiny = np.float32(1e-40)  # subnormal in float32
  assert 0 < tiny < np.finfo(np.float32).tiny
  rng = np.random.default_rng(0)
  x = (random_features(rng, 1, 2, 6, 6, layout).astype(np.float64) * 1e-40).astype(np.float32)
  assert (np.abs(x[x != 0]) < np.finfo(np.float32).tiny).all()
  rois = np.array([[0, 0.0, 0.0, 5.0, 5.0], [0, 1.3, 0.7, 4.2, 3.9]], np.float32)
  pooled = jax_roi.roi_pool(x, rois, 2, layout=layout)
  expected, _ = ref.roi_pool(x, rois, (2, 2), 1.0, layout)
  np.testing.assert_array_equal(np.asarray(pooled), expected.astype(np.float32))
  assert (np.asarray(pooled) != 0).all()
  aligned = jax_roi.roi_align(x, rois, 2, sampling_ratio=2, layout=layout)
  expected, _ = ref.roi_align(x, rois, (2, 2), sampling_ratio=2, layout=layout)
  assert (np.asarray(aligned) != 0).all()
  np.testing.assert_allclose(np.asarray(aligned, np.float64), expected, rtol=0, atol=2e-45)
  # Gradients of subnormal size survive too.
  grad = jax.grad(
    lambda x: (
      jnp.sum(jax_roi.roi_align(x, rois, 2, sampling_ratio=2, layout=layout)) * np.float32(1e-30)
    )
  )(jnp.asarray(x))
  assert np.count_nonzero(np.asarray(grad)) > 0


@pytest.mark.parametrize("op", ["roi_pool", "roi_align"])
def test_empty_feature_batch(op):
  """N = 0 images: every (K, 5) row is out of range, so outputs and gradients are 0."""
  fn = getattr(jax_roi, op)
  x = jnp.zeros((0, 3, 5, 5), jnp.float32)
  rois = BOXES[:3]
  out = fn(x, rois, 2)
  assert out.shape == (3, 3, 2, 2)
  np.testing.assert_array_equal(np.asarray(out), 0)
  gx, gr = jax.grad(lambda x, r: jnp.sum(fn(x, r, 2)), argnums=(0, 1))(x, jnp.asarray(rois))
  assert gx.shape == x.shape
  np.testing.assert_array_equal(np.asarray(gr), 0)


def test_concurrent_calls_from_threads_agree(assert_same_gradient):
  """Several Python threads running compiled ops at once give the serial results."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(random_features(rng, 2, 4, 24, 24))
  rois = jnp.asarray(
    np.concatenate(
      [rng.integers(0, 2, (64, 1)), rng.uniform(0, 20, (64, 2)), rng.uniform(20, 24, (64, 2))],
      axis=1,
    ).astype(np.float32)
  )
  fns = {
    "pool": jax.jit(jax.value_and_grad(lambda x: jnp.sum(jax_roi.roi_pool(x, rois, 3) ** 2))),
    "align": jax.jit(jax.value_and_grad(lambda x: jnp.sum(jax_roi.roi_align(x, rois, 3) ** 2))),
  }
  serial = {k: jax.device_get(f(x)) for k, f in fns.items()}
  results, errors = [], []

  def work(i):
    try:
      for _ in range(5):
        name = ("pool", "align")[i % 2]
        results.append((name, jax.device_get(fns[name](x))))
    except Exception as e:  # surfaced below
      errors.append(e)

  threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors and len(results) == 40
  for name, (value, grad) in results:
    assert_same_gradient(value, serial[name][0])  # a sum of squares: through reductions
    assert_same_gradient(grad, serial[name][1])


def test_concurrent_calls_on_several_devices(tmp_path):
  """Four CPU devices, each fed by its own thread, give identical results."""
  script = textwrap.dedent("""
      import threading
      import jax, jax.numpy as jnp, numpy as np
      import jax_roi
      devices = jax.devices()
      assert len(devices) == 4, devices
      rng = np.random.default_rng(2)
      x = rng.standard_normal((2, 3, 20, 20)).astype(np.float32)
      rois = np.concatenate([rng.integers(0, 2, (32, 1)), rng.uniform(0, 12, (32, 2)),
                             rng.uniform(12, 20, (32, 2))], axis=1).astype(np.float32)
      f = jax.jit(jax.value_and_grad(
          lambda x, r: jnp.sum(jax_roi.roi_align(x, r, 4, sampling_ratio=2) ** 2)))
      out = {}
      def work(d):
        xd, rd = jax.device_put(x, d), jax.device_put(rois, d)
        for _ in range(5):
          value, grad = f(xd, rd)
        assert grad.devices() == {d}
        out[d.id] = (np.asarray(value), np.asarray(grad))
      threads = [threading.Thread(target=work, args=(d,)) for d in devices]
      [t.start() for t in threads]
      [t.join() for t in threads]
      assert len(out) == 4
      for value, grad in out.values():
        np.testing.assert_array_equal(value, out[0][0])
        np.testing.assert_array_equal(grad, out[0][1])
      print("ok")
      """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, "-c", script],
    env=env,
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


# The 2**31-element tests: one memory figure, the README's too (the larger
# of the two tests' peaks).
LARGE_TESTS_MEMORY = "about 18 GB of memory"
LARGE_TESTS_REASON = f"set JAX_ROI_LARGE_TESTS=1 (needs {LARGE_TESTS_MEMORY})"


def test_the_readme_gives_the_large_tests_memory():
  readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
  assert f"({LARGE_TESTS_MEMORY})" in readme
  assert readme.count(" GB of memory") == 1


@pytest.mark.skipif(os.environ.get("JAX_ROI_LARGE_TESTS") != "1", reason=LARGE_TESTS_REASON)
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_more_than_2_31_elements_bfloat16(layout, assert_same_gradient):
  """64-bit offsets: a bfloat16 map of 2**31 + 2**27 elements; RoIs at its far end
  pool what the same RoIs pool from a small crop of that end."""
  n, c, h, w = 2, 4, 16384, 17408  # 2 * 4 * 16384 * 17408 = 2**31 + 2**27 elements
  assert n * c * h * w > 2**31
  shape = (n, c, h, w) if layout == "NCHW" else (n, h, w, c)
  crop = 32
  rng = np.random.default_rng(3)
  patch = rng.standard_normal((c, crop, crop)).astype(ml_dtypes.bfloat16)
  if layout == "NHWC":
    patch = patch.transpose(1, 2, 0)
  x = np.zeros(shape, ml_dtypes.bfloat16)
  if layout == "NCHW":
    x[n - 1, :, h - crop :, w - crop :] = patch
  else:
    x[n - 1, h - crop :, w - crop :, :] = patch
  small = np.zeros((1,) + patch.shape, ml_dtypes.bfloat16)
  small[0] = patch
  # 24-pixel boxes on a 1/4-pixel grid: bins and sample positions are exact in
  # float32 at the far offset too (otherwise coordinates near 17000 round).
  local = np.array([[0, 3.25, 4.75, 27.25, 28.75], [0, 1.0, 0.5, 25.0, 24.5]], np.float32)
  far = local.copy()
  far[:, 0] = n - 1
  far[:, 1::2] += w - crop
  far[:, 2::2] += h - crop
  x = jnp.asarray(x)
  for op, kw in ((jax_roi.roi_pool, {}), (jax_roi.roi_align, dict(sampling_ratio=2))):
    big = op(x, far, 3, layout=layout, **kw)
    expected = op(jnp.asarray(small), local, 3, layout=layout, **kw)
    np.testing.assert_array_equal(np.asarray(big, np.float32), np.asarray(expected, np.float32))
    loss = lambda x, r: jnp.sum(op(x, r, 3, layout=layout, **kw).astype(jnp.float32))
    grad = jax.jit(jax.grad(loss))(x, far)
    expected_grad = np.asarray(jax.grad(loss)(jnp.asarray(small), local)[0], np.float32)
    if layout == "NCHW":
      tail = grad[n - 1, :, h - crop :, w - crop :]
    else:
      tail = grad[n - 1, h - crop :, w - crop :, :]
    assert_same_gradient(np.asarray(tail, np.float32), expected_grad)
    total = jax.jit(lambda g: jnp.sum(jnp.abs(g), dtype=jnp.float32))(grad)
    assert_same_gradient(np.float32(total), np.abs(expected_grad).sum(dtype=np.float32))
    del grad


@pytest.mark.skipif(os.environ.get("JAX_ROI_LARGE_TESTS") != "1", reason=LARGE_TESTS_REASON)
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_more_than_2_31_output_elements_bfloat16(layout):
  """64-bit output offsets: 2**31 + 2**16 bfloat16 outputs. The last RoIs'
  outputs equal those RoIs pooled alone, and the feature gradient (through
  every output) equals its sum computed from two small calls."""
  c, size, out_size = 16, 24, 16
  k_tail = 16
  k = 2**31 // (c * out_size * out_size) + k_tail  # 524304 RoIs
  assert k * c * out_size * out_size > 2**31
  rng = np.random.default_rng(4)
  x = jnp.asarray(random_features(rng, 1, c, size, size, layout).astype(ml_dtypes.bfloat16))
  head = np.array([[0, 2.5, 3.0, 17.0, 20.5]], np.float32)
  tail = np.concatenate(
    [np.zeros((k_tail, 1)), rng.uniform(0, 10, (k_tail, 2)), rng.uniform(12, 24, (k_tail, 2))], 1
  ).astype(np.float32)
  rois = jnp.asarray(np.concatenate([np.repeat(head, k - k_tail, 0), tail]))
  kw = dict(layout=layout, sampling_ratio=1)
  last = jax.jit(lambda x, r: jax_roi.roi_align(x, r, out_size, **kw)[-k_tail - 1 :])(x, rois)
  alone = jax_roi.roi_align(x, np.concatenate([head, tail]), out_size, **kw)
  np.testing.assert_array_equal(np.asarray(last, np.float32), np.asarray(alone, np.float32))
  pooled = jax.jit(lambda x, r: jax_roi.roi_pool(x, r, out_size, layout=layout)[-k_tail:])(x, rois)
  np.testing.assert_array_equal(
    np.asarray(pooled, np.float32),
    np.asarray(jax_roi.roi_pool(x, tail, out_size, layout=layout), np.float32),
  )
  loss = lambda x, r: jnp.sum(jax_roi.roi_align(x, r, out_size, **kw), dtype=jnp.float32)
  grad = np.asarray(jax.jit(jax.grad(loss))(x, rois), np.float64)
  g_head = np.asarray(jax.grad(loss)(x, head), np.float64)
  g_tail = np.asarray(jax.grad(loss)(x, tail), np.float64)
  expected = (k - k_tail) * g_head + g_tail
  # float32 accumulation of ~5e5 equal terms per element, then bfloat16.
  np.testing.assert_allclose(grad, expected, rtol=3e-2, atol=1e-3 * np.abs(expected).max())
  assert np.count_nonzero(grad) == np.count_nonzero(expected)


@pytest.mark.parametrize("implementation", ["ffi", "xla"])
@pytest.mark.parametrize("column", [3, 4])
def test_minus_infinite_end_is_a_one_pixel_roi(implementation, column):
  """torchvision clamps the size to 1 pixel before anything else
  (max(-inf, 1) = 1), so x2 or y2 = -inf is a 1-pixel RoI like x2 = -1e30,
  not an empty one (found by tools/fuzz.py)."""
  x = jnp.asarray(random_features(np.random.default_rng(5), 1, 2, 9, 9), jnp.float32)
  rois = np.array([[0, 3.3, 2.6, 6.0, 7.0]] * 3, np.float32)
  rois[0, column], rois[1, column] = -np.inf, -1e30
  rois[2, column] = np.inf  # undefined in torchvision: empty here
  kw = dict(sampling_ratio=2, implementation=implementation)
  out = np.asarray(jax_roi.roi_align(x, rois, 2, **kw))
  expected, _ = ref.roi_align(np.asarray(x), rois, (2, 2), sampling_ratio=2)
  np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(out[0], out[1])
  assert np.abs(out[0]).min() > 0 and (out[2] == 0).all()
  grad = np.asarray(
    jax.grad(lambda r: jnp.sum(jax_roi.roi_align(x, r, 2, **kw)))(jnp.asarray(rois))
  )
  np.testing.assert_array_equal(grad[0], grad[1])
  assert grad[0, column] == 0 and np.all(np.isfinite(grad))
