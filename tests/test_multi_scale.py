"""multi_scale_roi_align: torchvision's level assignment, equality with
per-level roi_align, formats, dtypes, layouts, transformations, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import DTYPES
from jax.test_util import check_grads

import jax_roi

SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
LAYOUTS = ("NCHW", "NHWC")


def _pyramid(rng, n=2, c=3, size=(64, 80), layout="NCHW", dtype=np.float32, levels=4):
  h, w = size
  out = []
  for l in range(levels):
    f = rng.standard_normal((n, c, h >> l, w >> l))
    out.append(
      np.ascontiguousarray(f if layout == "NCHW" else f.transpose(0, 2, 3, 1)).astype(dtype)
    )
  return out


def _boxes(rng, k, image=(256, 320)):
  """Box sizes spread over every level (16 px .. the image)."""
  size = np.exp(rng.uniform(np.log(8), np.log(600), (k, 1)))
  aspect = np.exp(rng.uniform(-0.6, 0.6, (k, 1)))
  wh = np.concatenate([size * aspect, size / aspect], 1)
  xy = rng.uniform([-20, -20], [image[1], image[0]], (k, 2))
  return np.concatenate([xy, xy + wh], 1)


def torchvision_levels(boxes, scales=SCALES, canonical_scale=224, canonical_level=4):
  """torchvision's LevelMapper, written from its formula, in float32."""
  b = boxes.astype(np.float32)
  area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  with np.errstate(invalid="ignore", divide="ignore"):
    target = np.floor(
      np.float32(canonical_level)
      + np.log2(np.sqrt(area) / np.float32(canonical_scale))
      + np.float32(1e-6)
    )
  k_min = int(-np.log2(np.float32(scales[0])))
  k_max = int(-np.log2(np.float32(scales[-1])))
  target = np.where(np.isnan(target), k_min, np.clip(target, k_min, k_max))
  return (target - k_min).astype(int)


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fmt", ["indexed", "batched"])
@pytest.mark.parametrize("aligned,sr", [(False, 2), (True, 0)])
def test_equals_roi_align_per_level(layout, fmt, aligned, sr):
  """Each RoI's output is roi_align's on its level (bit for bit, kernels)."""
  rng = np.random.default_rng(1)
  levels = _pyramid(rng, layout=layout)
  boxes = _boxes(rng, 60)
  if fmt == "indexed":
    index = rng.integers(0, 2, (60, 1)).astype(np.float64)
    index[::7] = -1  # padding rows
    rois = np.concatenate([index, boxes], 1).astype(np.float32)
  else:
    rois = boxes.reshape(2, 30, 4).astype(np.float32)
  kw = dict(sampling_ratio=sr, aligned=aligned, layout=layout)
  out = np.asarray(jax_roi.multi_scale_roi_align(levels, rois, (5, 4), image_size=(256, 320), **kw))
  lvl = torchvision_levels(boxes).reshape(rois.shape[:-1])
  assert len(np.unique(lvl)) == 4  # every level is exercised
  expected = np.zeros_like(out)
  for l, f in enumerate(levels):
    per_level = np.asarray(jax_roi.roi_align(f, rois, (5, 4), spatial_scale=SCALES[l], **kw))
    expected[lvl == l] = per_level[lvl == l]
  np.testing.assert_array_equal(out, expected)
  xla = jax_roi.multi_scale_roi_align(
    levels, rois, (5, 4), spatial_scales=SCALES, implementation="xla", **kw
  )
  np.testing.assert_allclose(xla, out, rtol=2e-5, atol=2e-5)


def test_level_boundaries_follow_torchvision():
  """Power-of-two box sizes sit exactly on level boundaries: eps decides."""
  rng = np.random.default_rng(2)
  levels = _pyramid(rng, c=1)
  sizes = [8, 56, 111.9, 112, 112.1, 224, 448, 896, 10000, 0]
  # Centred at (16, 16): inside every level's map, whatever the size.
  boxes = np.array(
    [[16 - s / 2, 16 - s / 2, 16 + s / 2, 16 + s / 2] for s in sizes] + [[5, 5, 1, 9]], np.float64
  )
  rois = np.concatenate([np.zeros((len(boxes), 1)), boxes], 1).astype(np.float32)
  expected = torchvision_levels(boxes)
  np.testing.assert_array_equal(expected[:10], [0, 0, 0, 1, 1, 2, 3, 3, 3, 0])
  # A constant per level identifies the level a RoI read.
  marks = [np.full_like(f, l + 1) for l, f in enumerate(levels)]
  out = np.asarray(
    jax_roi.multi_scale_roi_align(
      marks, rois, 1, spatial_scales=SCALES, sampling_ratio=1, aligned=True
    )
  )
  np.testing.assert_array_equal(out[:, 0, 0, 0], expected + 1)


