"""Sharded execution on 8 virtual CPU devices (in a subprocess: the device
count is fixed when jax starts): results equal single-device results, the
compiled HLO holds no collective on features, boxes or outputs where the
sharding allows it, and a data-parallel Flax training step matches."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).parent / "scripts" / "sharding_checks.py"


@pytest.mark.slow  # (the sharding matrix covers the same cases in the default run)
def test_sharded_execution_on_8_devices():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, "-P", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=900
  )
  print(proc.stdout[-6000:])
  print(proc.stderr[-3000:])
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "ALL OK" in proc.stdout
  assert proc.stdout.count("ok   ") > 100
