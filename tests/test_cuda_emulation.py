"""The CUDA kernels, run on the CPU by the CUDA emulation, against the CPU
kernels, through the public ops.

The emulation modules _jax_roi_cuda_emulation_sm<arch> (CMakeLists.txt,
JAX_ROI_BUILD_CUDA_EMULATION) are jax_roi's sources compiled with
JAX_ROI_CUDA_EMULATION: every FFI target's CUDA handler, with its CUDA
kernels compiled for the host (csrc/core/cuda_emulation.h: one fiber per
CUDA thread, blocks and threads in a seeded shuffled order), registered for
"cpu" as <target>_cuda_emulation_sm<arch>. Each case runs the ops with
implementation="ffi" on the CPU kernels (jax_roi._jax_roi), then, inside
kernel.redirect_targets, on the emulated CUDA kernels of every architecture
build, for several emulation seeds, and compares:

* forward outputs and the FFI layer's argmax residuals bit for bit (NaN
  equals NaN whatever its sign bit; -0.0 differs from 0.0): one thread per
  output element computes it in the same operation order as the CPU kernels;
* box gradients (roi_align, multi-scale) bit for bit: one CUDA block per
  RoI sums its outputs in double in 256 lanes combined by a fixed tree, the
  order the CPU kernel follows too (roi_align_math.h: kBoxGradLanes; no
  atomics), so the bits depend neither on the schedule (the seed) nor on the
  block size (the launch limits);
* feature gradients to a few ulps of the accumulation dtype relative to the
  array's magnitude (see _assert_feature_grad_close): the CUDA kernels
  scatter-add them with atomicAdd, so the summation order, hence the
  rounding, follows the block and thread order (the seed).

Every emulated run must have launched kernels (emulation stats) unless its
outputs are empty, so no case passes vacuously.

Environment:
  JAX_ROI_EMULATION_ARCHS   JAX_ROI_CUDA_ARCH values to build and run, space-
      or semicolon-separated (default "750 1210": the oldest and newest
      architectures CUDA 13 compiles for; no kernel has an architecture-
      dependent path yet, so the two ends of the range cover every one that
      a `JAX_ROI_CUDA_ARCH >= N` test could select)
  JAX_ROI_EMULATION_BUILD_DIR  where to build (default <repo>/build; then cuda_emulation/<hash>)
  JAX_ROI_EMULATION_SANITIZE=1 build with -fsanitize=address,undefined (run
      the interpreter with the ASan runtime preloaded: tools/run_sanitized_tests.sh)
"""

from __future__ import annotations

import hashlib
import importlib
import os
import pathlib
import subprocess
import sys

import cmake_cache
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from helpers import DTYPES, indexed_rois, random_boxes, random_features, rotated_rois, stable_seed

import jax_roi
from jax_roi._core import extension, kernel
from jax_roi._core.args import canonicalize
from jax_roi._roi_align import ffi as roi_align_ffi
from jax_roi._roi_align.config import RoiAlignConfig
from jax_roi._roi_pool import ffi as roi_pool_ffi
from jax_roi._roi_pool.config import RoiPoolConfig

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEEDS_PER_ARCH = 3
ARCHS = tuple(
  int(a) for a in os.environ.get("JAX_ROI_EMULATION_ARCHS", "750 1210").replace(";", " ").split()
)

# slow: the module builds two emulation modules (~2 min of compilation on two
# cores) before its first case; .ci/run runs it (and again under ASan/UBSan).
pytestmark = [
  pytest.mark.skipif(not extension.AVAILABLE, reason="jax_roi's kernels are not built"),
  pytest.mark.slow,
]


# ---------------------------------------------------------------------------
# Building and loading the emulation modules
# ---------------------------------------------------------------------------


def _source_hash(*extra) -> str:
  h = hashlib.sha256()
  files = [ROOT / "CMakeLists.txt"] + sorted(p for p in (ROOT / "csrc").rglob("*") if p.is_file())
  for path in files:
    h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
  h.update("|".join(map(str, extra)).encode())
  return h.hexdigest()[:16]


def _build(archs, sanitize) -> pathlib.Path:
  """Builds the modules once per source state (a directory per hash of
  csrc/ and CMakeLists.txt, the interpreter, pybind11, the jaxlib headers and
  the options), one xdist worker at a time."""
  pybind11 = pytest.importorskip("pybind11")
  include = jax.ffi.include_dir()
  key = _source_hash(sys.version, pybind11.__version__, jax.__version__, include, archs, sanitize)
  return cmake_cache.build(
    ROOT,
    "cuda_emulation",
    key,
    [
      f"-DXLA_FFI_INCLUDE_DIR={include}",  # the running jaxlib's FFI API
      "-DJAX_ROI_CUDA=OFF",
      "-DJAX_ROI_BUILD_CUDA_EMULATION=ON",
      f"-DJAX_ROI_EMULATION_ARCHS={';'.join(map(str, archs))}",
      f"-DJAX_ROI_SANITIZE={'ON' if sanitize else 'OFF'}",
      # CI builds with JAX_ROI_WERROR=ON: the emulation build stays warning-free too.
      f"-DJAX_ROI_WERROR={os.environ.get('JAX_ROI_WERROR', 'OFF')}",
    ],
    targets=[f"_jax_roi_cuda_emulation_sm{a}" for a in archs],
  )


@pytest.fixture(scope="session")
def emus():
  """The emulation module of every configured architecture, its targets
  registered for "cpu"."""
  sanitize = os.environ.get("JAX_ROI_EMULATION_SANITIZE", "0") not in ("", "0")
  if sanitize and "libasan" not in os.environ.get("LD_PRELOAD", ""):
    pytest.skip("JAX_ROI_EMULATION_SANITIZE=1 needs the ASan runtime in LD_PRELOAD")
  build = _build(ARCHS, sanitize)
  sys.path.insert(0, str(build))
  try:
    mods = [importlib.import_module(f"_jax_roi_cuda_emulation_sm{a}") for a in ARCHS]
  finally:
    sys.path.remove(str(build))
  for m in mods:
    m.set_verbose(False)
    for name, handlers in m.cpu_targets().items():
      jax.ffi.register_ffi_target(name, handlers, platform="cpu")
  return mods


# ---------------------------------------------------------------------------
# Running a case on both back ends
# ---------------------------------------------------------------------------


