"""The FFI layer of each op, called directly (not through the public API):
the integer residuals the kernels hand to the backward (roi_pool's argmax,
roi_align's max-mode winners) against the float64 loop reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import loop_reference as ref
import numpy as np
import pytest
from helpers import DTYPES, stable_seed
from test_roi_align import CONFIGS
from test_roi_align import _case as align_case
from test_roi_pool import LAYOUTS
from test_roi_pool import _case as pool_case

import jax_roi
from jax_roi._core.args import canonicalize
from jax_roi._roi_align import ffi as roi_align_ffi
from jax_roi._roi_align.config import RoiAlignConfig
from jax_roi._roi_pool import ffi as roi_pool_ffi
from jax_roi._roi_pool.config import RoiPoolConfig


def _base(x, rois, output_size, spatial_scale, layout):
  """The shared static configuration, as the public ops build it."""
  return canonicalize(
    x,
    rois,
    output_size,
    spatial_scale=spatial_scale,
    layout=layout,
    box_order="xyxy",
    implementation="ffi",
  )[2]


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fmt", ["indexed", "batched"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("box_dtype", ["float32", "float64"])
def test_roi_pool_kernel_matches_loop_reference(layout, fmt, dtype, box_dtype):
  """Outputs and argmax exactly, gradients to float rounding, every dtype."""
  with jax.enable_x64("float64" in (dtype, box_dtype)):
    x, rois = pool_case(
      stable_seed(layout, fmt, dtype, box_dtype), layout, fmt, DTYPES[dtype], box_dtype
    )
    expected, expected_argmax = ref.roi_pool(x, rois, (3, 2), 0.5, layout)
    config = RoiPoolConfig(_base(x, rois, (3, 2), 0.5, layout))
    out, argmax = roi_pool_ffi.forward(jnp.asarray(x), jnp.asarray(rois), config, with_argmax=True)
    assert out.dtype == x.dtype
    np.testing.assert_array_equal(np.asarray(out), expected.astype(x.dtype))
    np.testing.assert_array_equal(np.asarray(argmax), expected_argmax)
    public = jax_roi.roi_pool(x, rois, (3, 2), spatial_scale=0.5, layout=layout)
    np.testing.assert_array_equal(np.asarray(public), np.asarray(out))

    cot = np.random.default_rng(1).standard_normal(out.shape).astype(x.dtype)
    grad = jax.grad(
      lambda f: jnp.sum(
        jax_roi.roi_pool(f, rois, (3, 2), spatial_scale=0.5, layout=layout) * cot
      ).astype(jnp.float32)
    )(x)
    assert grad.dtype == x.dtype
    expected_grad = ref.roi_pool_grad(x.shape, rois, cot, expected_argmax, layout)
    tol = {"float64": 1e-12, "float32": 1e-5}.get(dtype, 2e-2)
    np.testing.assert_allclose(np.asarray(grad, np.float64), expected_grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("sr,aligned", [(sr, a) for m, sr, a in CONFIGS if m == "max"])
def test_roi_align_kernel_max_mode_winners_match_reference(sr, aligned):
  with jax.enable_x64(True):
    x, rois = align_case(11, "NCHW", "indexed", "float64", "float64", hostile=True)
    config = RoiAlignConfig(_base(x, rois, (3, 2), 0.5, "NCHW"), sr, aligned, "max")
    out, ay, ax = roi_align_ffi.forward(jnp.asarray(x), jnp.asarray(rois), config, with_argmax=True)
    expected, winners = ref.roi_align(x, rois, (3, 2), 0.5, sr, aligned, "max")
    np.testing.assert_array_equal(np.asarray(out), expected)
    np.testing.assert_array_equal(np.asarray(ay), winners[..., 0])
    np.testing.assert_array_equal(np.asarray(ax), winners[..., 1])
