"""Tests of the CUDA host-emulation runtime (csrc/core/cuda_emulation.h).

The toy kernels of tests/cuda_emulation/toy_kernels.cu.h are built (CMake +
Ninja + pybind11, once per source state: the build directory is keyed by a
hash of the sources) into the module _toy_emulation, with one submodule per
emulated architecture (sm750, sm900), and run on the CPU.

Environment:
  JAX_ROI_EMULATION_BUILD_DIR  where to build (default <repo>/build; then cuda_emulation_tests/<hash>)
  JAX_ROI_EMULATION_SANITIZE=1 build with -fsanitize=address,undefined; the
      interpreter must run with the ASan runtime preloaded, e.g.
      LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so)"
      ASAN_OPTIONS=detect_leaks=0
  JAX_ROI_EMULATION_UCONTEXT=1 use the portable swapcontext fiber back end
"""

import contextlib
import hashlib
import importlib
import os
import pathlib
import shutil
import subprocess
import sys

import cmake_cache
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SRC = ROOT / "tests" / "cuda_emulation"
HEADERS = [ROOT / "csrc" / "core" / f for f in ("cuda_emulation.h", "cuda_compat.h")] + [
  ROOT / "csrc" / "cuda_emulation_bindings.h"
]
SEEDS = range(8)


def _flag(name):
  return os.environ.get(name, "0") not in ("", "0")


@pytest.fixture(scope="session")
def emu():
  pybind11 = pytest.importorskip("pybind11")
  sanitize = _flag("JAX_ROI_EMULATION_SANITIZE")
  ucontext = _flag("JAX_ROI_EMULATION_UCONTEXT")
  if sanitize and "libasan" not in os.environ.get("LD_PRELOAD", ""):
    pytest.skip("JAX_ROI_EMULATION_SANITIZE=1 needs the ASan runtime in LD_PRELOAD")
  h = hashlib.sha256()
  for path in sorted(SRC.iterdir()) + HEADERS:
    if path.is_file():
      h.update(path.name.encode() + b"\0" + path.read_bytes())
  h.update(f"{sys.version}|{pybind11.__version__}|{sanitize}|{ucontext}".encode())
  build = cmake_cache.build(
    SRC,
    "cuda_emulation_tests",
    h.hexdigest()[:16],
    [
      f"-DJAX_ROI_EMULATION_SANITIZE={'ON' if sanitize else 'OFF'}",
      f"-DJAX_ROI_EMULATION_UCONTEXT={'ON' if ucontext else 'OFF'}",
    ],
  )
  sys.path.insert(0, str(build))
  try:
    mod = importlib.import_module("_toy_emulation")
  finally:
    sys.path.remove(str(build))
  mod.set_verbose(False)  # expected kernel failures would flood stderr
  return mod


@pytest.fixture(params=["sm750", "sm900"])
def k(request, emu):
  """The toy kernels of one architecture build."""
  emu.set_seed(0)
  emu.set_shuffle(True)
  return getattr(emu, request.param)


@contextlib.contextmanager
def delta_stats(emu):
  before = emu.stats()
  out = {}
  yield out
  after = emu.stats()
  out.update({key: after[key] - before[key] for key in after})


def test_architecture_value(emu):
  assert emu.sm750.ARCH == 750 and emu.sm900.ARCH == 900


@pytest.mark.parametrize(
  "grid,block,n",
  [
    ((1,), (1,), 100),  # one thread does everything
    ((3,), (64,), 1000),  # grid-stride: grid smaller than the data
    ((50,), (32,), 1000),  # more threads than elements
    ((7,), (1024,), 20000),  # largest block
  ],
)
def test_grid_stride_loop(emu, k, grid, block, n):
  x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
  for seed in SEEDS:
    emu.set_seed(seed)
    out = np.full(n, np.nan, np.float32)
    with delta_stats(emu) as st:
      assert k.axpb(grid, block, 0, x, out, 2.0, 1.0) == emu.cudaSuccess
    np.testing.assert_array_equal(out, np.float32(2) * x + np.float32(1))
    assert st["blocks"] == grid[0] and st["threads"] == grid[0] * block[0]
    # No barrier: every thread ran to completion, back to back (fast path).
    assert st["suspensions"] == 0 and st["launches"] == 1


def test_every_thread_runs_once_with_its_own_indices(emu, k):
  grid, block = (3, 2, 2), (8, 4, 2)
  total = np.prod(grid) * np.prod(block)
  for seed in SEEDS:
    emu.set_seed(seed)
    visits = np.zeros(total, np.int32)
    who = np.full(total, -1, np.int64)
    assert k.identify(grid, block, visits, who) == emu.cudaSuccess
    np.testing.assert_array_equal(visits, 1)
    digits = [(who >> (10 * i)) & 1023 for i in range(6)]  # tx ty tz bx by bz
    tx, ty, tz, bx, by, bz = digits
    g = ((bz * grid[1] + by) * grid[0] + bx) * np.prod(block) + (tz * block[1] + ty) * block[0] + tx
    np.testing.assert_array_equal(g, np.arange(total))