# The emulated runs of a case, one per seed, for each architecture in turn:
# (blocks, threads per block, forward kernels, 32-bit indexing threshold).
# Blocks and threads 0, 0: the real launch shape; the small shapes make every
# grid-stride loop run several strides. The forward kernels: a block per RoI
# and chunk of outputs ("per_roi", the default) or one thread per output
# ("per_output"; core/cuda_launch.h) or, for roi_align in NHWC with whole
# 16-byte vectors of channels, the per-RoI kernel with a vector of channels
# per thread ("nhwc_vec", an option; per_roi elsewhere); each architecture
# runs them all, the per-RoI ones with their 32-bit offsets (threshold None:
# the default) and their 64-bit ones (threshold 0). The deterministic backward's owner tiles: the
# planner's (None), or (rows per band, columns per band, channels per
# thread), 0 meaning the planner's choice for that one.
RUN_CONFIGS = [
  [
    (0, 0, "per_output", None, None),
    (2, 32, "per_roi", 0, (2, 3, 1)),
    (3, 96, "nhwc_vec", None, (3, 5, 4)),
  ],
  [
    (0, 0, "per_roi", None, (1, 4, 3)),
    (2, 32, "per_output", None, (3, 0, 2)),
    (3, 96, "nhwc_vec", 0, None),
  ],
]
INDEX32_DEFAULT = 2**31 - 1
FORWARD_DEFAULT = "per_roi"
BACKWARD_DEFAULT = "per_output"


def _seeds(emu, case_seed):
  return [(case_seed * 7919 + emu.cuda_arch * 31 + i) % 2**32 for i in range(SEEDS_PER_ARCH)]


def run_both(emus, fn, *args, case_seed=0):
  """fn(*args) on the CPU kernels, then on each emulation module's CUDA
  kernels for SEEDS_PER_ARCH seeds (and launch shapes):
  (cpu_result, [(label, result, stats)])."""
  expected = jax.tree.map(np.asarray, fn(*args))
  runs = []
  for e, emu in enumerate(emus):
    with kernel.redirect_targets(lambda t, s=emu.target_suffix: t + s):
      configs = RUN_CONFIGS[e % len(RUN_CONFIGS)]
      for seed, (blocks, threads, forward, index32, owner) in zip(_seeds(emu, case_seed), configs):
        emu.set_seed(seed)
        emu.set_launch_limits(blocks, threads)
        emu.set_forward_kernels(forward)
        # The vector configurations run the vector backward too.
        emu.set_backward_kernels("nhwc_vec" if forward == "nhwc_vec" else BACKWARD_DEFAULT)
        emu.set_index32_limit(INDEX32_DEFAULT if index32 is None else index32)
        emu.set_owner_tiles(*(owner or (0, 0, 0)))
        emu.reset_stats()
        try:
          out = jax.tree.map(np.asarray, jax.block_until_ready(fn(*args)))
        finally:
          emu.set_launch_limits(0, 0)
          emu.set_forward_kernels(FORWARD_DEFAULT)
          emu.set_backward_kernels(BACKWARD_DEFAULT)
          emu.set_index32_limit(INDEX32_DEFAULT)
          emu.set_owner_tiles(0, 0, 0)
        runs.append(
          (
            f"sm{emu.cuda_arch} seed {seed} launch limits {(blocks, threads)} "
            f"{forward} forward, 32-bit limit {index32}, owner tiles {owner}",
            out,
            emu.stats(),
          )
        )
  return expected, runs


def _bits(a):
  a = np.asarray(a)
  return (
    a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])
    if a.dtype.kind == "f" or a.dtype == ml_dtypes.bfloat16
    else a
  )


def assert_bits_equal(actual, expected, what):
  """Bit for bit, except that any NaN equals any NaN."""
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
  nan_a = (
    np.isnan(actual.astype(np.float64))
    if actual.dtype.kind != "i"
    else np.zeros(actual.shape, bool)
  )
  nan_e = np.isnan(expected.astype(np.float64)) if expected.dtype.kind != "i" else nan_a
  np.testing.assert_array_equal(nan_a, nan_e, err_msg=f"{what}: NaN positions")
  differ = (_bits(actual) != _bits(expected)) & ~nan_e
  if differ.any():
    i = tuple(np.argwhere(differ)[0])
    pytest.fail(
      f"{what}: {differ.sum()} of {differ.size} elements differ in their bits, "
      f"first at {i}: {actual[i]!r} vs {expected[i]!r}"
    )


def _eps(dtype):
  return float(ml_dtypes.finfo(dtype).eps)


# Feature-gradient tolerance in ulps of the accumulation dtype relative to
# the sum of |terms| (see assert_feature_grad_close): with a fixed sampling
# ratio (and roi_pool) an element gathers a few dozen terms at most and the
# two summation orders differ by < 5 ulps (measured over the whole sweep);
# adaptive sampling (sampling_ratio <= 0) of the hostile boxes (coordinates
# up to 1e30) piles thousands of samples onto the border pixels: up to ~200
# ulps measured, for an error bound of (n - 1) ulps.
GRAD_ULPS = 16
GRAD_ULPS_ADAPTIVE = 1024


def assert_feature_grad_close(actual, expected, magnitude, what, ulps=GRAD_ULPS):
  """Feature gradients: the CUDA kernels accumulate them with atomicAdd in
  the accumulation dtype (float32, or float64 for float64 features) in an
  order that follows the block and thread schedule (the seed), the CPU
  kernels in a fixed order; the two sums differ by rounding only. Summing n
  terms t_i in any order errs by at most (n - 1) eps sum|t_i|, in practice
  far less: the tolerance is `ulps` ulps of the accumulation dtype relative
  to `magnitude`, sum|t_i| for each element (the CPU gradient for
  |cotangent|: the bilinear weights are non-negative), not to the element's
  value, which may be a cancellation. float16/bfloat16 gradients are that
  float32 sum rounded to the storage dtype: one storage ulp more. Non-finite
  values must sit at the same places with the same value."""
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
  a, e, m = (np.asarray(v).astype(np.float64) for v in (actual, expected, magnitude))
  finite = np.isfinite(e)
  np.testing.assert_array_equal(np.isfinite(a), finite, err_msg=f"{what}: non-finite positions")
  np.testing.assert_array_equal(
    np.where(finite, 0, a), np.where(finite, 0, e), err_msg=f"{what}: non-finite values"
  )
  if not finite.any():
    return
  acc = np.float64 if actual.dtype == np.float64 else np.float32
  tol = ulps * _eps(acc) * np.abs(m)
  if actual.dtype not in (np.float32, np.float64):  # one storage ulp (and the subnormal step)
    tol = (
      tol
      + _eps(actual.dtype) * np.maximum(np.abs(a), np.abs(e))
      + float(ml_dtypes.finfo(actual.dtype).smallest_subnormal)
    )
  excess = np.where(finite, np.abs(a - e) - tol, 0)
  if (excess > 0).any():
    i = tuple(np.argwhere(excess > 0)[0])
    pytest.fail(
      f"{what}: {(excess > 0).sum()} elements beyond tolerance, first at {i}: "
      f"{a[i]!r} vs {e[i]!r}, tolerance {tol[i]:.3g} (sum of |terms| {m[i]:.3g})"
    )


