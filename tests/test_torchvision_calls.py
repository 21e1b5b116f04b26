"""torchvision's calls as written: its positional order and its list of
per-image boxes, against torchvision's own golden vectors (tests/data)."""

from __future__ import annotations

import pathlib

import jax
import numpy as np
import pytest

import jax_roi

DATA = pathlib.Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="module")
def ps_golden():
  with np.load(DATA / "torchvision_ps_roi_ops.npz") as f:
    return dict(f)


def _as_list(rois, n):
  """torchvision's list format: image i's boxes, in their original order."""
  return [rois[rois[:, 0] == i, 1:] for i in range(n)]


def _list_order(rois, n):
  """Where each row of the list format comes from (image 0's rows first)."""
  return np.concatenate([np.flatnonzero(rois[:, 0] == i) for i in range(n)])


@pytest.mark.parametrize("scale", ["1.0", "0.5"])
def test_positional_calls_and_ragged_lists_match_torchvision(golden, scale):
  """roi_align(x, boxes, output_size, spatial_scale, sampling_ratio, aligned)
  and roi_pool(x, boxes, output_size, spatial_scale), with boxes as
  torchvision's ragged list, give torchvision's outputs in its order."""
  x = golden["features"].astype(np.float32)
  rois = golden[f"rois_s{scale}"].astype(np.float32)
  boxes = _as_list(rois, 2)
  assert len(boxes[0]) != len(boxes[1])  # ragged
  order = _list_order(rois, 2)
  s = float(scale)
  for aligned in (0, 1):
    for sr in (0, 2):
      want = golden[f"roi_align_s{scale}_3x3_a{aligned}_sr{sr}_float32_out"]
      np.testing.assert_array_equal(jax_roi.roi_align(x, rois, 3, s, sr, bool(aligned)), want)
      out = jax_roi.roi_align(x, boxes, 3, s, sr, bool(aligned))
      assert out.shape == (56, 3, 3, 3)
      np.testing.assert_array_equal(out, want[order])
  want = golden[f"roi_pool_s{scale}_2x4_float32_out"]
  np.testing.assert_array_equal(jax_roi.roi_pool(x, boxes, (2, 4), s), want[order])
  np.testing.assert_array_equal(jax_roi.roi_pool(x, tuple(boxes), (2, 4), s), want[order])


def test_ps_ops_take_the_list(ps_golden):
  x = ps_golden["features_3x3"].astype(np.float32)
  rois = ps_golden["rois_s1.0_3x3"].astype(np.float32)
  order = _list_order(rois, 2)
  boxes = _as_list(rois, 2)
  np.testing.assert_array_equal(
    jax_roi.ps_roi_pool(x, boxes, 3, 1.0), ps_golden["ps_roi_pool_s1.0_3x3_float32_out"][order]
  )
  np.testing.assert_array_equal(
    jax_roi.ps_roi_align(x, boxes, 3, 1.0, 2),
    ps_golden["ps_roi_align_sr2_s1.0_3x3_float32_out"][order],
  )


