import os
import pathlib

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Hypothesis: every new shape compiles, so keep the default run short; the
# "fuzz" profile is the long differential-fuzzing run (see README).
settings.register_profile(
    "default", max_examples=30, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "fuzz", max_examples=1_000_000, deadline=None,
    suppress_health_check=list(HealthCheck))
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
