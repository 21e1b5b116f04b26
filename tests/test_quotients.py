"""The average-mode backwards divide every term by the RoI's sample count,
(g * w) / count, and the CPU kernels compute that quotient without a
division (csrc/core/quotient.h, Markstein's correction). The gradients must
keep the bits of the IEEE division:

* through the public API: boxes laid so that each pixel of the gradient
  receives exactly one term g / count (weight 1), for counts that are not
  powers of two and cotangents of every exponent, subnormal quotients
  included, compared bit for bit with numpy's float32 division;
* the header itself, compiled with the host compiler: every float32
  mantissa against the division for a range of counts, and values of every
  exponent, zeros, infinities and NaNs (slow: more counts)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_roi

ROOT = Path(__file__).resolve().parents[1]

# Counts of RoI k: heights of 1-pixel-wide boxes (adaptive sampling takes
# one sample per pixel of the box), mostly not powers of two.
COUNTS = np.array([3, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 17, 19, 21, 23, 24, 25, 27, 29, 31, 4, 1])
HEIGHT = int(COUNTS.max()) + 1
CHANNELS = 96


def _cotangent(rng):
  """(K, C) float32 cotangents: random mantissas, exponents -30..30, zeros
  and negative zeros; RoIs 7, 15 and 19 hold values of 2^-126 to 2^-123
  instead, whose quotients are subnormal or near the smallest normal (where
  the correction alone is not exact, and the division must run), RoI 5
  values near FLT_MAX."""
  k = len(COUNTS)
  bits = rng.integers(0, 1 << 23, (k, CHANNELS), dtype=np.uint32)
  exps = rng.integers(127 - 30, 127 + 30, (k, CHANNELS), dtype=np.uint32)
  tiny = [7, 15, 19]
  exps[tiny] = rng.integers(1, 4, (len(tiny), CHANNELS), dtype=np.uint32)
  signs = rng.integers(0, 2, (k, CHANNELS), dtype=np.uint32)
  bits |= exps << 23
  bits |= signs << 31
  g = bits.view(np.float32)
  g[rng.random(g.shape) < 0.05] = 0.0
  g[rng.random(g.shape) < 0.05] = -0.0
  g[5, ::3] = np.float32(3.0e38)
  return g


def _expected(g):
  """(H, W, C) NHWC: g[k] / count_k on the pixels (0..count_k-1, 2k)."""
  out = np.zeros((HEIGHT, 2 * len(COUNTS), CHANNELS), np.float32)
  for k, count in enumerate(COUNTS):
    out[:count, 2 * k] = np.float32(0.0) + g[k] / np.float32(count)
  return out


def _boxes(kind):
  k = np.arange(len(COUNTS), dtype=np.float32)
  zero = np.zeros_like(k)
  h = COUNTS.astype(np.float32)
  if kind == "rotated":  # centre, size, angle: samples at (iy, 2k), aligned
    return np.stack([zero, 2 * k + 0.5, h / 2, zero + 1, h, zero], axis=1)
  return np.stack([zero, 2 * k, zero, 2 * k + 1, h], axis=1)  # x1, y1, x2, y2


OPS = {
  "roi_align": lambda x, r, layout: jax_roi.roi_align(x, r, 1, 1.0, 0, True, layout=layout),
  "roi_align_rotated": lambda x, r, layout: jax_roi.roi_align_rotated(
    x, r, 1, 1.0, 0, layout=layout
  ),
  "ps_roi_align": lambda x, r, layout: jax_roi.ps_roi_align(x, r, 1, 1.0, 0, layout=layout),
}


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("op", sorted(OPS))
def test_gradient_terms_keep_the_bits_of_the_division(op, layout):
  rng = np.random.default_rng(len(op) * 7 + len(layout))
  g = _cotangent(rng)
  rois = jnp.asarray(_boxes("rotated" if op == "roi_align_rotated" else "axis"))
  shape = (1, HEIGHT, 2 * len(COUNTS), CHANNELS)
  x = jnp.zeros(shape if layout == "NHWC" else (1, CHANNELS, *shape[1:3]), jnp.float32)
  out, vjp = jax.vjp(lambda v: OPS[op](v, rois, layout), x)
  cot = g[:, None, None, :] if layout == "NHWC" else g[:, :, None, None]
  assert out.shape == cot.shape
  (grad,) = vjp(jnp.asarray(cot))
  grad = np.asarray(grad)[0]
  if layout == "NCHW":
    grad = grad.transpose(1, 2, 0)
  expected = _expected(g)
  assert np.isfinite(expected).all()
  assert ((expected != 0) & (np.abs(expected) < 2.0**-125)).any()
  differ = grad.view(np.uint32) != expected.view(np.uint32)
  assert not differ.any(), (
    f"{differ.sum()} of {differ.size} gradient elements differ from g / count, e.g. "
    f"{grad[differ][:4]} against {expected[differ][:4]}"
  )


CHECK = r"""
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <vector>
#include "core/quotient.h"