def check_launched(stats, outputs, label):
  """The emulated run executed kernels whenever it had something to compute."""
  if any(np.asarray(o).size for o in outputs):
    assert stats["launches"] > 0 and stats["threads"] > 0, f"{label}: no kernel ran: {stats}"
  assert stats["failed_launches"] == 0, f"{label}: {stats}"


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------

# (feature dtype, box dtype, layout, rois format): together every dtype, both
# box dtypes, both layouts and both formats, for each op configuration.
VARIANTS = [
  ("float32", "float32", "NCHW", "indexed"),
  ("float64", "float64", "NHWC", "batched"),
  ("float16", "float64", "NCHW", "batched"),
  ("bfloat16", "float32", "NHWC", "indexed"),
]
VARIANT_IDS = ["-".join(v) for v in VARIANTS]

ALIGN_CONFIGS = [
  (mode, sr, aligned) for mode in ("avg", "max") for sr in (0, 2) for aligned in (False, True)
]


def make_case(
  seed, dtype, box_dtype, layout, fmt, n=2, c=3, h=7, w=9, k=10, scale=0.5, hostile=True
):
  """Features and rois: random boxes mixed with hostile ones (NaN, inf,
  +-1e30, 3e9 coordinates) and, in the (K, 5) format, bad batch indices
  (NaN, -1, N, -7, 1e9)."""
  rng = np.random.default_rng(seed)
  x = random_features(rng, n, c, h, w, layout, DTYPES[dtype])
  if fmt == "indexed":
    rois = indexed_rois(rng, random_boxes(rng, k, h, w, scale, hostile), n, padding=0.3)
  else:
    rois = random_boxes(rng, n * k, h, w, scale, hostile).reshape(n, k, 4)
  return x, rois.astype(box_dtype)


def _value_and_grads(op, x, rois, cot, box_grad):
  """jit(out, d<out, cot>/dx, d<out, |cot|>/dx and, when box_grad,
  d<out, cot>/drois) of op(x, rois)."""

  def f(x, rois):
    out, vjp = jax.vjp(op, x, rois)
    g, g_rois = vjp(cot)
    return (out, g, vjp(jnp.abs(cot))[0]) + ((g_rois,) if box_grad else ())

  return jax.jit(f)


def _check_feature_grads(got, expected, magnitude, what, ulps=GRAD_ULPS):
  leaves = [jax.tree.leaves(t) for t in (got, expected, magnitude)]
  assert len(set(map(len, leaves))) == 1, what
  for i, (a, e, m) in enumerate(zip(*leaves)):
    assert_feature_grad_close(a, e, m, what if len(leaves[0]) == 1 else f"{what} [level {i}]", ulps)


def compare(emus, op, x, rois, case_seed, box_grad, what, adaptive=False, deterministic=False):
  """op(x, rois) and its gradients, CPU kernels vs emulated CUDA kernels.
  deterministic: the op runs the deterministic backward, whose feature
  gradient must equal the CPU's bit for bit on every run (the same
  summation order, no atomics), whatever the seed, block size and bands."""
  out_shape = jax.eval_shape(op, x, rois)
  cot = (
    np.random.default_rng(case_seed + 1).standard_normal(out_shape.shape).astype(out_shape.dtype)
  )
  fn = _value_and_grads(op, x, rois, cot, box_grad)
  expected, runs = run_both(emus, fn, x, rois, case_seed=case_seed)
  for label, got, stats in runs:
    check_launched(stats, got[:1], f"{what} [{label}]")
    assert_bits_equal(got[0], expected[0], f"{what} [{label}] output")
    if deterministic:
      for i, (a, e) in enumerate(zip(jax.tree.leaves(got[1:3]), jax.tree.leaves(expected[1:3]))):
        assert_bits_equal(a, e, f"{what} [{label}] deterministic feature gradient {i}")
    else:
      _check_feature_grads(
        got[1],
        expected[1],
        expected[2],
        f"{what} [{label}] feature gradient",
        GRAD_ULPS_ADAPTIVE if adaptive else GRAD_ULPS,
      )
    if box_grad:
      assert_bits_equal(got[3], expected[3], f"{what} [{label}] box gradient")
  return expected


def _x64(*dtypes):
  return jax.enable_x64("float64" in dtypes)


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("deterministic", [False, True])
def test_roi_pool(emus, variant, deterministic):
  dtype, box_dtype, layout, fmt = variant
  seed = stable_seed("roi_pool", *variant)
  with _x64(dtype, box_dtype):
    x, rois = make_case(seed, dtype, box_dtype, layout, fmt)
    op = lambda x, r: jax_roi.roi_pool(
      x,
      r,
      (3, 2),
      spatial_scale=0.5,
      layout=layout,
      implementation="ffi",
      deterministic=deterministic,
    )
    compare(
      emus,
      op,
      x,
      rois,
      seed,
      box_grad=False,
      what=f"roi_pool {variant}",
      deterministic=deterministic,
    )


def _alternate(*keys):
  """Half of a case matrix runs the deterministic backward, by a stable
  hash of the case (both layouts and every mode get both backwards)."""
  return stable_seed(*keys) % 2 == 0


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("mode,sr,aligned", ALIGN_CONFIGS)
def test_roi_align(emus, variant, mode, sr, aligned):
  dtype, box_dtype, layout, fmt = variant
  seed = stable_seed("roi_align", mode, sr, aligned, *variant)
  det = _alternate("roi_align", mode, sr, aligned, *variant)
  with _x64(dtype, box_dtype):
    x, rois = make_case(seed, dtype, box_dtype, layout, fmt)
    op = lambda x, r: jax_roi.roi_align(
      x,
      r,
      (3, 2),
      spatial_scale=0.5,
      sampling_ratio=sr,
      aligned=aligned,
      mode=mode,
      layout=layout,
      implementation="ffi",
      deterministic=det,
    )
    compare(
      emus,
      op,
      x,
      rois,
      seed,
      box_grad=True,
      what=f"roi_align {mode} sr={sr} aligned={aligned} det={det} {variant}",
      adaptive=sr <= 0,
      deterministic=det,
    )


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize(
  "op_name,sr", [("ps_roi_pool", None), ("ps_roi_align", 0), ("ps_roi_align", 2)]
)
def test_ps_roi(emus, variant, op_name, sr):
  """Position-sensitive ops: 12 input channels, 3 x 2 bins, 2 output channels."""
  dtype, box_dtype, layout, fmt = variant
  seed = stable_seed(op_name, sr, *variant)
  with _x64(dtype, box_dtype):
    x, rois = make_case(seed, dtype, box_dtype, layout, fmt, c=12)
    if op_name == "ps_roi_pool":
      op = lambda x, r: jax_roi.ps_roi_pool(x, r, (3, 2), 0.5, layout=layout, implementation="ffi")
    else:
      op = lambda x, r: jax_roi.ps_roi_align(
        x, r, (3, 2), 0.5, sr, layout=layout, implementation="ffi"
      )
    compare(
      emus,
      op,
      x,
      rois,
      seed,
      box_grad=op_name == "ps_roi_align",
      what=f"{op_name} sr={sr} {variant}",
      adaptive=sr == 0,
    )


