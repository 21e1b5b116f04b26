"""The CPU kernels' instruction-set variants (CMake's JAX_ROI_CPU_VARIANTS).

A build may carry the CPU kernels more than once: ``_jax_roi`` for its
baseline instruction set (x86-64-v2 in the portable wheel) and
``_jax_roi_x86_64_v3`` / ``_jax_roi_x86_64_v4`` (AVX2 / AVX-512). At import
jax_roi registers the widest one the CPU runs, or the one
``JAX_ROI_CPU_VARIANT`` names. Each variant runs in its own process here
(only one set of kernels is registered per process), and every variant must
give the baseline's bits: no contraction, no reassociation in any of them.

The development build has no variants, so the bit comparison runs where the
wheel is tested (tools/check_wheel.sh, in .ci/run); the choice and the
refusals run everywhere.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import jax_roi
from jax_roi._core import extension

pytestmark = pytest.mark.skipif(
  not extension.AVAILABLE, reason="needs the compiled extension (jax_roi._jax_roi)"
)

PACKAGE = pathlib.Path(jax_roi.__file__).resolve().parent
LEVELS = ("x86-64-v3", "x86-64-v4")


def _base():
  import jax_roi._jax_roi as base  # noqa: PLC0415

  return base


def _present(level: str) -> bool:
  """Whether this installation carries the variant module of ``level``."""
  stem = extension.variant_module_name(level).rsplit(".", 1)[1]
  return any(PACKAGE.glob(stem + ".*so"))


# Subprocesses run with -P: the current directory is not put first on
# sys.path, where a source tree would shadow the installed package under test.
def _run(code: str, variant: str | None, *args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ)
  env.pop(extension.VARIANT_ENV, None)
  if variant is not None:
    env[extension.VARIANT_ENV] = variant
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE.parent), env.get("PYTHONPATH", "")])
  return subprocess.run(
    [sys.executable, "-P", "-c", code, *args], env=env, capture_output=True, text=True, timeout=300
  )


CHOSEN = "from jax_roi._core import extension as e; print(e.ext.__name__, e.CPU_ARCH)"


def _cpuinfo_flags() -> set[str] | None:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          return set(line.split(":", 1)[1].split())
  except OSError:
    pass
  return None


def test_the_cpu_levels_agree_with_the_operating_systems_flags():
  flags = _cpuinfo_flags()
  if flags is None or "sse2" not in flags:
    pytest.skip("no x86 /proc/cpuinfo here")
  v3 = {"avx", "avx2", "bmi1", "bmi2", "fma", "movbe", "f16c", "abm"} <= flags
  v4 = v3 and {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= flags
  base = _base()
  assert base.cpu_supports("x86-64-v3") == v3
  assert base.cpu_supports("x86-64-v4") == v4
  assert not base.cpu_supports("x86-64-v9")


def test_the_widest_variant_this_cpu_runs_is_registered():
  base = _base()
  expected = ("jax_roi._jax_roi", base.cpu_arch)
  for level in LEVELS:  # narrowest first: the last that qualifies wins
    if _present(level) and base.cpu_supports(level):
      expected = (extension.variant_module_name(level), level)
  for variant in (None, "auto"):
    done = _run(CHOSEN, variant)
    assert done.returncode == 0, done.stderr
    assert tuple(done.stdout.split()) == expected, (variant, done.stdout)


def test_baseline_forces_the_base_module():
  done = _run(CHOSEN, "baseline")
  assert done.returncode == 0, done.stderr
  assert done.stdout.split()[0] == "jax_roi._jax_roi"


def test_an_unknown_variant_is_refused_by_name():
  done = _run("import jax_roi", "x86-64-v5")
  assert done.returncode != 0
  assert "ImportError" in done.stderr and "JAX_ROI_CPU_VARIANT='x86-64-v5'" in done.stderr
  assert "expected auto, baseline, x86-64-v3 or x86-64-v4" in done.stderr


@pytest.mark.parametrize("level", LEVELS)
def test_a_missing_or_unrunnable_variant_is_refused(level):
  base = _base()
  if _present(level) and base.cpu_supports(level):
    pytest.skip(f"this installation has {level} kernels and the CPU runs them")
  done = _run("import jax_roi", level)
  assert done.returncode != 0
  why = "does not run" if not base.cpu_supports(level) else f"has no {level} build"
  assert "ImportError" in done.stderr and why in done.stderr, done.stderr


# Every op, both layouts, float32 and float64, forward and feature gradient,
# on shapes that take the kernels' vector paths and their leftovers (48
# channels: one 32-channel block and a remainder; 189 = 21 x 9 for the
# position-sensitive ops) and both NCHW paths (many RoIs: the NHWC copy;
# two RoIs: the planes read directly).
OUTPUTS = r"""
import sys
import jax, numpy as np
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp, jax_roi

