"""Builds a CMake project (a test module) once per source state, shared by
the xdist workers: tests/test_cuda_emulation.py and
tests/test_cuda_emulation_runtime.py."""

from __future__ import annotations

import fcntl
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def tool(name: str) -> str:
  """A build tool of this interpreter's environment (pip's cmake, ninja), or
  from PATH."""
  here = pathlib.Path(sys.executable).parent / name
  found = str(here) if here.exists() else shutil.which(name)
  if found is None:
    pytest.fail(f"{name} not found (pip install {name})")
  return found


def build(
  source: pathlib.Path, base_name: str, key: str, defines: list[str], targets: list[str] = ()
) -> pathlib.Path:
  """Configures and builds `source` into build/<base_name>/<key> (or under
  $JAX_ROI_EMULATION_BUILD_DIR) unless a build for that key exists; one
  build at a time (a file lock, for xdist workers); builds unused for a week
  are pruned. `key` must change whenever the sources or options do."""
  pybind11 = pytest.importorskip("pybind11")
  base = pathlib.Path(os.environ.get("JAX_ROI_EMULATION_BUILD_DIR", ROOT / "build")) / base_name
  out = base / key
  base.mkdir(parents=True, exist_ok=True)
  with open(base / ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (out / "built").exists():
      shutil.rmtree(out, ignore_errors=True)
      configure = [
        tool("cmake"),
        "-S",
        str(source),
        "-B",
        str(out),
        "-G",
        "Ninja",
        f"-DCMAKE_MAKE_PROGRAM={tool('ninja')}",
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DPython_EXECUTABLE={sys.executable}",
        f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
        *defines,
      ]
      make = [tool("cmake"), "--build", str(out)] + (["--target", *targets] if targets else [])
      for cmd in (configure, make):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
          pytest.fail(f"{' '.join(cmd)} failed:\n{r.stdout[-20000:]}\n{r.stderr[-20000:]}")
      (out / "built").touch()
    os.utime(out / "built")  # last use
    for old in base.iterdir():
      stamp = old / "built"
      if old != out and stamp.exists() and time.time() - stamp.stat().st_mtime > 7 * 86400:
        shutil.rmtree(old, ignore_errors=True)
  return out