SCALES3 = (1 / 4, 1 / 8, 1 / 16)


def _fpn_case(seed, dtype, box_dtype, layout, fmt, levels, n=2, c=2, k=12):
  """FPN levels of a 128 x 128 image and boxes. With 3 levels (scales 1/4,
  1/8, 1/16: LevelMapper levels k = 2..4, k = floor(4 + log2(sqrt(area) /
  224))) every box is either small (sqrt(area) < 112: level 0) or large
  (>= 224: level 2), so the middle level receives no RoI; a few hostile
  boxes (NaN: level 0) and bad batch indices too."""
  rng = np.random.default_rng(seed)
  scales = SCALES3[:levels]
  feats = [
    random_features(rng, n, c, int(128 * s), int(128 * s), layout, DTYPES[dtype]) for s in scales
  ]
  side = np.where(rng.random(n * k) < 0.5, rng.uniform(4, 100, n * k), rng.uniform(235, 320, n * k))
  x1, y1 = rng.uniform(-150, 120, n * k), rng.uniform(-150, 120, n * k)
  aspect = rng.uniform(0.9, 1.1, n * k)
  boxes = np.stack([x1, y1, x1 + side * aspect, y1 + side / aspect], axis=1)
  hostile = rng.random(n * k) < 0.1
  boxes[hostile, rng.integers(0, 4, hostile.sum())] = rng.choice(
    [np.nan, np.inf, -1e30, 1e30], hostile.sum()
  )
  if fmt == "indexed":
    rois = indexed_rois(rng, boxes[:k], n, padding=0.25)
  else:
    rois = boxes.reshape(n, k, 4)
  return feats, rois.astype(box_dtype), scales


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("levels,sr,aligned", [(1, 2, True), (3, 0, False), (3, 2, True)])
def test_multi_scale(emus, variant, levels, sr, aligned):
  dtype, box_dtype, layout, fmt = variant
  seed = stable_seed("multi_scale", levels, sr, aligned, *variant)
  det = _alternate("multi_scale", levels, sr, aligned, *variant)
  with _x64(dtype, box_dtype):
    feats, rois, scales = _fpn_case(seed, dtype, box_dtype, layout, fmt, levels)
    op = lambda fs, r: jax_roi.multi_scale_roi_align(
      list(fs),
      r,
      (3, 2),
      spatial_scales=scales,
      sampling_ratio=sr,
      aligned=aligned,
      layout=layout,
      implementation="ffi",
      deterministic=det,
    )
    expected = compare(
      emus,
      op,
      tuple(feats),
      rois,
      seed,
      box_grad=True,
      what=f"multi_scale levels={levels} sr={sr} aligned={aligned} det={det} {variant}",
      adaptive=sr <= 0,
      deterministic=det,
    )
    if levels == 3:  # the middle level got no RoI: its gradient is all zeros
      assert not np.any(np.asarray(expected[1][1], np.float64))
      assert any(np.any(np.asarray(expected[1][i], np.float64)) for i in (0, 2))


# Degenerate shapes: K = 0, N = 0, zero-size feature maps.
EMPTY_CASES = {
  "K=0 indexed": ((2, 3, 5, 6), (0, 5)),
  "K=0 batched": ((2, 3, 5, 6), (2, 0, 4)),
  "N=0 batched": ((0, 3, 5, 6), (0, 4, 4)),
  "N=0 indexed": ((0, 3, 5, 6), (4, 5)),
  "H=0": ((2, 3, 0, 6), (4, 5)),
  "W=0": ((2, 3, 5, 0), (2, 3, 4)),
  "C=0": ((2, 0, 5, 6), (4, 5)),
}


@pytest.mark.parametrize("name", list(EMPTY_CASES))
@pytest.mark.parametrize("op_name", ["roi_pool", "roi_align_avg", "roi_align_max", "multi_scale"])
def test_degenerate_shapes(emus, name, op_name):
  x_shape, r_shape = EMPTY_CASES[name]
  rng = np.random.default_rng(stable_seed(name, op_name))
  x = rng.standard_normal(x_shape).astype(np.float32)
  boxes = random_boxes(rng, int(np.prod(r_shape[:-1])), 5, 6, 0.5, hostile=True)
  rois = (
    boxes.reshape(r_shape)
    if r_shape[-1] == 4
    else indexed_rois(rng, boxes, max(x_shape[0], 1), padding=0.3)
  ).astype(np.float32)
  ops = {
    "roi_pool": lambda x, r: jax_roi.roi_pool(x, r, 2, spatial_scale=0.5, implementation="ffi"),
    "roi_align_avg": lambda x, r: jax_roi.roi_align(
      x, r, 2, spatial_scale=0.5, implementation="ffi"
    ),
    "roi_align_max": lambda x, r: jax_roi.roi_align(
      x, r, 2, spatial_scale=0.5, mode="max", implementation="ffi"
    ),
    "multi_scale": lambda x, r: jax_roi.multi_scale_roi_align(
      [x], r, 2, spatial_scales=(0.5,), implementation="ffi"
    ),
  }
  try:
    jax.eval_shape(ops[op_name], x, rois)
  except (ValueError, TypeError) as e:  # shapes the op rejects up front
    pytest.skip(f"{op_name} rejects {name}: {e}")
  compare(
    emus,
    ops[op_name],
    x,
    rois,
    stable_seed(name),
    box_grad=op_name != "roi_pool",
    what=f"{op_name} {name}",
    adaptive=op_name != "roi_pool",
  )