def _first_thread(emu, k):
  x = np.arange(3 * 96 * 2, dtype=np.int32)
  winner = np.full(1, -1, np.int32)
  args = [
    np.zeros(4, np.int32),
    np.zeros(1, np.uint32),
    np.zeros(1, np.int32),
    np.zeros(1, np.uint64),
    np.zeros(1, np.float64),
    np.zeros(1, np.uint32),
  ]
  assert k.atomics(x, *args, winner) == emu.cudaSuccess
  return int(winner[0])


def test_execution_order_is_seeded_and_shuffled(emu, k):
  firsts = []
  for seed in SEEDS:
    emu.set_seed(seed)
    firsts.append(_first_thread(emu, k))
  assert len(set(firsts)) > 1, "blocks/threads run in the same order for every seed"
  emu.set_seed(3)
  assert _first_thread(emu, k) == firsts[3], "same seed, same order"
  emu.set_shuffle(False)
  try:
    assert _first_thread(emu, k) == 0  # natural order
  finally:
    emu.set_shuffle(True)


def test_racy_accumulation_differs_across_seeds(emu, k):
  rng = np.random.default_rng(0)
  x = (rng.standard_normal(4000) * np.logspace(-3, 4, 4000)).astype(np.float32)
  results = []
  for seed in SEEDS:
    emu.set_seed(seed)
    out = np.zeros(1, np.float32)
    assert k.racy_sum(x, out) == emu.cudaSuccess
    results.append(out[0])
  assert len(set(results)) > 1, "an order-dependent (racy) result did not change with the seed"
  emu.set_seed(5)
  out = np.zeros(1, np.float32)
  k.racy_sum(x, out)
  assert out[0] == results[5], "a seed must reproduce its result"


def test_atomics_exact(emu, k):
  rng = np.random.default_rng(1)
  x = rng.integers(-1000, 1000, 5000).astype(np.int32)
  bins = 7
  for seed in SEEDS:
    emu.set_seed(seed)
    hist = np.zeros(bins, np.int32)
    count = np.zeros(1, np.uint32)
    vmax = np.full(1, np.iinfo(np.int32).min, np.int32)
    cas = np.zeros(1, np.uint64)
    dsum = np.zeros(1, np.float64)
    wrap = np.zeros(1, np.uint32)
    winner = np.full(1, -1, np.int32)
    assert k.atomics(x, hist, count, vmax, cas, dsum, wrap, winner) == emu.cudaSuccess
    np.testing.assert_array_equal(hist, np.bincount(x % bins, minlength=bins))
    assert count[0] == x.size and vmax[0] == x.max() and cas[0] == x.size
    assert dsum[0] == x.astype(np.float64).sum() * 0.5
    assert wrap[0] == x.size % 10
    assert 0 <= winner[0] < x.size


def test_block_reduction_needs_its_barriers(emu, k):
  rng = np.random.default_rng(2)
  x = rng.integers(-100, 100, 256 * 20 + 17).astype(np.int32)
  expected = np.add.reduceat(x, np.arange(0, x.size, 256))
  wrong = 0
  for seed in SEEDS:
    emu.set_seed(seed)
    out = np.zeros(expected.size, np.int32)
    with delta_stats(emu) as st:
      assert k.block_sum(x, out, True) == emu.cudaSuccess
    np.testing.assert_array_equal(out, expected)
    assert st["barriers"] == expected.size * 9  # 1 + log2(256) per block
    out = np.zeros(expected.size, np.int32)
    assert k.block_sum(x, out, False) == emu.cudaSuccess
    wrong += not np.array_equal(out, expected)
  assert wrong > 0, "the reduction without __syncthreads() was right for every seed"


def test_concurrent_launches_from_several_os_threads(emu, k):
  # __shared__ is per OS thread (static thread_local): launches running at
  # the same time on different threads must not share it.
  from concurrent.futures import ThreadPoolExecutor

  rng = np.random.default_rng(7)
  inputs = [rng.integers(-100, 100, 256 * 40).astype(np.int32) for _ in range(4)]

  def work(x):
    for _ in range(10):
      out = np.zeros(40, np.int32)
      assert k.block_sum(x, out, True) == emu.cudaSuccess
      np.testing.assert_array_equal(out, x.reshape(40, 256).sum(1))
    return True

  with ThreadPoolExecutor(4) as pool:
    assert all(pool.map(work, inputs))