rng = np.random.default_rng(7)
H, W = 23, 29
def boxes(k):
  x1 = rng.uniform(-3, W * 4 - 8, k); y1 = rng.uniform(-3, H * 4 - 8, k)
  w = rng.uniform(0, 60, k); h = rng.uniform(0, 50, k)
  return np.stack([rng.integers(0, 2, k), x1, y1, x1 + w, y1 + h], 1)
ops = {
  "roi_pool": (48, lambda x, r, l: jax_roi.roi_pool(x, r, 7, 0.25, layout=l)),
  "roi_align": (48, lambda x, r, l: jax_roi.roi_align(x, r, 7, 0.25, 2, True, layout=l)),
  "roi_align_adaptive": (48, lambda x, r, l: jax_roi.roi_align(x, r, 5, 0.25, layout=l)),
  "roi_align_max": (48, lambda x, r, l: jax_roi.roi_align(x, r, 7, 0.25, 2, mode="max", layout=l)),
  "ps_roi_pool": (189, lambda x, r, l: jax_roi.ps_roi_pool(x, r, 3, 0.25, layout=l)),
  "ps_roi_align": (189, lambda x, r, l: jax_roi.ps_roi_align(x, r, 3, 0.25, 2, layout=l)),
  "prroi_pool": (48, lambda x, r, l: jax_roi.prroi_pool(x, r, 7, 0.25, layout=l)),
  "roi_align_rotated": (48, lambda x, r, l: jax_roi.roi_align_rotated(
      x, jnp.concatenate([r[:, :1], (r[:, 1:3] + r[:, 3:5]) / 2, r[:, 3:5] - r[:, 1:3],
                          jnp.asarray(np.linspace(-80, 80, len(r)), r.dtype)[:, None]], 1),
      7, 0.25, 2, layout=l)),
}
CASES = [(60, np.float32, "NCHW"), (60, np.float32, "NHWC"), (2, np.float32, "NCHW"),
         (60, np.float64, "NHWC")]
out = {}
for name, (channels, op) in ops.items():
  for k, dtype, layout in CASES:
    x = rng.standard_normal((2, channels, H, W)).astype(dtype)
    r = jnp.asarray(boxes(k).astype(dtype))
    xl = jnp.asarray(x if layout == "NCHW" else x.transpose(0, 2, 3, 1))
    y, pull = jax.vjp(lambda f: op(f, r, layout), xl)
    g = rng.standard_normal(y.shape).astype(dtype)
    key = f"{name}/{k}/{np.dtype(dtype).name}/{layout}"
    out[key + "/fwd"] = np.asarray(y)
    out[key + "/grad"] = np.asarray(pull(jnp.asarray(g))[0])
levels = [jnp.asarray(rng.standard_normal((2, 40, s, s)).astype(np.float32)) for s in (32, 16, 8)]
ms_rois = jnp.asarray(np.concatenate([boxes(50)[:, :1], np.sort(rng.uniform(0, 120, (50, 4)), 1)
                                      [:, [0, 1, 2, 3]]], 1).astype(np.float32))
out["multi_scale"] = np.asarray(jax_roi.multi_scale_roi_align(levels, ms_rois, 7, 2,
                                                              image_size=128))
np.savez(sys.argv[1], **out)
"""


def test_every_variant_computes_the_baselines_bits(tmp_path):
  base_module = _base()
  levels = [lv for lv in LEVELS if _present(lv) and base_module.cpu_supports(lv)]
  if not levels:
    pytest.skip(
      "no variant this CPU runs in this installation (built without JAX_ROI_CPU_VARIANTS)"
    )
  # One process per build, at once.
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE.parent), env.get("PYTHONPATH", "")])
  procs = {}
  for variant in ("baseline", *levels):
    env[extension.VARIANT_ENV] = variant
    path = tmp_path / f"{variant}.npz"
    procs[variant] = (
      path,
      subprocess.Popen(
        [sys.executable, "-P", "-c", OUTPUTS, str(path)],
        env=dict(env),
        stderr=subprocess.PIPE,
        text=True,
      ),
    )
  results = {}
  for variant, (path, proc) in procs.items():
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    results[variant] = dict(np.load(path))
  base = results["baseline"]
  assert len(base) == 8 * 4 * 2 + 1
  # Not a vacuous comparison: the ops produced values, not empty arrays.
  assert sum(np.count_nonzero(v) for v in base.values()) > 100_000
  for level in levels:
    wide = results[level]
    assert base.keys() == wide.keys()
    for key, value in base.items():
      assert value.dtype == wide[key].dtype and value.shape == wide[key].shape, key
      bits = value.view(np.uint64 if value.dtype == np.float64 else np.uint32)
      assert np.array_equal(bits, wide[key].view(bits.dtype)), (level, key)
