"""A 2-process jax.distributed job on localhost (CPU collectives through
gloo, 4 devices per process): a jitted training step through roi_align and
multi_scale_roi_align with the batch sharded over all 8 devices; each
process checks its shards against a one-device run
(tests/scripts/multiprocess_train.py)."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).parent / "scripts" / "multiprocess_train.py"
TIMEOUT_S = 240


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.parametrize("axis_type", ["auto", "explicit"])
def test_two_process_training_step(axis_type):
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  procs = [
    subprocess.Popen(
      [sys.executable, "-P", str(SCRIPT), str(i), "2", str(port), axis_type],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=TIMEOUT_S)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()
  report = "\n".join(
    f"--- process {i} (exit {p.returncode}):\n{o[-4000:]}"
    for i, (p, o) in enumerate(zip(procs, outputs))
  )
  assert all(p.returncode == 0 for p in procs), report
  for i, o in enumerate(outputs):
    assert f"process {i}: OK ({axis_type} mesh" in o, report
