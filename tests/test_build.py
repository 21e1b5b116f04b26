"""The compiled extension: FFI ABI and CUDA build facts."""

from __future__ import annotations

import os

import pytest

from jax_roi._core import extension


def test_built_against_the_oldest_supported_ffi_api():
  """CI sets JAX_ROI_EXPECT_FFI_API to the FFI API of jaxlib 0.10.2 (the
  oldest supported): the wheel must be built against it to load on every
  supported jaxlib."""
  expected = os.environ.get("JAX_ROI_EXPECT_FFI_API")
  if expected is None:
    pytest.skip("JAX_ROI_EXPECT_FFI_API not set (set by .ci/run)")
  built = ".".join(str(v) for v in extension.ext.ffi_api_version)
  assert built == expected


def test_cuda_build_expectation():
  """CI sets JAX_ROI_EXPECT_CUDA=1 where nvcc is present: the CUDA kernels
  must have been compiled (and the module must still import without a GPU)."""
  expected = os.environ.get("JAX_ROI_EXPECT_CUDA")
  if expected is None:
    pytest.skip("JAX_ROI_EXPECT_CUDA not set (set by .ci/run)")
  assert extension.WITH_CUDA == (expected == "1")
  if extension.WITH_CUDA:
    assert set(extension.ext.cuda_targets()) == set(extension.ext.cpu_targets())