def test_inferred_scales_match_torchvision_rule():
  rng = np.random.default_rng(3)
  levels = _pyramid(rng, size=(50, 76))  # an 800x1216 image / 16, odd sizes below
  rois = np.array([[0, 10, 10, 400, 300]], np.float32)
  a = jax_roi.multi_scale_roi_align(levels, rois, 3, image_size=(800, 1216))
  b = jax_roi.multi_scale_roi_align(
    levels, rois, 3, spatial_scales=(1 / 16, 1 / 32, 1 / 64, 1 / 128)
  )
  np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_dtypes(dtype):
  rng = np.random.default_rng(4)
  with jax.enable_x64(dtype == "float64"):
    levels = _pyramid(rng, dtype=DTYPES[dtype])
    rois = np.concatenate([np.zeros((20, 1)), _boxes(rng, 20)], 1).astype(np.float32)
    out = jax_roi.multi_scale_roi_align(levels, rois, 4, spatial_scales=SCALES, sampling_ratio=2)
    assert out.dtype == levels[0].dtype
    as32 = jax_roi.multi_scale_roi_align(
      [f.astype(np.float32) for f in levels], rois, 4, spatial_scales=SCALES, sampling_ratio=2
    )
    tol = 1e-6 if dtype in ("float32", "float64") else 0
    np.testing.assert_allclose(
      np.asarray(out, np.float32),
      np.asarray(as32).astype(levels[0].dtype).astype(np.float32),
      rtol=tol,
      atol=tol,
    )
    grads = jax.grad(
      lambda fs: jnp.sum(
        jax_roi.multi_scale_roi_align(fs, rois, 4, spatial_scales=SCALES, sampling_ratio=2).astype(
          jnp.float32
        )
      )
    )(levels)
    assert [g.dtype for g in grads] == [f.dtype for f in levels]


@pytest.mark.slow  # (~20 s each: the pure-JAX gradient's compilation)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradients_match_pure_jax(layout):
  rng = np.random.default_rng(5)
  levels = _pyramid(rng, layout=layout)
  rois = np.concatenate([rng.integers(0, 2, (40, 1)), _boxes(rng, 40)], 1).astype(np.float32)

  def loss(impl):
    return lambda fs, r: jnp.sum(
      jax_roi.multi_scale_roi_align(
        fs, r, 4, spatial_scales=SCALES, sampling_ratio=2, layout=layout, implementation=impl
      )
      ** 2
    )

  gf, gr = jax.grad(loss("ffi"), argnums=(0, 1))(levels, rois)
  xf, xr = jax.grad(loss("xla"), argnums=(0, 1))(levels, rois)
  for a, b in zip(gf, xf):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(gr, xr, rtol=1e-4, atol=1e-4)


def test_check_grads_float64(x64):
  rng = np.random.default_rng(6)
  levels = _pyramid(rng, c=2, size=(32, 40), levels=2, dtype=np.float64)
  rois = np.array(
    [[0.5, 3.3, 4.1, 40.7, 33.9], [1.5, 10.2, 2.7, 120.3, 90.6], [0.5, 50.1, 20.3, 61.2, 70.4]]
  )
  f = lambda fs, r: jax_roi.multi_scale_roi_align(
    fs, r, (3, 2), spatial_scales=(0.25, 0.125), sampling_ratio=2, canonical_scale=32
  )
  check_grads(f, (levels, rois), order=1, modes=["rev"], eps=1e-6)
  check_grads(lambda fs: f(fs, rois), (levels,), order=2, modes=["rev"])


