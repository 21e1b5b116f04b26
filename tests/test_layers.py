"""Flax layers: doctests, no parameters, linen == nnx == ops, training under jit."""

from __future__ import annotations

import doctest

import jax
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx

import jax_roi
from jax_roi import linen as roi_linen
from jax_roi import nnx as roi_nnx


@pytest.mark.parametrize("module", [roi_linen, roi_nnx])
def test_doctests(module):
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
  assert result.attempted >= 3 and result.failed == 0


def _inputs():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 32, 40, 8)).astype(np.float32)
  levels = [x, x[:, ::2, ::2]]
  rois = np.array(
    [[0, 4.0, 4.0, 60.0, 50.0], [1, 10.0, 30.0, 140.0, 120.0], [1, 0.0, 0.0, 159.0, 127.0]],
    np.float32,
  )
  return x, levels, rois


CASES = [
  (
    "RoIPool",
    dict(output_size=5, spatial_scale=0.25, layout="NHWC"),
    lambda x, lv, r: jax_roi.roi_pool(x, r, 5, spatial_scale=0.25, layout="NHWC"),
  ),
  (
    "RoIAlign",
    dict(output_size=(4, 3), spatial_scale=0.25, sampling_ratio=2, aligned=True, layout="NHWC"),
    lambda x, lv, r: jax_roi.roi_align(
      x, r, (4, 3), spatial_scale=0.25, sampling_ratio=2, aligned=True, layout="NHWC"
    ),
  ),
  (
    "RoIAlign",
    dict(output_size=3, spatial_scale=0.25, mode="max", layout="NHWC"),
    lambda x, lv, r: jax_roi.roi_align(x, r, 3, spatial_scale=0.25, mode="max", layout="NHWC"),
  ),
  (
    "MultiScaleRoIAlign",
    dict(output_size=4, spatial_scales=(0.25, 0.125), sampling_ratio=2, layout="NHWC"),
    lambda x, lv, r: jax_roi.multi_scale_roi_align(
      lv, r, 4, spatial_scales=(0.25, 0.125), sampling_ratio=2, layout="NHWC"
    ),
  ),
  # Position-sensitive: 8 channels = 2 output channels x (2, 2) bins.
  (
    "PSRoIPool",
    dict(output_size=2, spatial_scale=0.25, layout="NHWC"),
    lambda x, lv, r: jax_roi.ps_roi_pool(x, r, 2, 0.25, layout="NHWC"),
  ),
  (
    "PSRoIAlign",
    dict(output_size=(4, 2), spatial_scale=0.25, sampling_ratio=2, layout="NHWC"),
    lambda x, lv, r: jax_roi.ps_roi_align(x, r, (4, 2), 0.25, 2, layout="NHWC"),
  ),
]


@pytest.mark.parametrize("name,kwargs,op", CASES)
def test_linen_and_nnx_agree_with_the_op(name, kwargs, op):
  x, levels, rois = _inputs()
  inp = levels if name == "MultiScaleRoIAlign" else x
  expected = op(x, levels, rois)
  linen_layer = getattr(roi_linen, name)(**kwargs)
  variables = linen_layer.init(jax.random.key(0), inp, rois)
  assert jax.tree_util.tree_leaves(variables) == []
  out_linen = linen_layer.apply(variables, inp, rois)
  size = kwargs.pop("output_size")
  nnx_layer = getattr(roi_nnx, name)(size, **kwargs)
  assert jax.tree_util.tree_leaves(nnx.state(nnx_layer)) == []
  out_nnx = nnx_layer(inp, rois)
  np.testing.assert_array_equal(out_linen, expected)
  np.testing.assert_array_equal(out_nnx, expected)


LAYER_NAMES = [
  "RoIPool",
  "RoIAlign",
  "MultiScaleRoIAlign",
  "PSRoIPool",
  "PSRoIAlign",
  "RoIAlignRotated",
]


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_layers_have_no_default_layout(name):
  # The silent trap this closes: NCHW features into a channels-last layer
  # used to pool over (C, H) as if they were (H, W) and return a wrong
  # (K, 7, 7, W) result without any error.
  x, levels, rois = _inputs()
  inp = levels if name == "MultiScaleRoIAlign" else x
  kwargs = dict(spatial_scales=(0.25, 0.125)) if name == "MultiScaleRoIAlign" else {}
  with pytest.raises(TypeError, match=r'layout="NHWC".*layout="NCHW"'):
    getattr(roi_nnx, name)(2, **kwargs)
  layer = getattr(roi_linen, name)(output_size=2, **kwargs)
  with pytest.raises(TypeError, match=r"needs layout="):
    layer.init(jax.random.key(0), inp, rois)


def test_each_layout_pools_its_own_axes():
  x, _, rois = _inputs()  # NHWC
  nchw = np.moveaxis(x, 3, 1)
  expected = jax_roi.roi_align(nchw, rois, 3, 0.25, 2, layout="NCHW")  # (K, C, 3, 3)
  for layer in (
    roi_nnx.RoIAlign(3, spatial_scale=0.25, sampling_ratio=2, layout="NCHW"),
    roi_linen.RoIAlign(3, spatial_scale=0.25, sampling_ratio=2, layout="NCHW"),
  ):
    out = layer(nchw, rois) if isinstance(layer, nnx.Module) else layer.apply({}, nchw, rois)
    np.testing.assert_array_equal(out, expected)
  out = roi_nnx.RoIAlign(3, spatial_scale=0.25, sampling_ratio=2, layout="NHWC")(x, rois)
  np.testing.assert_array_equal(np.moveaxis(out, 3, 1), expected)


