"""Every bad argument raises before any kernel runs, naming the argument;
the C++ handlers validate again and return errors instead of reading out
of bounds."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_roi

X = np.zeros((2, 3, 8, 8), np.float32)
R = np.array([[0, 1, 1, 4, 4]], np.float32)

BAD_CALLS = [
  (dict(features=X.astype(np.int32)), TypeError, "features must be float16"),
  (dict(features=X[0]), ValueError, "features must have rank 4"),
  (dict(features="x"), TypeError, "features"),
  (dict(rois=R.astype(np.int32)), TypeError, "rois must have a floating dtype"),
  (dict(rois=R[:, 1:]), ValueError, r"rois must have shape \(K, 5\)"),
  (dict(rois=np.zeros((3, 2, 4), np.float32)), ValueError, "batched rois"),
  (dict(rois=np.zeros((2, 2, 5), np.float32)), ValueError, "rois must have shape"),
  (dict(output_size=0), ValueError, "output_size must be positive"),
  (dict(output_size=(2, -1)), ValueError, "output_size must be positive"),
  (dict(output_size=(1, 2, 3)), ValueError, "output_size must be an int or a pair"),
  (dict(output_size=2.5), TypeError, "output_size"),
  (dict(output_size=True), TypeError, "output_size"),
  (dict(spatial_scale=-1.0), ValueError, "spatial_scale must be finite"),
  (dict(spatial_scale=float("nan")), ValueError, "spatial_scale must be finite"),
  (dict(spatial_scale=float("inf")), ValueError, "spatial_scale must be finite"),
  (dict(spatial_scale="half"), TypeError, "spatial_scale"),
  (dict(layout="nchw"), ValueError, "layout must be one of"),
  (dict(layout=None), TypeError, "layout must be a string"),
  (dict(box_order="xy"), ValueError, "box_order must be one of"),
  (dict(implementation="cuda"), ValueError, "implementation must be one of"),
]


ALIGN_BAD_CALLS = [
  (dict(sampling_ratio=1.5), TypeError, "sampling_ratio must be an int"),
  (dict(sampling_ratio=True), TypeError, "sampling_ratio must be an int"),
  (dict(aligned=1), TypeError, "aligned must be a bool"),
  (dict(mode="mean"), ValueError, "mode must be one of"),
]
OPS = {"roi_pool": jax_roi.roi_pool, "roi_align": jax_roi.roi_align}


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("overrides,error,message", BAD_CALLS)
def test_shared_arguments_are_validated(op, overrides, error, message):
  kwargs = dict(features=X, rois=R, output_size=2)
  kwargs.update(overrides)
  features, rois, output_size = (kwargs.pop(k) for k in ("features", "rois", "output_size"))
  with pytest.raises(error, match=message):
    OPS[op](features, rois, output_size, **kwargs)


@pytest.mark.parametrize("overrides,error,message", ALIGN_BAD_CALLS)
def test_roi_align_options_are_validated(overrides, error, message):
  with pytest.raises(error, match=message):
    jax_roi.roi_align(X, R, 2, **overrides)


def test_traced_spatial_scale_is_rejected():
  with pytest.raises(TypeError, match="spatial_scale must be a static"):
    jax.jit(lambda s: jax_roi.roi_pool(X, R, 2, spatial_scale=s))(0.5)


def test_nhwc_rank_message_names_the_layout():
  with pytest.raises(ValueError, match=re.escape("(N, H, W, C)")):
    jax_roi.roi_pool(X[0], R, 2, layout="NHWC")


def _raw_forward(features, rois, out_shape, argmax_shape=(0,), **attrs):
  attrs = dict(
    dict(
      spatial_scale=np.float64(1.0),
      pooled_height=np.int64(2),
      pooled_width=np.int64(2),
      layout="NCHW",
    ),
    **attrs,
  )
  call = jax.ffi.ffi_call(
    "jax_roi_roi_pool_fwd_v1",
    (
      jax.ShapeDtypeStruct(out_shape, features.dtype),
      jax.ShapeDtypeStruct(argmax_shape, jnp.int32),
    ),
  )
  return call(features, rois, **attrs)


HANDLER_ERRORS = [
  (
    dict(features=X, rois=R, out_shape=(2, 3, 2, 2)),
    "roi_pool: output must have shape (1, 3, 2, 2)",
  ),
  (
    dict(features=X, rois=R[:, 1:], out_shape=(1, 3, 2, 2)),
    "roi_pool: rois must have shape (K, 5) or (N, R, 4), got (1, 4)",
  ),
  (dict(features=X[0], rois=R, out_shape=(1, 3, 2, 2)), "roi_pool: features must have rank 4"),
  (
    dict(features=X.astype(np.int32), rois=R, out_shape=(1, 3, 2, 2)),
    "roi_pool: features must be float16, bfloat16, float32 or float64, got int32",
  ),
  (
    dict(features=X, rois=R.astype(np.int32), out_shape=(1, 3, 2, 2)),
    "roi_pool: rois must be float32 or float64, got int32",
  ),
  (dict(features=X, rois=R, out_shape=(1, 3, 2, 2), layout="CHWN"), "roi_pool: layout must be"),
  (
    dict(features=X, rois=R, out_shape=(1, 3, 2, 2), spatial_scale=np.float64(-1)),
    "roi_pool: spatial_scale must be finite",
  ),
  (
    dict(features=X, rois=R, out_shape=(1, 3, 2, 2), argmax_shape=(1, 3, 2, 3)),
    "roi_pool: argmax must have shape (1, 3, 2, 2)",
  ),
  (
    dict(features=X, rois=R, out_shape=(1, 3, 2, 2), pooled_height=np.int64(0)),
    "roi_pool: output_size must be positive",
  ),
  (
    dict(features=X, rois=np.zeros((3, 1, 4), np.float32), out_shape=(3, 1, 3, 2, 2)),
    "roi_pool: batched rois (3, 1, 4) must have one row of boxes per image",
  ),
]


@pytest.mark.parametrize("kwargs,message", HANDLER_ERRORS)
def test_handler_validates(kwargs, message):
  with pytest.raises(jax.errors.JaxRuntimeError, match=re.escape(message)):
    jax.block_until_ready(_raw_forward(**kwargs))


def test_backward_handler_validates_argmax():
  call = jax.ffi.ffi_call("jax_roi_roi_pool_bwd_v1", jax.ShapeDtypeStruct(X.shape, jnp.float32))
  g = np.zeros((1, 3, 2, 2), np.float32)
  with pytest.raises(
    jax.errors.JaxRuntimeError,
    match=re.escape("roi_pool backward: argmax must have shape (1, 3, 2, 2), got (1, 3, 2)"),
  ):
    jax.block_until_ready(call(g, np.zeros((1, 3, 2), np.int32), R, layout="NCHW"))
  with pytest.raises(
    jax.errors.JaxRuntimeError,
    match=re.escape("roi_pool backward: grad_features must have dtype float32, got float16"),
  ):
    call16 = jax.ffi.ffi_call("jax_roi_roi_pool_bwd_v1", jax.ShapeDtypeStruct(X.shape, jnp.float16))
    jax.block_until_ready(call16(g, np.zeros(g.shape, np.int32), R, layout="NCHW"))


def test_backward_from_features_handler_validates():
  """The argmax-free backward names what is wrong: the features' shape and
  dtype against the gradient's, and the spatial scale it pools with."""
  name = "jax_roi_roi_pool_bwd_from_features_v1"
  call = jax.ffi.ffi_call(name, jax.ShapeDtypeStruct(X.shape, jnp.float32))
  g = np.zeros((1, 3, 2, 2), np.float32)
  scale = np.float64(1.0)
  cases = [
    (
      (g, X[:, :, :7], R),
      {},
      "roi_pool backward: features must have shape (2, 3, 8, 8), got (2, 3, 7, 8)",
    ),
    (
      (g, X.astype(np.float16), R),
      {},
      "roi_pool backward: features must have dtype float32, got float16",
    ),
    ((g, X, R), {"spatial_scale": np.float64(np.nan)}, "roi_pool backward: spatial_scale"),
    (
      (np.zeros((2, 3, 2, 2), np.float32), X, R),
      {},
      "roi_pool backward: grad_output must have shape (1, 3, 2, 2), got (2, 3, 2, 2)",
    ),
  ]
  for args, attrs, message in cases:
    attrs = {"layout": "NCHW", "spatial_scale": scale, **attrs}
    with pytest.raises(jax.errors.JaxRuntimeError, match=re.escape(message)):
      jax.block_until_ready(call(*args, **attrs))
  # Valid operands: the gradient through the forward's winners.
  grad = np.asarray(call(np.ones_like(g), X, R, layout="NCHW", spatial_scale=scale))
  assert grad.sum() == g.size