@pytest.mark.parametrize("in_axes", [(0, None), (None, 0), (0, 0)])
def test_vmap_one_launch(in_axes):
  rng = np.random.default_rng(7)
  stacks = [np.stack([a, b]) for a, b in zip(_pyramid(rng), _pyramid(rng))]
  rois = np.stack(
    [np.concatenate([rng.integers(0, 2, (10, 1)), _boxes(rng, 10)], 1) for _ in range(2)]
  ).astype(np.float32)
  f = lambda fs, r: jax_roi.multi_scale_roi_align(fs, r, 3, spatial_scales=SCALES, sampling_ratio=2)
  fs_arg = stacks if in_axes[0] == 0 else [s[0] for s in stacks]
  r_arg = rois if in_axes[1] == 0 else rois[0]
  out = jax.vmap(f, in_axes=in_axes)(fs_arg, r_arg)
  for i in range(2):
    expected = f(
      [s[i] if in_axes[0] == 0 else s[0] for s in stacks], rois[i] if in_axes[1] == 0 else rois[0]
    )
    np.testing.assert_array_equal(out[i], expected)
  text = jax.jit(jax.vmap(f, in_axes=in_axes)).lower(fs_arg, r_arg).compile().as_text()
  assert text.count('custom_call_target="jax_roi_') == 1 and "while" not in text


def test_one_fused_call_per_pass():
  rng = np.random.default_rng(8)
  levels = _pyramid(rng)
  rois = np.concatenate([np.zeros((8, 1)), _boxes(rng, 8)], 1).astype(np.float32)
  grad = jax.jit(
    jax.grad(
      lambda fs, r: jnp.sum(jax_roi.multi_scale_roi_align(fs, r, 3, spatial_scales=SCALES) ** 2),
      argnums=(0, 1),
    )
  )
  text = grad.lower(levels, rois).compile().as_text()
  for target in ("fwd", "bwd", "box_grad"):
    assert text.count(f'custom_call_target="jax_roi_multi_scale_roi_align_{target}_v1"') == 1


ERRORS = [
  (dict(features="x"), TypeError, "list or tuple"),
  (dict(features=[]), ValueError, "1 to 8 levels"),
  (dict(spatial_scales=None, image_size=None), ValueError, "image_size"),
  (dict(spatial_scales=(0.25, 0.125)), ValueError, "one scale per level"),
  (dict(spatial_scales=(0.25, 0.125, 0.125, 1 / 32)), ValueError, "halve"),
  (dict(spatial_scales=(0.25, -0.125, 1 / 16, 1 / 32)), ValueError, "spatial_scale"),
  (dict(canonical_scale=0), ValueError, "canonical_scale"),
  (dict(sampling_ratio=5000), ValueError, "sampling_ratio must be at most 1024"),
]


@pytest.mark.parametrize("overrides,error,message", ERRORS)
def test_errors(overrides, error, message):
  rng = np.random.default_rng(9)
  kwargs = dict(features=_pyramid(rng), spatial_scales=SCALES)
  kwargs.update(overrides)
  features = kwargs.pop("features")
  with pytest.raises(error, match=message):
    jax_roi.multi_scale_roi_align(features, np.zeros((1, 5), np.float32), 2, **kwargs)


def test_level_mismatch_errors():
  rng = np.random.default_rng(10)
  levels = _pyramid(rng)
  rois = np.zeros((1, 5), np.float32)
  with pytest.raises(ValueError, match=r"features\[1\] must have the dtype, batch size"):
    jax_roi.multi_scale_roi_align([levels[0], levels[1][:, :2]], rois, 2, spatial_scales=SCALES[:2])
  with pytest.raises(TypeError, match=r"features\[1\] must be float16"):
    jax_roi.multi_scale_roi_align(
      [levels[0], levels[1].astype(np.int32)], rois, 2, spatial_scales=SCALES[:2]
    )


def test_matches_torchvision_multiscale():
  """Optional: torchvision.ops.MultiScaleRoIAlign itself (when installed)."""
  torch = pytest.importorskip("torch")
  tv_ops = pytest.importorskip("torchvision.ops")
  rng = np.random.default_rng(11)
  levels = _pyramid(rng, size=(64, 80))
  boxes = [_boxes(rng, 25).astype(np.float32) for _ in range(2)]
  pooler = tv_ops.MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], 7, 2)
  expected = pooler(
    {f"p{l + 2}": torch.tensor(f) for l, f in enumerate(levels)},
    [torch.tensor(b) for b in boxes],
    [(256, 320), (256, 320)],
  ).numpy()
  rois = np.concatenate([np.repeat(np.arange(2.0), 25)[:, None], np.concatenate(boxes)], 1).astype(
    np.float32
  )
  out = jax_roi.multi_scale_roi_align(levels, rois, 7, image_size=(256, 320), sampling_ratio=2)
  np.testing.assert_array_equal(np.asarray(out), expected)
