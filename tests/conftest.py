import os
import pathlib

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Hypothesis: every new shape compiles, so keep the default run short; the
# "fuzz" profile is the long differential-fuzzing run (see README).
settings.register_profile(
  "default",
  max_examples=30,
  deadline=None,
  derandomize=True,
  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
  "fuzz", max_examples=1_000_000, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

DATA = pathlib.Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def golden():
  """torchvision 0.29.1 CPU outputs and gradients (tests/data/README.md)."""
  with np.load(DATA / "torchvision_roi_ops.npz") as d:
    return {k: d[k] for k in d.files}


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def on_gpu() -> bool:
  return jax.default_backend() == "gpu"


def pytest_collection_modifyitems(config, items):
  """Tests marked `gpu` need a GPU backend: skipped (with the reason) on
  machines without one. The backend is only looked up when such a test
  was collected."""
  marked = [item for item in items if item.get_closest_marker("gpu") is not None]
  if not marked:
    return
  backend = jax.default_backend()
  if backend == "gpu":
    return
  skip = pytest.mark.skip(reason=f"needs a GPU backend (jax.default_backend() is {backend!r})")
  for item in marked:
    item.add_marker(skip)


@pytest.fixture(scope="session")
def assert_same_gradient():
  """Compares gradients of two runs (or orderings) of the same computation:
  bit-identical on the CPU (the CPU backward is deterministic), equal to
  float rounding on a GPU, where the CUDA backward accumulates with atomics
  in an order that changes from run to run."""
  gpu = on_gpu()

  def check(actual, expected, err_msg=""):
    if not gpu:
      np.testing.assert_array_equal(actual, expected, err_msg=err_msg)
      return
    actual, expected = np.asarray(actual), np.asarray(expected)
    half = min(actual.dtype.itemsize, expected.dtype.itemsize) < 4
    actual, expected = actual.astype(np.float64), expected.astype(np.float64)
    rtol = 2e-2 if half else 1e-5
    scale = float(np.max(np.abs(np.nan_to_num(expected)), initial=0.0))
    np.testing.assert_allclose(
      actual, expected, rtol=rtol, atol=rtol * 0.1 * scale, err_msg=err_msg
    )

  return check
