"""The CUDA build, checked without a GPU: the GPU code embedded in the module
(SASS per architecture, PTX for newer GPUs), static cudart, and CMake's
CUDA decisions (the default architecture list, overrides, a clear refusal
when CUDA is required and no nvcc works). See docs/gpu.md."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "fatbin_archs.py"


def _fatbin_tool():
  if not TOOL.exists():
    pytest.skip(f"{TOOL} not found (tests run outside the source tree)")
  spec = importlib.util.spec_from_file_location("fatbin_archs", TOOL)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _cuda_module():
  import jax_roi._jax_roi as ext  # the compiled module, whatever the platform

  if not ext.with_cuda:
    pytest.skip("jax_roi was built without the CUDA kernels (CPU-only build)")
  return ext.__file__


def _nvcc_gpu_codes(nvcc):
  out = subprocess.run(
    [nvcc, "--list-gpu-code"], capture_output=True, text=True, check=True, timeout=60
  ).stdout
  return out.split()


def _nvcc():
  nvcc = os.environ.get("CUDACXX") or shutil.which("nvcc")
  if not nvcc:
    pytest.skip("nvcc not found")
  return nvcc


def test_embedded_architectures():
  """CI sets JAX_ROI_EXPECT_CUDA_ARCHS to what the build was asked for, in
  CMAKE_CUDA_ARCHITECTURES syntax ("90-real") or "default" (the list
  CMakeLists.txt derives from `nvcc --list-gpu-code`): the module's fatbin
  must hold exactly that SASS and that PTX."""
  path = _cuda_module()
  tool = _fatbin_tool()
  sass, ptx = tool.archs(path)
  assert sass, f"no SASS in {path}: every GPU would JIT-compile or fail"
  expected = os.environ.get("JAX_ROI_EXPECT_CUDA_ARCHS") or None
  if expected is None:
    pytest.skip(
      f"JAX_ROI_EXPECT_CUDA_ARCHS not set (set by .ci/run); the module holds SASS {sass}, PTX {ptx}"
    )
  if expected == "default":
    want_sass, want_ptx = tool.default_archs(_nvcc_gpu_codes(_nvcc()))
    assert want_ptx == want_sass[-1:]  # PTX of the newest
  else:
    want_sass, want_ptx = tool.parse_cmake_archs(expected)
  assert (sass, ptx) == (want_sass, want_ptx), (
    f"{path}: SASS {sass}, PTX {ptx}; the build asked for {expected!r} = "
    f"SASS {want_sass}, PTX {want_ptx}"
  )


def test_cudart_is_linked_statically():
  """A module that needs libcudart.so fails to import on GPU-less machines
  and depends on the load order of jax's CUDA plugin: cudart is static."""
  path = _cuda_module()
  readelf = shutil.which("readelf")
  if readelf is None:
    pytest.skip("readelf (binutils) not found")
  dynamic = subprocess.run([readelf, "-d", path], capture_output=True, text=True, check=True).stdout
  needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.*?)\]", dynamic)
  assert not [lib for lib in needed if lib.startswith("libcudart")], needed


def test_fatbin_parser_reads_cmake_syntax():
  tool = _fatbin_tool()
  assert tool.parse_cmake_archs("90-real") == ([90], [])
  assert tool.parse_cmake_archs("75-real;90") == ([75, 90], [90])
  assert tool.parse_cmake_archs("80-real;120-real;120-virtual") == ([80, 120], [120])
  with pytest.raises(ValueError):
    tool.parse_cmake_archs("90a-real")
  # nvcc 13.0's list; a CUDA 12.8-like one (older archs listed, floor kept).
  cuda13 = "sm_75 sm_80 sm_86 sm_87 sm_88 sm_89 sm_90 sm_100 sm_110 sm_103 sm_120 sm_121"
  assert tool.default_archs(cuda13.split()) == ([75, 80, 86, 89, 90, 100, 110, 120], [120])
  cuda12 = (
    "sm_50 sm_52 sm_53 sm_60 sm_61 sm_62 sm_70 sm_72 sm_75 sm_80 sm_86 sm_87 sm_89 "
    "sm_90 sm_90a sm_100 sm_100a sm_101 sm_120"
  )
  assert tool.default_archs(cuda12.split()) == ([75, 80, 86, 89, 90, 100, 120], [120])
  # sm_70 machine code also runs on sm_75 (same major, higher minor).
  assert tool.default_archs(cuda12.split(), min_arch=70) == ([70, 80, 86, 89, 90, 100, 120], [120])