def test_barrier_predicates(emu, k):
  blocks, threads = 6, 96
  x = np.random.default_rng(3).integers(-3, 40, blocks * threads).astype(np.int32)
  x[:threads] = 1  # all positive
  x[threads : 2 * threads] = 0  # none
  for seed in SEEDS:
    emu.set_seed(seed)
    out = np.zeros(3 * blocks, np.int32)
    assert k.barrier_predicates(x, out, blocks, threads) == emu.cudaSuccess
    pos = x.reshape(blocks, threads) > 0
    np.testing.assert_array_equal(out[0::3], pos.sum(1))
    np.testing.assert_array_equal(out[1::3], pos.all(1))
    np.testing.assert_array_equal(out[2::3], pos.any(1))


@pytest.mark.parametrize("threads,n", [(256, 10000), (96, 1000), (32, 31)])
def test_warp_reduction(emu, k, threads, n):
  x = np.random.default_rng(n).integers(-50, 50, n).astype(np.int32)
  for seed in SEEDS:
    emu.set_seed(seed)
    out = np.zeros(1, np.int32)
    with delta_stats(emu) as st:
      assert k.warp_sum(x, out, threads) == emu.cudaSuccess
    assert out[0] == x.sum()
    assert st["warp_syncs"] > 0 and st["undefined_shuffle_reads"] == 0