using jax_roi::CountDivider;
using namespace jax_roi::cpu;

static uint32_t bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
static float from_bits(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

// Adds rows through add_quotients and through the division; returns the
// number of elements whose bits differ.
static long compare(const std::vector<float>& g, float w, float count, long n) {
  const CountDivider<float> div(count);
  std::vector<float> p(n, 0.0f), q(n, 0.0f);
  const auto range = cotangent_range(g.data(), n);
  add_quotients(p.data(), g.data(), w, div, range, n);
  for (long c = 0; c < n; ++c) q[c] += (g[c] * w) / count;
  long bad = 0;
  for (long c = 0; c < n; ++c) bad += bits(p[c]) != bits(q[c]);
  return bad;
}

int main(int argc, char** argv) {
  const int last = std::atoi(argv[1]);
  long bad = 0;
  // Every mantissa of [1, 2), in rows of 4096, w = 1: the fast path.
  std::vector<float> g(4096);
  for (int count = 1; count <= last; ++count) {
    for (uint32_t m0 = 0; m0 < (1u << 23); m0 += 4096) {
      for (uint32_t i = 0; i < 4096; ++i) g[i] = from_bits((127u << 23) | (m0 + i));
      bad += compare(g, 1.0f, float(count), 4096);
    }
  }
  // Random bits of every exponent (subnormals, inf, NaN), zeros, and
  // weights down to the subnormals: rows that take either path.
  std::mt19937 rng(7);
  for (int t = 0; t < 20000; ++t) {
    const int n = 1 + int(rng() % 300);
    std::vector<float> row(n);
    const int spread = int(rng() % 4);
    for (auto& v : row) {
      uint32_t u = rng();
      if (spread == 0) u = (u & 0x807fffffu) | ((100u + rng() % 56u) << 23);  // normal range
      if (spread == 1) u &= 0x81ffffffu;                                     // tiny
      v = from_bits(u);
      if (rng() % 16 == 0) v = (rng() % 2) ? 0.0f : -0.0f;
    }
    const float ws[] = {1.0f, 0.0f, -0.0f, 0.3f, 1e-10f, 1e-40f, -0.75f};
    const float w = ws[rng() % 7];
    const float count = float(1 + rng() % 100000);
    bad += compare(row, w, count, n);
  }
  std::printf("%ld\n", bad);
  return 0;
}
"""


def _compiler():
  for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
    if name and shutil.which(name):
      return name
  pytest.skip("no C++ compiler")


def _run_check(tmp_path, arch, last):
  """Compiles CHECK against csrc/core/quotient.h with -march=arch (or none)
  and returns its count of differing elements."""
  cxx = _compiler()
  exe = tmp_path / f"check_{arch or 'default'}"
  src = tmp_path / "check.cc"
  src.write_text(CHECK)
  flags = ["-O3", "-std=c++17", "-ffp-contract=off", "-fno-fast-math"]
  if arch:
    probe = subprocess.run(
      [cxx, f"-march={arch}", "-x", "c++", "-E", "-", "-o", os.devnull],
      input="",
      capture_output=True,
      text=True,
    )
    if probe.returncode != 0:
      pytest.skip(f"the compiler rejects -march={arch}")
    flags.append(f"-march={arch}")
  subprocess.run(
    [cxx, *flags, f"-I{ROOT / 'csrc'}", str(src), "-o", str(exe)],
    check=True,
    capture_output=True,
  )
  return int(subprocess.run([str(exe), str(last)], check=True, capture_output=True).stdout)


def _runs_fma():
  try:
    flags = Path("/proc/cpuinfo").read_text()
  except OSError:
    return False
  return " fma " in flags and " avx2 " in flags


@pytest.mark.parametrize(
  "arch",
  [
    pytest.param(None, marks=pytest.mark.slow),  # no FMA: the division
    pytest.param("x86-64-v3", marks=pytest.mark.slow),  # AVX2 + FMA (wheels)
    "native",
  ],
)
def test_the_header_gives_the_division_bits(tmp_path, arch):
  if arch and not _runs_fma():
    pytest.skip("this CPU runs no FMA code")
  assert _run_check(tmp_path, arch, 48) == 0


@pytest.mark.slow
def test_the_header_gives_the_division_bits_for_1024_counts(tmp_path):
  if not _runs_fma():
    pytest.skip("this CPU runs no FMA code")
  assert _run_check(tmp_path, "native", 1024) == 0