# --- CMake's decisions (configure only, no compilation) ---------------------


def _cmake():
  cmake = shutil.which("cmake")
  if cmake is None or not (ROOT / "CMakeLists.txt").exists():
    pytest.skip("cmake or the source tree (CMakeLists.txt) not found")
  return cmake


def _configure(build, *defines, env=None):
  cmd = [
    _cmake(),
    "-S",
    str(ROOT),
    "-B",
    str(build),
    f"-DPython_EXECUTABLE={sys.executable}",
    *defines,
  ]
  if shutil.which("ninja"):
    cmd += ["-G", "Ninja"]
  proc = subprocess.run(
    cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ if env is None else env)
  )
  return proc.returncode, proc.stdout + proc.stderr


def _archs_line(output):
  m = re.search(r"jax_roi: CUDA architectures (\S+) \(from (.*)\)", output)
  assert m, output[-3000:]
  return m.group(1), m.group(2)


def test_cuda_on_without_a_working_nvcc_is_refused(tmp_path):
  """JAX_ROI_CUDA=ON and no working nvcc: configure stops with a message
  that says what to do (AUTO falls back to a CPU-only build)."""
  fake = tmp_path / "bin" / "nvcc"
  fake.parent.mkdir()
  fake.write_text("#!/bin/sh\necho 'fake nvcc: no CUDA toolkit' >&2\nexit 1\n")
  fake.chmod(0o755)
  env = dict(os.environ, CUDACXX=str(fake))
  rc, out = _configure(tmp_path / "on", "-DJAX_ROI_CUDA=ON", env=env)
  assert rc != 0
  assert "JAX_ROI_CUDA=ON but no working CUDA compiler was found" in re.sub(r"\s+", " ", out)
  rc, out = _configure(tmp_path / "auto", "-DJAX_ROI_CUDA=AUTO", env=env)
  assert "no CUDA compiler found, building the CPU kernels only" in out


@pytest.mark.slow  # (CMake configure runs only, ~40 s)
@pytest.mark.skipif(sys.platform != "linux", reason="nvcc on Linux")
def test_default_architectures_and_overrides(tmp_path):
  """With nvcc present: the default list follows the rule of docs/gpu.md;
  JAX_ROI_CUDA_ARCHS beats CMAKE_CUDA_ARCHITECTURES, which beats CUDAARCHS;
  clearing JAX_ROI_CUDA_ARCHS on a reconfigure restores the default."""
  nvcc = _nvcc()
  tool = _fatbin_tool()
  sass, ptx = tool.default_archs(_nvcc_gpu_codes(nvcc))
  default = ";".join([f"{a}-real" for a in sass] + [f"{a}-virtual" for a in ptx])
  env = {k: v for k, v in os.environ.items() if k != "CUDAARCHS"}
  env["CUDACXX"] = nvcc
  build = tmp_path / "b"
  # (configure may stop later for lack of pybind11/jaxlib in the test
  # environment: the architectures are decided and printed before that.)
  _, out = _configure(build, "-DJAX_ROI_CUDA=ON", env=env)
  assert _archs_line(out) == (default, "the default (nvcc --list-gpu-code)")
  _, out = _configure(
    build, "-DJAX_ROI_CUDA_ARCHS=90-real", "-DCMAKE_CUDA_ARCHITECTURES=80", env=env
  )
  assert _archs_line(out) == ("90-real", "JAX_ROI_CUDA_ARCHS")
  _, out = _configure(build, "-DJAX_ROI_CUDA_ARCHS=", env=env)
  assert _archs_line(out)[0] == default
  _, out = _configure(build, "-DCMAKE_CUDA_ARCHITECTURES=80-real", env=env)
  assert _archs_line(out) == ("80-real", "CMAKE_CUDA_ARCHITECTURES")
  _, out = _configure(tmp_path / "c", "-DJAX_ROI_CUDA=ON", env=dict(env, CUDAARCHS="89-real"))
  assert _archs_line(out) == ("89-real", "the CUDAARCHS environment variable")