@pytest.mark.parametrize("op_name", ["roi_pool", "roi_align_max", "multi_scale"])
def test_vmap_and_grad_paths(emus, op_name):
  """vmap folds into one kernel call (jax_roi._core.batching); jit(vmap(grad))
  goes through the same emulated kernels."""
  seed = stable_seed("vmap", op_name)
  x, rois = make_case(seed, "float32", "float32", "NCHW", "indexed", k=6)
  xs = np.stack([x, x[::-1] * 2])  # a batch of two feature stacks
  ops = {
    "roi_pool": lambda x, r: jax_roi.roi_pool(x, r, 2, spatial_scale=0.5, implementation="ffi"),
    "roi_align_max": lambda x, r: jax_roi.roi_align(
      x, r, 2, spatial_scale=0.5, mode="max", sampling_ratio=2, implementation="ffi"
    ),
    "multi_scale": lambda x, r: jax_roi.multi_scale_roi_align(
      [x], r, 2, spatial_scales=(0.5,), implementation="ffi"
    ),
  }
  op = ops[op_name]
  cot = (
    np.random.default_rng(seed)
    .standard_normal((2,) + jax.eval_shape(op, x, rois).shape)
    .astype(np.float32)
  )

  def grad(c):  # d<op(x), c>/dx, vmapped over (x, c)
    return jax.vmap(lambda x, c: jax.vjp(lambda x: op(x, rois), x)[1](c)[0])(xs, c)

  fn = jax.jit(lambda xs, r: (jax.vmap(op, (0, None))(xs, r), grad(cot), grad(np.abs(cot))))
  expected, runs = run_both(emus, fn, xs, rois, case_seed=seed)
  for label, got, stats in runs:
    check_launched(stats, got[:1], f"vmap {op_name} [{label}]")
    assert_bits_equal(got[0], expected[0], f"vmap {op_name} [{label}] output")
    _check_feature_grads(
      got[1],
      expected[1],
      expected[2],
      f"vmap {op_name} [{label}] gradient",
      GRAD_ULPS_ADAPTIVE if op_name == "multi_scale" else GRAD_ULPS,
    )


ALL_VARIANTS = [
  (d, b, l, f)
  for d in DTYPES
  for b in ("float32", "float64")
  for l in ("NCHW", "NHWC")
  for f in ("indexed", "batched")
]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ALL_VARIANTS, ids=["-".join(v) for v in ALL_VARIANTS])
@pytest.mark.parametrize(
  "op_name", ["roi_pool"] + [f"roi_align-{m}-{sr}-{a}" for m, sr, a in ALIGN_CONFIGS]
)
def test_extended_sweep(emus, variant, op_name):
  """Every (dtype, box dtype, layout, format) combination for every op
  configuration, larger maps and more boxes (the default run covers each
  value of each axis, not every combination)."""
  dtype, box_dtype, layout, fmt = variant
  seed = stable_seed("sweep", op_name, *variant)
  with _x64(dtype, box_dtype):
    x, rois = make_case(seed, dtype, box_dtype, layout, fmt, n=3, c=4, h=13, w=10, k=24)
    if op_name == "roi_pool":
      op = lambda x, r: jax_roi.roi_pool(
        x, r, (4, 3), spatial_scale=0.5, layout=layout, implementation="ffi"
      )
    else:
      _, mode, sr, aligned = op_name.split("-")
      op = lambda x, r: jax_roi.roi_align(
        x,
        r,
        (4, 3),
        spatial_scale=0.5,
        sampling_ratio=int(sr),
        aligned=aligned == "True",
        mode=mode,
        layout=layout,
        implementation="ffi",
      )
    compare(
      emus,
      op,
      x,
      rois,
      seed,
      box_grad=op_name != "roi_pool",
      what=f"{op_name} {variant}",
      adaptive=op_name.endswith("-0-True") or op_name.endswith("-0-False"),
    )


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("op_name", ["roi_pool", "roi_align-avg", "roi_align-max", "multi_scale"])
def test_deterministic_backward_many_rois(emus, layout, op_name):
  """The deterministic backward with more RoIs than one shared-memory tile
  of geometry (kRoiTile = 64), on three images and maps of many bands,
  overlapping boxes: bit-identical to the CPU backward on every emulated
  schedule, block size and band height."""
  seed = stable_seed("deterministic", layout, op_name)
  x, rois = make_case(
    seed, "float32", "float32", layout, "indexed", n=3, c=5, h=17, w=12, k=150, scale=1.0
  )
  ops = {
    "roi_pool": lambda x, r: jax_roi.roi_pool(
      x, r, (3, 4), layout=layout, implementation="ffi", deterministic=True
    ),
    "roi_align-avg": lambda x, r: jax_roi.roi_align(
      x,
      r,
      (3, 4),
      sampling_ratio=2,
      aligned=True,
      layout=layout,
      implementation="ffi",
      deterministic=True,
    ),
    "roi_align-max": lambda x, r: jax_roi.roi_align(
      x,
      r,
      (3, 4),
      sampling_ratio=0,
      mode="max",
      layout=layout,
      implementation="ffi",
      deterministic=True,
    ),
    "multi_scale": lambda x, r: jax_roi.multi_scale_roi_align(
      [x, x[..., ::2, ::2] if layout == "NCHW" else x[:, ::2, ::2]],
      r,
      (3, 4),
      spatial_scales=(1.0, 0.5),
      canonical_scale=4,
      canonical_level=1,
      sampling_ratio=2,
      layout=layout,
      implementation="ffi",
      deterministic=True,
    ),
  }
  compare(
    emus,
    ops[op_name],
    x,
    rois,
    seed,
    box_grad=op_name != "roi_pool",
    what=f"deterministic {op_name} {layout}",
    adaptive=True,
    deterministic=True,
  )