def test_layers_take_torchvision_list_of_boxes():
  x, levels, rois = _inputs()
  boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]  # ragged: 1 and 2 boxes
  layer = roi_linen.RoIAlign(3, spatial_scale=0.25, sampling_ratio=2, layout="NHWC")
  np.testing.assert_array_equal(layer.apply({}, x, boxes), layer.apply({}, x, rois))
  ms = roi_nnx.MultiScaleRoIAlign(3, sampling_ratio=2, spatial_scales=(0.25, 0.125), layout="NHWC")
  np.testing.assert_array_equal(ms(levels, boxes), ms(levels, rois))


class _Head(nn.Module):
  """conv -> RoIAlign -> dense: a toy RoI classifier."""

  @nn.compact
  def __call__(self, images, rois):
    f = nn.relu(nn.Conv(8, (3, 3))(images))
    pooled = roi_linen.RoIAlign(
      4, spatial_scale=1.0, sampling_ratio=2, aligned=True, layout="NHWC"
    )(f, rois)
    return nn.Dense(3)(pooled.reshape(pooled.shape[0], -1))


def test_linen_model_trains_under_jit():
  rng = np.random.default_rng(1)
  images = rng.standard_normal((2, 24, 24, 3)).astype(np.float32)
  rois = np.concatenate(
    [rng.integers(0, 2, (12, 1)), rng.uniform(0, 10, (12, 2)), rng.uniform(12, 23, (12, 2))], 1
  ).astype(np.float32)
  labels = rng.integers(0, 3, 12)
  model = _Head()
  params = model.init(jax.random.key(0), images, rois)
  tx = optax.adam(1e-2)
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    def loss_fn(p):
      logits = model.apply(p, images, rois)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = tx.update(grads, state)
    return optax.apply_updates(params, updates), state, loss

  losses = []
  for _ in range(30):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  assert losses[-1] < 0.5 * losses[0]


def test_nnx_model_trains_under_jit():
  class Head(nnx.Module):
    def __init__(self, rngs):
      self.conv = nnx.Conv(3, 8, (3, 3), rngs=rngs)
      self.pool = roi_nnx.RoIAlign(4, sampling_ratio=2, aligned=True, layout="NHWC")
      self.dense = nnx.Linear(4 * 4 * 8, 3, rngs=rngs)

    def __call__(self, images, rois):
      pooled = self.pool(nnx.relu(self.conv(images)), rois)
      return self.dense(pooled.reshape(pooled.shape[0], -1))

  rng = np.random.default_rng(2)
  images = rng.standard_normal((2, 24, 24, 3)).astype(np.float32)
  rois = np.concatenate(
    [rng.integers(0, 2, (12, 1)), rng.uniform(0, 10, (12, 2)), rng.uniform(12, 23, (12, 2))], 1
  ).astype(np.float32)
  labels = rng.integers(0, 3, 12)
  model = Head(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer):
    def loss_fn(m):
      return optax.softmax_cross_entropy_with_integer_labels(m(images, rois), labels).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(step(model, optimizer)) for _ in range(30)]
  assert losses[-1] < 0.5 * losses[0]


def test_rotated_layers_agree_with_the_op():
  x, _, _ = _inputs()
  rois = np.array([[0, 30.0, 40.0, 60.0, 20.0, 0.4], [1, 90.0, 60.0, 30.0, 70.0, -1.2]], np.float32)
  kwargs = dict(
    spatial_scale=0.25, sampling_ratio=2, angle_unit="radians", clockwise=True, layout="NHWC"
  )
  expected = jax_roi.roi_align_rotated(x, rois, (4, 3), **kwargs)
  layer = roi_linen.RoIAlignRotated(output_size=(4, 3), **kwargs)
  variables = layer.init(jax.random.key(0), x, rois)
  assert jax.tree_util.tree_leaves(variables) == []
  np.testing.assert_array_equal(layer.apply(variables, x, rois), expected)
  np.testing.assert_array_equal(roi_nnx.RoIAlignRotated((4, 3), **kwargs)(x, rois), expected)
  assert roi_linen.RoIAlignRotated(7, layout="NHWC").aligned


def test_prroi_layers_agree_with_the_op():
  x, _, _ = _inputs()
  rois = np.array([[0, 30.0, 40.0, 60.0, 70.0], [1, 9.5, 6.0, 130.0, 70.0]], np.float32)
  expected = jax_roi.prroi_pool(x, rois, (4, 3), 0.25, layout="NHWC")
  layer = roi_linen.PrRoIPool(output_size=(4, 3), spatial_scale=0.25, layout="NHWC")
  variables = layer.init(jax.random.key(0), x, rois)
  assert jax.tree_util.tree_leaves(variables) == []
  np.testing.assert_array_equal(layer.apply(variables, x, rois), expected)
  np.testing.assert_array_equal(
    roi_nnx.PrRoIPool((4, 3), spatial_scale=0.25, layout="NHWC")(x, rois), expected
  )
  assert roi_linen.PrRoIPool(7, layout="NHWC").spatial_scale == 1.0