def test_backward_handler_ignores_out_of_range_argmax():
  """A corrupt argmax never writes out of bounds."""
  call = jax.ffi.ffi_call("jax_roi_roi_pool_bwd_v1", jax.ShapeDtypeStruct(X.shape, jnp.float32))
  g = np.ones((1, 3, 2, 2), np.float32)
  argmax = np.array([10**9, -5, 64, 63] * 3, np.int32).reshape(1, 3, 2, 2)
  grad = np.asarray(call(g, argmax, R, layout="NCHW"))
  assert grad.sum() == 3.0
  assert (grad[0, :, 7, 7] == 1).all()


def _align_attrs(**overrides):
  attrs = dict(
    spatial_scale=np.float64(1.0),
    pooled_height=np.int64(2),
    pooled_width=np.int64(2),
    sampling_ratio=np.int64(2),
    aligned=False,
    mode="avg",
    layout="NCHW",
  )
  attrs.update(overrides)
  return attrs


def test_align_handlers_validate():
  empty = jax.ShapeDtypeStruct((0,), jnp.int32)
  out = jax.ShapeDtypeStruct((1, 3, 2, 2), jnp.float32)
  fwd = jax.ffi.ffi_call("jax_roi_roi_align_fwd_v1", (out, empty, empty))
  with pytest.raises(
    jax.errors.JaxRuntimeError,
    match=re.escape('roi_align: mode must be "avg" or "max", got "mean"'),
  ):
    jax.block_until_ready(fwd(X, R, **_align_attrs(mode="mean")))
  with pytest.raises(
    jax.errors.JaxRuntimeError,
    match=re.escape("roi_align: output must have shape (1, 3, 3, 2), got (1, 3, 2, 2)"),
  ):
    jax.block_until_ready(fwd(X, R, **_align_attrs(pooled_height=np.int64(3))))
  bwd = jax.ffi.ffi_call("jax_roi_roi_align_bwd_v1", jax.ShapeDtypeStruct(X.shape, jnp.float32))
  g = np.zeros((1, 3, 2, 2), np.float32)
  none = np.zeros((0,), np.int32)
  with pytest.raises(
    jax.errors.JaxRuntimeError,
    match=re.escape("roi_align backward: argmax_y must have shape (1, 3, 2, 2), got (0,)"),
  ):
    jax.block_until_ready(bwd(g, R, none, none, **_align_attrs(mode="max")))
  box = jax.ffi.ffi_call("jax_roi_roi_align_box_grad_v1", jax.ShapeDtypeStruct((1, 4), jnp.float32))
  with pytest.raises(
    jax.errors.JaxRuntimeError,
    match=re.escape("roi_align box gradient: grad_rois must have shape (1, 5), got (1, 4)"),
  ):
    jax.block_until_ready(box(X, R, g, none, none, **_align_attrs()))