def test_the_issue_call():
  """The call of the issue: roi_align(x, b, 7, 1/16, 2) with a list of two
  equal-length box arrays is (K, C, 7, 7), not the batched (N, R, ...)."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 16, 20, 24)).astype(np.float32)
  b = [
    np.array([[10.0, 20.0, 200.0, 180.0]], np.float32),
    np.array([[50.0, 40.0, 90.0, 300.0]], np.float32),
  ]
  out = jax_roi.roi_align(x, b, 7, 1 / 16, 2)
  assert out.shape == (2, 16, 7, 7)
  rows = np.array([[0, 10.0, 20.0, 200.0, 180.0], [1, 50.0, 40.0, 90.0, 300.0]], np.float32)
  keyword = jax_roi.roi_align(x, rows, 7, spatial_scale=1 / 16, sampling_ratio=2)
  np.testing.assert_array_equal(out, keyword)
  # An (N, R, 4) array stays the batched format.
  batched = jax_roi.roi_align(x, np.stack(b), 7, 1 / 16, 2)
  assert batched.shape == (2, 1, 16, 7, 7)
  np.testing.assert_array_equal(batched[:, 0], keyword)


def test_list_under_jit_grad_and_nhwc():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((3, 8, 12, 14)).astype(np.float32)
  boxes = [rng.uniform(0, 10, (k, 2)) for k in (2, 0, 3)]
  boxes = [np.concatenate([b, b + rng.uniform(1, 5, b.shape)], 1).astype(np.float32) for b in boxes]
  rows = np.concatenate(
    [np.concatenate([np.full((len(b), 1), i, np.float32), b], 1) for i, b in enumerate(boxes)]
  )
  f = jax.jit(lambda x, b: jax_roi.roi_align(x, b, 4, 1.0, 2, True))
  np.testing.assert_array_equal(f(x, boxes), jax_roi.roi_align(x, rows, 4, 1.0, 2, True))
  # Box gradients come back per image, as the list.
  g = jax.grad(lambda b: jax_roi.roi_align(x, b, 4, 1.0, 2, True).sum())(boxes)
  g_rows = jax.grad(lambda r: jax_roi.roi_align(x, r, 4, 1.0, 2, True).sum())(rows)
  assert [a.shape for a in g] == [b.shape for b in boxes]
  np.testing.assert_array_equal(np.concatenate(g), g_rows[:, 1:])
  nhwc = np.moveaxis(x, 1, 3)
  np.testing.assert_array_equal(
    jax_roi.roi_pool(nhwc, boxes, 3, 0.5, layout="NHWC"),
    np.moveaxis(jax_roi.roi_pool(x, rows, 3, 0.5), 1, 3),
  )


def test_multi_scale_positional_order_and_list():
  rng = np.random.default_rng(2)
  levels = [
    rng.standard_normal((2, 4, 32, 32)).astype(np.float32),
    rng.standard_normal((2, 4, 16, 16)).astype(np.float32),
  ]
  boxes = [
    np.array([[4.0, 4.0, 20.0, 30.0], [0.0, 0.0, 120.0, 110.0]], np.float32),
    np.array([[8.0, 2.0, 60.0, 40.0]], np.float32),
  ]
  rows = np.concatenate(
    [np.concatenate([np.full((len(b), 1), i, np.float32), b], 1) for i, b in enumerate(boxes)]
  )
  kw = jax_roi.multi_scale_roi_align(levels, rows, 5, sampling_ratio=2, image_size=(128, 128))
  pos = jax_roi.multi_scale_roi_align(levels, boxes, 5, 2, image_size=(128, 128))
  assert pos.shape == (3, 4, 5, 5)
  np.testing.assert_array_equal(pos, kw)


def test_rotated_takes_the_list():
  rng = np.random.default_rng(3)
  x = rng.standard_normal((2, 4, 16, 16)).astype(np.float32)
  boxes = [
    np.array([[8.0, 8.0, 6.0, 4.0, 30.0]], np.float32),
    np.array([[5.0, 9.0, 3.0, 7.0, -10.0], [10.0, 4.0, 5.0, 5.0, 0.0]], np.float32),
  ]
  rows = np.array(
    [[0, 8.0, 8.0, 6.0, 4.0, 30.0], [1, 5.0, 9.0, 3.0, 7.0, -10.0], [1, 10.0, 4.0, 5.0, 5.0, 0.0]],
    np.float32,
  )
  np.testing.assert_array_equal(
    jax_roi.roi_align_rotated(x, boxes, 3, 1.0, 2), jax_roi.roi_align_rotated(x, rows, 3, 1.0, 2)
  )
  flags = jax_roi.validate_rotated_rois(boxes, 2)
  assert flags["non_finite"].shape == (3,) and not flags["bad_index"].any()


def test_validate_rois_takes_the_list():
  boxes = [
    np.array([[0.0, 0.0, 4.0, 4.0], [5.0, 5.0, 1.0, 9.0]], np.float32),
    np.array([[2.0, 2.0, 2.0, 8.0]], np.float32),
  ]
  flags = jax_roi.validate_rois(boxes, 2)
  np.testing.assert_array_equal(flags["inverted"], [False, True, False])
  np.testing.assert_array_equal(flags["empty"], [False, False, True])
  assert not flags["bad_index"].any() and not flags["padding"].any()


def test_keyword_calls_and_row_lists_still_work():
  x = np.ones((1, 2, 8, 8), np.float32)
  rows_as_lists = [[0, 1.0, 1.0, 6.0, 6.0], [0, 0.0, 0.0, 3.0, 3.0]]  # a (K, 5) nested list
  out = jax_roi.roi_align(
    x,
    rows_as_lists,
    2,
    spatial_scale=1.0,
    sampling_ratio=2,
    aligned=False,
    mode="avg",
    layout="NCHW",
  )
  assert out.shape == (2, 2, 2, 2)
  assert jax_roi.roi_pool(x, np.array(rows_as_lists, np.float32), 2, spatial_scale=0.5).shape == (
    2,
    2,
    2,
    2,
  )


def test_list_errors_name_the_argument():
  x = np.ones((2, 2, 8, 8), np.float32)
  good = np.array([[0.0, 0.0, 4.0, 4.0]], np.float32)
  with pytest.raises(ValueError, match=r"rois\[1\] has shape \(1, 5\)"):
    jax_roi.roi_align(x, [good, np.ones((1, 5), np.float32)], 2)
  with pytest.raises(ValueError, match=r"boxes for 3 images, but the features have 2"):
    jax_roi.roi_align(x, [good, good, good], 2)
  with pytest.raises(TypeError, match=r"rois\[0\] must have a floating dtype"):
    jax_roi.roi_pool(x, [np.ones((1, 4), np.int32)], 2)
  with pytest.raises(ValueError, match=r"rois\[1\] has shape \(4,\)"):
    jax_roi.roi_pool(x, [good, np.ones(4, np.float32)], 2)
  # jax_roi's own options stay keyword-only.
  with pytest.raises(TypeError):
    jax_roi.roi_align(x, good[None].repeat(2, 0), 2, 1.0, 2, False, "avg")