def _base(x, rois, output_size, spatial_scale, layout):
  return canonicalize(
    x,
    rois,
    output_size,
    spatial_scale=spatial_scale,
    layout=layout,
    box_order="xyxy",
    implementation="ffi",
  )[2]


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_forward_argmax(emus, variant):
  """The argmax residuals the FFI layer hands to the backward: roi_pool's
  flat spatial index, roi_align max mode's winning sample, bit for bit."""
  dtype, box_dtype, layout, fmt = variant
  seed = stable_seed("argmax", *variant)
  with _x64(dtype, box_dtype):
    x, rois = make_case(seed, dtype, box_dtype, layout, fmt)
    base = _base(x, rois, (3, 2), 0.5, layout)
    pool = RoiPoolConfig(base)
    aligns = [
      RoiAlignConfig(base, sr, aligned, "max") for sr in (0, 2) for aligned in (False, True)
    ]

    def fn(x, rois):
      outs = roi_pool_ffi.forward(x, rois, pool, with_argmax=True)
      for c in aligns:
        outs += tuple(roi_align_ffi.forward(x, rois, c, with_argmax=True))
      return outs

    expected, runs = run_both(emus, jax.jit(fn), jnp.asarray(x), jnp.asarray(rois), case_seed=seed)
    assert expected[1].dtype == np.int32 and expected[1].size > 0
    for label, got, stats in runs:
      check_launched(stats, got, f"argmax {variant} [{label}]")
      for i, (a, e) in enumerate(zip(got, expected)):
        assert_bits_equal(a, e, f"argmax {variant} [{label}] result {i}")


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_roi_pool_backward_from_features(emus, variant):
  """roi_pool's backward without a saved argmax (the CPU's default, a
  target on every platform): the CUDA kernel finds each output's winner
  again in the features, with the forward's rule, and adds its cotangent
  atomically. Against the CPU's argmax-free backward and the argmax
  backward: the same gradient to the atomic tolerance (sum of |terms| from
  |cotangent|)."""
  dtype, box_dtype, layout, fmt = variant
  seed = stable_seed("roi_pool_from_features", *variant)
  with _x64(dtype, box_dtype):
    x, rois = make_case(seed, dtype, box_dtype, layout, fmt)
    pool = RoiPoolConfig(_base(x, rois, (3, 2), 0.5, layout))
    out, argmax = roi_pool_ffi.forward(jnp.asarray(x), jnp.asarray(rois), pool, with_argmax=True)
    cot = np.random.default_rng(seed).standard_normal(out.shape).astype(dtype)

    def grads(c):
      return roi_pool_ffi.backward_from_features(jnp.asarray(c), x, rois, pool)[0]

    by_argmax = np.asarray(roi_pool_ffi.backward(jnp.asarray(cot), argmax, rois, pool)[0])
    magnitude = np.asarray(roi_pool_ffi.backward(jnp.abs(jnp.asarray(cot)), argmax, rois, pool)[0])
    expected, runs = run_both(emus, jax.jit(grads), cot, case_seed=seed)
    np.testing.assert_array_equal(expected, by_argmax)
    assert np.any(expected != 0)
    for label, got, stats in runs:
      check_launched(stats, [got], f"roi_pool from features {variant} [{label}]")
      assert_feature_grad_close(
        got, expected, magnitude, f"roi_pool from features {variant} [{label}]"
      )


# ---------------------------------------------------------------------------
# The modules themselves
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
@pytest.mark.parametrize("mode,sr", [("avg", 2), ("max", 2), ("avg", 0), ("max", 0)])
def test_nhwc_vec_forward(emus, monkeypatch, dtype, mode, sr):
  """roi_align's NHWC vector forward (16-byte loads of 16 / itemsize
  channels) on hostile boxes, with every run's launch limits, seeds and
  32/64-bit offsets: outputs bit for bit the CPU's, and the feature gradient
  (which in max mode follows the forward's winners) within tolerance."""
  configs = [[(b, t, "nhwc_vec", i, o) for (b, t, _, i, o) in arch] for arch in RUN_CONFIGS]
  monkeypatch.setattr(sys.modules[__name__], "RUN_CONFIGS", configs)
  lanes = 16 // np.dtype(DTYPES[dtype]).itemsize
  seed = stable_seed("nhwc_vec", dtype, mode, sr)
  with _x64(dtype, "float32"):
    x, rois = make_case(seed, dtype, "float32", "NHWC", "indexed", c=3 * lanes)
    op = lambda x, r: jax_roi.roi_align(
      x,
      r,
      (3, 2),
      spatial_scale=0.5,
      sampling_ratio=sr,
      aligned=True,
      mode=mode,
      layout="NHWC",
      implementation="ffi",
    )
    compare(
      emus,
      op,
      x,
      rois,
      seed,
      box_grad=False,
      what=f"roi_align nhwc_vec {mode} sr={sr} {dtype}",
      adaptive=sr <= 0,
    )


def test_every_target_has_an_emulated_twin_per_architecture(emus):
  assert sorted(m.cuda_arch for m in emus) == sorted(ARCHS)
  assert len(set(ARCHS)) >= 2 or os.environ.get("JAX_ROI_EMULATION_ARCHS")
  cpu = set(extension.target_names())
  assert cpu
  for m in emus:
    assert m.target_suffix == f"_cuda_emulation_sm{m.cuda_arch}"
    targets = m.cpu_targets()
    assert set(targets) == {t + m.target_suffix for t in cpu}
    for handlers in targets.values():  # instantiate (kernel preloading) + execute
      assert set(handlers) == {"instantiate", "execute"}


def test_kernels_are_preloaded_once_by_the_instantiate_stage(emus):
  """XLA:CPU runs the handlers' instantiate stage when it compiles a call:
  the first one of the process loads every registered kernel once
  (cudaFuncGetAttributes: the emulation's stand-in counts the calls);
  later compilations load nothing. In a fresh interpreter, so that no
  earlier test has compiled anything."""
  build = pathlib.Path(emus[0].__file__).parent
  code = f"""
import sys
sys.path.insert(0, {str(build)!r})
import jax, numpy as np, jax_roi
from jax_roi._core import kernel
m = __import__("_jax_roi_cuda_emulation_sm{emus[0].cuda_arch}")
for name, h in m.cpu_targets().items():
  jax.ffi.register_ffi_target(name, h, platform="cpu")
n = m.registered_kernel_count()
assert n >= 5 * 8, n  # 5 kernels x 8 (storage, coordinate) type pairs
x = np.ones((1, 2, 5, 5), np.float32)
rois = np.array([[0, 0, 0, 3, 3]], np.float32)
assert m.kernel_loads() == 0 and m.stats()["func_attribute_queries"] == 0
jax.block_until_ready(jax_roi.roi_align(x, rois, 2, implementation="ffi"))  # the CPU kernels
assert m.kernel_loads() == 0
with kernel.redirect_targets(lambda t: t + m.target_suffix):
  for mode in ("avg", "max"):  # two compilations, two instantiations
    jax.block_until_ready(jax_roi.roi_align(x, rois, 2, mode=mode, implementation="ffi"))
    assert m.kernel_loads() == n, (m.kernel_loads(), n)
    assert m.stats()["func_attribute_queries"] == n
assert m.preload_kernels() == 0 and m.kernel_loads() == n  # cudaSuccess; nothing reloaded
print("ok", n)
"""
  r = subprocess.run(
    [sys.executable, "-P", "-c", code],
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(
      os.environ,
      PYTHONPATH=os.pathsep.join(
        # the jax_roi under test first (not a source tree on sys.path)
        [str(pathlib.Path(jax_roi.__file__).parent.parent)] + sys.path
      ),
    ),
  )
  assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout + r.stderr