def _warp_ops_expected(x):
  w = x.reshape(-1, 32).astype(np.int64)
  lane = np.arange(32)
  sums = np.repeat(w.sum(1, keepdims=True), 32, 1)
  bcast = w[:, (lane // 8) * 8 + 3]
  seg = w.reshape(-1, 2, 16)
  scan = np.cumsum(seg, axis=2).reshape(-1, 32)
  bits = ((w > 0) << lane).sum(1)
  ballot = np.repeat(bits[:, None], 32, 1).astype(np.uint32).view(np.int32)
  allany = np.repeat(((w > 0).all(1) + 2 * (w > 100).any(1))[:, None], 32, 1)
  down = np.where(lane < 31, np.roll(w, -1, axis=1), w)  # lane 31 keeps its value
  dv = ((down + 0.25) * 4).astype(np.int64)
  return np.stack([sums, bcast, scan, ballot, allany, dv], axis=-1).reshape(-1)


def test_warp_intrinsics(emu, k):
  blocks, threads = 3, 128
  x = np.random.default_rng(4).integers(-20, 200, blocks * threads).astype(np.int32)
  for seed in SEEDS:
    emu.set_seed(seed)
    out = np.zeros(6 * x.size, np.int32)
    assert k.warp_ops(x, out, blocks, threads) == emu.cudaSuccess
    np.testing.assert_array_equal(out, _warp_ops_expected(x))


def test_shuffle_from_exited_lanes_is_undefined(emu, k):
  x = np.arange(4 * 64, dtype=np.uint32)
  results = set()
  for seed in SEEDS:
    emu.set_seed(seed)
    out = np.zeros(8, np.uint32)
    with delta_stats(emu) as st:
      assert k.warp_sum_divergent(x, out, 4) == emu.cudaSuccess
    assert st["undefined_shuffle_reads"] > 0
    results.add(out.tobytes())
  assert len(results) > 1


def test_dynamic_shared_memory(emu, k):
  blocks, threads = 5, 200
  x = np.random.default_rng(5).standard_normal(blocks * threads).astype(np.float32)
  expected = x.reshape(blocks, threads)[:, ::-1].reshape(-1)
  for seed in SEEDS:
    emu.set_seed(seed)
    y = np.zeros_like(x)
    assert k.reverse(x, y, blocks, threads, 4 * threads) == emu.cudaSuccess
    np.testing.assert_array_equal(y, expected)


def test_dynamic_shared_memory_limit(emu, k):
  assert emu.max_dynamic_shared_bytes() == 48 * 1024
  x = np.ones(64, np.float32)
  y = np.zeros_like(x)
  assert k.reverse(x, y, 1, 64, 48 * 1024 + 1) == emu.cudaErrorInvalidValue
  assert not y.any()
  emu.set_max_dynamic_shared_bytes(227 * 1024)  # as cudaFuncSetAttribute opts in
  try:
    assert k.reverse(x, y, 1, 64, 100 * 1024) == emu.cudaSuccess
    assert (y == 1).all()
  finally:
    emu.set_max_dynamic_shared_bytes(48 * 1024)


@pytest.mark.parametrize(
  "grid,block,smem,error",
  [
    ((0,), (32,), 0, "cudaErrorInvalidConfiguration"),
    ((1, 0), (32,), 0, "cudaErrorInvalidConfiguration"),
    ((1,), (0,), 0, "cudaErrorInvalidConfiguration"),
    ((1,), (1025,), 0, "cudaErrorInvalidConfiguration"),
    ((1,), (32, 32, 2), 0, "cudaErrorInvalidConfiguration"),
    ((1,), (1, 1, 65), 0, "cudaErrorInvalidConfiguration"),
    ((1,), (1, 1025), 0, "cudaErrorInvalidConfiguration"),
    ((2**31,), (32,), 0, "cudaErrorInvalidConfiguration"),
    ((1, 65536), (32,), 0, "cudaErrorInvalidConfiguration"),
    ((1, 1, 65536), (32,), 0, "cudaErrorInvalidConfiguration"),
    ((1,), (32,), 48 * 1024 + 1, "cudaErrorInvalidValue"),
  ],
)
def test_launch_configuration_errors(emu, k, grid, block, smem, error):
  x = np.ones(16, np.float32)
  out = np.zeros_like(x)
  assert emu.get_last_error() in (emu.cudaSuccess, emu.cudaErrorLaunchFailure)  # clears it
  with delta_stats(emu) as st:
    assert k.axpb(grid, block, smem, x, out, 1.0, 1.0) == getattr(emu, error)
  assert not out.any() and st["threads"] == 0 and st["failed_launches"] == 1
  assert emu.peek_last_error() == getattr(emu, error)
  assert emu.get_last_error() == getattr(emu, error)
  assert emu.get_last_error() == emu.cudaSuccess


def test_largest_valid_configuration(emu, k):
  x = np.arange(8, dtype=np.float32)
  out = np.zeros_like(x)
  assert k.axpb((1, 65535, 1), (1, 1, 64), 48 * 1024, x, out, 1.0, 0.0) == emu.cudaSuccess
  np.testing.assert_array_equal(out, x)


@pytest.mark.parametrize(
  "case,message",
  [
    ("early_exit", "exited"),
    ("deadlock", "deadlock"),
    ("bad_mask", "lacks the calling lane"),
  ],
)
def test_synchronisation_misuse_fails_the_launch(emu, k, case, message):
  out = np.zeros(64, np.int32)
  for seed in SEEDS:
    emu.set_seed(seed)
    if case == "early_exit":
      err = k.early_exit_barrier(out, 64, 40)
    elif case == "deadlock":
      err = k.deadlock(out)
    else:
      err = k.bad_mask(out)
    assert err == emu.cudaErrorLaunchFailure
    assert message in emu.last_error_message()
    assert emu.get_last_error() == emu.cudaErrorLaunchFailure
  # The abandoned fibers are recycled: later launches run normally.
  x = np.arange(256 * 3, dtype=np.int32)
  sums = np.zeros(3, np.int32)
  assert k.block_sum(x, sums, True) == emu.cudaSuccess
  np.testing.assert_array_equal(sums, x.reshape(3, 256).sum(1))
  out[:] = 0
  assert k.early_exit_barrier(out, 64, 64) == emu.cudaSuccess  # no divergence: fine
  assert (out == 1).all()


def test_fibers_are_pooled(emu, k):
  out = np.zeros(4096 * 4, np.float32)
  k.spin(out, 16, 256, 2)  # warm the pool
  with delta_stats(emu) as st:
    assert k.spin(out, 16, 256, 2) == emu.cudaSuccess
  assert st["fibers_created"] == 0
  assert st["barriers"] == 16 * 2 and st["suspensions"] == 16 * 256 * 2


def test_memset(emu):
  a = np.ones(10, np.int32)
  assert emu.memset(a, 0) == emu.cudaSuccess
  assert not a.any()


def test_error_strings(emu):
  assert emu.error_string(emu.cudaSuccess) == "no error"
  assert emu.error_string(emu.cudaErrorInvalidConfiguration) == "invalid configuration argument"
  assert emu.error_string(emu.cudaErrorLaunchFailure) == "unspecified launch failure"


def _nvcc():
  for candidate in (shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc", "/usr/local/bin/nvcc"):
    if candidate and os.path.exists(candidate):
      return candidate
  return None


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not installed")
@pytest.mark.parametrize("arch", ["sm_75", "sm_90"])
def test_toy_kernels_compile_with_nvcc(tmp_path, arch):
  """The same kernel source builds against the real CUDA runtime."""
  cmd = [
    _nvcc(),
    "-std=c++17",
    "-x",
    "cu",
    f"-arch={arch}",
    "--ptx",
    "-I",
    str(ROOT / "csrc"),
    str(SRC / "toy_kernels.cu.h"),
    "-o",
    str(tmp_path / "t.ptx"),
  ]
  env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}  # sanitized runs
  r = subprocess.run(cmd, capture_output=True, text=True, env=env)
  assert r.returncode == 0, r.stderr
  ptx = (tmp_path / "t.ptx").read_text()
  # JAX_ROI_CUDA_ARCH follows the target: sm_90 reduces with redux.sync.
  assert ("redux.sync" in ptx) == (arch == "sm_90")