def test_redirect_targets_clears_compiled_executables(emus):
  """A call jitted before the redirect is not reused inside it, nor the
  redirected one after it."""
  m = emus[0]
  x, rois = make_case(1, "float32", "float32", "NCHW", "indexed")
  f = lambda: jax.block_until_ready(jax_roi.roi_pool(x, rois, 2, implementation="ffi"))
  f()
  m.reset_stats()
  with kernel.redirect_targets(lambda t: t + m.target_suffix):
    f()
    assert m.stats()["launches"] > 0
  m.reset_stats()
  f()
  assert m.stats()["launches"] == 0


@pytest.mark.parametrize(
  "op_name", ["roi_pool", "roi_align", "roi_align_adaptive", "roi_align_nhwc", "roi_align_nhwc_f64"]
)
def test_forward_kernel_variants_launch_what_they_say(emus, op_name):
  """set_forward_kernels picks the kernels (the bit-for-bit comparisons above
  would pass if it did nothing): one thread per output (one launch of
  ceil(outputs / 256) blocks) or a block per RoI and chunk of 4 * 256
  outputs; roi_align with adaptive sampling adds a launch of the same shape
  for the RoIs whose samples do not fit the tables. nhwc_vec: the same as
  per_roi except for roi_align in NHWC with whole vectors of channels, where
  a block's chunk is 4 * 256 vectors (4 float32 channels: 1800 outputs are
  450 vectors, one chunk); float64 (2 channels a vector) with 301 channels
  is not whole vectors: per_roi's kernels."""
  m = emus[0]
  nhwc = op_name.startswith("roi_align_nhwc")
  k, c, ph, pw = 5, 301 if op_name == "roi_align_nhwc_f64" else 300, 3, 2
  x = np.random.default_rng(0).standard_normal((1, c, 8, 8)).astype(np.float32)
  if nhwc:
    x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
  rois = np.array([[0, 1, 1, 6, 5]] * k, np.float32)
  op = {
    "roi_pool": lambda x, r: jax_roi.roi_pool(x, r, (ph, pw), implementation="ffi"),
    "roi_align": lambda x, r: jax_roi.roi_align(
      x, r, (ph, pw), sampling_ratio=2, implementation="ffi"
    ),
    "roi_align_adaptive": lambda x, r: jax_roi.roi_align(
      x, r, (ph, pw), sampling_ratio=0, implementation="ffi"
    ),
  }.get(
    op_name,
    lambda x, r: jax_roi.roi_align(
      x, r, (ph, pw), sampling_ratio=2, layout="NHWC", implementation="ffi"
    ),
  )
  fn = jax.jit(op)
  chunks = -(-c * ph * pw // 1024)
  launches = {
    "per_output": (1, -(-k * c * ph * pw // 256)),
    "per_roi": (2, 2 * k * chunks) if op_name == "roi_align_adaptive" else (1, k * chunks),
  }
  launches["nhwc_vec"] = (1, k) if op_name == "roi_align_nhwc" else launches["per_roi"]
  with jax.enable_x64(op_name == "roi_align_nhwc_f64"):
    if op_name == "roi_align_nhwc_f64":
      x, rois = x.astype(np.float64), rois.astype(np.float64)
    expected = np.asarray(fn(x, rois))
    with kernel.redirect_targets(lambda t: t + m.target_suffix):
      for variant, (n_launches, n_blocks) in launches.items():
        m.set_forward_kernels(variant)
        try:
          m.reset_stats()
          got = np.asarray(jax.block_until_ready(fn(x, rois)))
          stats = m.stats()
        finally:
          m.set_forward_kernels(FORWARD_DEFAULT)
        assert m.forward_kernels() == FORWARD_DEFAULT
        assert (stats["launches"], stats["blocks"]) == (n_launches, n_blocks), (variant, stats)
        assert_bits_equal(got, expected, f"{op_name} {variant}")
  with pytest.raises(ValueError, match="per_roi"):
    m.set_forward_kernels("fast")


@pytest.mark.parametrize(
  "case", ["avg", "avg_multi_scale", "avg_f16", "max", "avg_f64", "avg_odd_channels", "avg_nchw"]
)
def test_backward_kernel_variants_launch_what_they_say(emus, case):
  """set_backward_kernels("nhwc_vec") runs roi_align's (and multi-scale's)
  NHWC average backward with 4 channels a thread: ceil(outputs / 4 / 256)
  blocks instead of ceil(outputs / 256), gradients to the atomic tolerance
  of the CPU's (each emulated module: sm_75's four scalar atomics, sm_121's
  float4 atomics). Max mode, float64, channels that are not a multiple of 4
  and NCHW keep the per-output kernel."""
  k, c, ph, pw = 5, 303 if case == "avg_odd_channels" else 300, 3, 2
  dtype = {"avg_f16": np.float16, "avg_f64": np.float64}.get(case, np.float32)
  rng = np.random.default_rng(3)
  x = rng.standard_normal((2, c, 9, 11)).astype(dtype)
  layout = "NCHW" if case == "avg_nchw" else "NHWC"
  if layout == "NHWC":
    x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
  rois = np.array([[0, 1, 1, 6, 5], [1, 0.5, 2, 8, 7.5], [0, 3, 0, 9, 8], [1, 2, 2, 3, 3]] * 2)
  rois = rois[:k].astype(np.float64 if case == "avg_f64" else np.float32)
  mode = "max" if case == "max" else "avg"
  if case == "avg_multi_scale":
    op = lambda f, r: jax_roi.multi_scale_roi_align(
      [f, f[:, ::2, ::2]],
      r,
      (ph, pw),
      2,
      spatial_scales=[1.0, 0.5],
      image_size=(9, 11),
      aligned=True,
      layout="NHWC",
      implementation="ffi",
    )
  else:
    op = lambda f, r: jax_roi.roi_align(
      f,
      r,
      (ph, pw),
      sampling_ratio=2,
      aligned=True,
      mode=mode,
      layout=layout,
      implementation="ffi",
    )
  cot = rng.standard_normal(op(x, rois).shape).astype(dtype)
  grad = jax.jit(jax.grad(lambda f: jnp.sum((op(f, rois) * cot).astype(jnp.float32))))
  magnitude = jax.jit(jax.grad(lambda f: jnp.sum((op(f, rois) * np.abs(cot)).astype(jnp.float32))))
  with jax.enable_x64(case == "avg_f64"):
    expected, scale = np.asarray(grad(x)), np.asarray(magnitude(x))
    vec = case in ("avg", "avg_multi_scale", "avg_f16")
    outputs = k * c * ph * pw
    for m in emus:
      with kernel.redirect_targets(lambda t, s=m.target_suffix: t + s):
        for variant in ("per_output", "nhwc_vec"):
          m.set_backward_kernels(variant)
          try:
            m.reset_stats()
            got = np.asarray(jax.block_until_ready(grad(x)))
            stats = m.stats()
          finally:
            m.set_backward_kernels(BACKWARD_DEFAULT)
          assert m.backward_kernels() == BACKWARD_DEFAULT
          per_thread = 4 if variant == "nhwc_vec" and vec else 1
          # The backward's launch (the gradient's zero fill is not one);
          # max mode's forward runs too (its argmax is the residual: a block
          # per RoI and chunk of 1024 outputs), average mode's is dropped.
          blocks = -(-outputs // per_thread // 256)
          if mode == "max":
            expected_stats = (2, blocks + k * -(-c * ph * pw // 1024))
          else:
            expected_stats = (1, blocks)
          assert (stats["launches"], stats["blocks"]) == expected_stats, (variant, stats)
          assert_feature_grad_close(got, expected, scale, f"{case} {variant} sm{m.cuda_arch}")
  with pytest.raises(ValueError, match="nhwc_vec"):
    emus[0].set_backward_kernels("fast")


@pytest.mark.parametrize(
  "variable,getter,cases",
  [
    (
      "JAX_ROI_CUDA_FORWARD",
      "forward_kernels",
      (
        (None, "per_roi"),
        ("per_output", "per_output"),
        ("per_roi", "per_roi"),
        ("nhwc_vec", "nhwc_vec"),
        ("fast", "per_roi"),
      ),
    ),
    (
      "JAX_ROI_CUDA_BACKWARD",
      "backward_kernels",
      ((None, "per_output"), ("nhwc_vec", "nhwc_vec"), ("fast", "per_output")),
    ),
  ],
)
def test_kernel_variants_from_the_environment(emus, variable, getter, cases):
  """JAX_ROI_CUDA_FORWARD / JAX_ROI_CUDA_BACKWARD pick the kernels when the
  module loads: the default for an unset or unknown value, the named variant
  otherwise."""
  build = pathlib.Path(emus[0].__file__).parent
  code = (
    f"import sys; sys.path.insert(0, {str(build)!r}); "
    f"m = __import__('_jax_roi_cuda_emulation_sm{emus[0].cuda_arch}'); "
    f"print(m.{getter}())"
  )
  for value, expected in cases:
    env = {k: v for k, v in os.environ.items() if k != variable}
    if value is not None:
      env[variable] = value
    r = subprocess.run(
      [sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert r.returncode == 0 and r.stdout.strip() == expected, (value, r.stdout + r.stderr)


# ---------------------------------------------------------------------------
# roi_align_rotated
# ---------------------------------------------------------------------------

# (sampling_ratio, aligned, angle_unit, clockwise): detectron2's and mmcv's conventions.
ROTATED_CONFIGS = [(0, True, "degrees", False), (2, False, "radians", True)]


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("sr,aligned,unit,clockwise", ROTATED_CONFIGS)
def test_roi_align_rotated(emus, variant, sr, aligned, unit, clockwise):
  """Hostile oriented boxes (NaN/inf/huge centres, sizes and angles,
  negative sizes) and bad batch indices: forward and box gradient bit for
  bit, feature gradient to rounding."""
  dtype, box_dtype, layout, fmt = variant
  seed = stable_seed("roi_align_rotated", sr, aligned, *variant)
  with _x64(dtype, box_dtype):
    rng = np.random.default_rng(seed)
    x = random_features(rng, 2, 3, 7, 9, layout, DTYPES[dtype])
    rois = rotated_rois(
      rng, fmt, 2, 10, 7, 9, 0.5, degrees=unit == "degrees", padding=0.3, hostile=True
    ).astype(box_dtype)
    op = lambda x, r: jax_roi.roi_align_rotated(
      x,
      r,
      (3, 2),
      0.5,
      sr,
      angle_unit=unit,
      clockwise=clockwise,
      aligned=aligned,
      layout=layout,
      implementation="ffi",
    )
    compare(
      emus,
      op,
      x,
      rois,
      seed,
      box_grad=True,
      what=f"roi_align_rotated sr={sr} aligned={aligned} {variant}",
      adaptive=sr <= 0,
    )


def test_roi_align_rotated_degenerate_shapes_and_vmap(emus):
  """No RoIs, no channels, an empty map; and a vmapped gradient (one folded
  launch per kernel)."""
  op = lambda x, r: jax_roi.roi_align_rotated(x, r, 2, 1.0, 2, implementation="ffi")
  for x_shape, r_shape in [
    ((2, 3, 5, 5), (0, 6)),
    ((2, 0, 5, 5), (3, 6)),
    ((2, 3, 0, 5), (3, 6)),
    ((2, 3, 5, 5), (2, 0, 5)),
  ]:
    x = np.ones(x_shape, np.float32)
    rois = np.tile(np.array([0, 2, 2, 3, 3, 20], np.float32)[-r_shape[-1] :], r_shape[:-1] + (1,))
    expected, runs = run_both(emus, jax.jit(op), x, rois)
    for label, got, stats in runs:
      assert_bits_equal(got, expected, f"degenerate {x_shape} {r_shape} [{label}]")
      check_launched(stats, [got], label)
  rng = np.random.default_rng(5)
  xs = np.stack([random_features(rng, 2, 3, 6, 7) for _ in range(2)])
  rs = np.stack([rotated_rois(rng, "indexed", 2, 4, 6, 7).astype(np.float32) for _ in range(2)])
  fn = jax.jit(jax.vmap(jax.grad(lambda x, r: jnp.sum(op(x, r) ** 2), argnums=(0, 1))))
  expected, runs = run_both(emus, fn, xs, rs)
  for label, got, stats in runs:
    check_launched(stats, got, label)
    assert_bits_equal(got[1], expected[1], f"vmapped box gradient [{label}]")
    assert_feature_grad_close(got[0], expected[0], np.abs(expected[0]), f"vmap [{label}]")


# ---------------------------------------------------------------------------
# prroi_pool
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_prroi_pool(emus, variant):
  """Hostile boxes (make_case's NaN/inf/huge coordinates, inverted and
  zero-size boxes) and bad batch indices: forward and box gradient (its
  lanes and tree) bit for bit, feature gradient to rounding."""
  dtype, box_dtype, layout, fmt = variant
  seed = stable_seed("prroi_pool", *variant)
  with _x64(dtype, box_dtype):
    x, rois = make_case(seed, dtype, box_dtype, layout, fmt)
    op = lambda x, r: jax_roi.prroi_pool(x, r, (3, 2), 0.5, layout=layout, implementation="ffi")
    compare(emus, op, x, rois, seed, box_grad=True, what=f"prroi_pool {variant}")
