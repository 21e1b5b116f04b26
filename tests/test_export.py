"""jax.export: jitted functions using each op (forward and gradients)
serialize to StableHLO for cpu and cuda, and a fresh process that imports
jax_roi deserializes and runs them with the same results."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import MATRIX_OPS, random_case

import jax_roi

pytest.importorskip("flatbuffers")  # jax.export serialization needs it

RUNNER = r"""
import sys, pathlib
import numpy as np, jax
import jax_roi  # registers the FFI targets
d = pathlib.Path(sys.argv[1])
with np.load(d / "io.npz") as io:
  io = {k: io[k] for k in io.files}
for path in sorted(d.glob("*.bin")):
  exported = jax.export.deserialize(bytearray(path.read_bytes()))
  name = path.stem
  leaves = [io[f"{name}_arg{i}"] for i in range(exported.in_tree.num_leaves)]
  args, kwargs = jax.tree.unflatten(exported.in_tree, leaves)
  outs = jax.tree.leaves(exported.call(*args, **kwargs))
  for i, o in enumerate(outs):
    if name.endswith("_grad") and sys.argv[2] == "gpu":
      # expected values from the GPU, whose backward sums with atomics
      np.testing.assert_allclose(np.asarray(o), io[f"{name}_out{i}"], rtol=1e-5,
                                 atol=1e-6 * np.abs(io[f"{name}_out{i}"]).max(), err_msg=name)
    else:
      np.testing.assert_array_equal(np.asarray(o), io[f"{name}_out{i}"], err_msg=name)
  print("ok", name, exported.platforms)
print("ALL OK")
"""


def _cases():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 4, 16, 20)).astype(np.float32)
  xy = rng.uniform(0, 40, (2, 5, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(4, 30, (2, 5, 2))], -1).astype(np.float32)
  levels = [x, x[:, :, ::2, ::2]]
  ops = {
    "roi_pool": lambda f, b: jax_roi.roi_pool(f, b, 3, spatial_scale=0.5),
    "roi_align": lambda f, b: jax_roi.roi_align(
      f, b, 3, spatial_scale=0.5, sampling_ratio=2, aligned=True
    ),
    "roi_align_max": lambda f, b: jax_roi.roi_align(f, b, 3, spatial_scale=0.5, mode="max"),
    "multi_scale": lambda fs, b: jax_roi.multi_scale_roi_align(
      list(fs), b, 3, spatial_scales=(0.5, 0.25), canonical_scale=16
    ),
  }
  for name, op in ops.items():
    feats = tuple(levels) if name == "multi_scale" else x
    yield name, op, (feats, boxes)
    argnums = 0 if name == "roi_pool" else (0, 1)
    yield (
      f"{name}_grad",
      jax.grad(lambda f, b: jnp.sum(jnp.sin(op(f, b))), argnums=argnums),
      (feats, boxes),
    )


@pytest.mark.slow  # (~17 s; tools/gpu_check.sh runs it on GPUs by name)
def test_export_round_trip_in_a_fresh_process(tmp_path):
  io = {}
  for name, fn, args in _cases():
    exported = jax.export.export(
      jax.jit(fn), platforms=("cpu", "cuda"), disabled_checks=jax_roi.export_safety_checks()
    )(*args)
    assert exported.platforms == ("cpu", "cuda")
    text = exported.mlir_module()
    assert "jax_roi_" in text and "_v1" in text  # versioned targets
    (tmp_path / f"{name}.bin").write_bytes(exported.serialize())
    for i, a in enumerate(jax.tree.leaves(args)):
      io[f"{name}_arg{i}"] = np.asarray(a)
    for i, o in enumerate(jax.tree.leaves(jax.jit(fn)(*args))):
      io[f"{name}_out{i}"] = np.asarray(o)
  np.savez(tmp_path / "io.npz", **io)
  runner = tmp_path / "runner.py"
  runner.write_text(RUNNER)
  # The runner replays on the CPU what was computed on the default backend.
  proc = subprocess.run(
    [sys.executable, "-P", str(runner), str(tmp_path), jax.default_backend()],
    capture_output=True,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    timeout=600,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert proc.stdout.count("ok ") == 8 and "ALL OK" in proc.stdout


def test_export_without_safety_checks_is_refused():
  x = np.zeros((1, 2, 4, 4), np.float32)
  b = np.zeros((1, 1, 4), np.float32)
  with pytest.raises(ValueError, match="custom calls"):
    jax.export.export(jax.jit(lambda f, r: jax_roi.roi_align(f, r, 2)))(x, b)


def test_safety_checks_cover_every_target():
  names = {str(c) for c in jax_roi.export_safety_checks()}
  # + ps_roi_pool/ps_roi_align, roi_align_rotated, prroi_pool, the 3 deterministic backwards,
  # roi_pool's backward from the features
  assert len(names) == 8 + 5 + 3 + 3 + 3 + 1
  for op in (
    "roi_pool_fwd",
    "roi_pool_bwd",
    "roi_pool_bwd_from_features",
    "roi_align_fwd",
    "roi_align_bwd",
    "roi_pool_bwd_deterministic",
    "roi_align_bwd_deterministic",
    "multi_scale_roi_align_bwd_deterministic",
    "roi_align_box_grad",
    "multi_scale_roi_align_fwd",
    "multi_scale_roi_align_bwd",
    "multi_scale_roi_align_box_grad",
    "ps_roi_pool_fwd",
    "ps_roi_pool_bwd",
    "ps_roi_align_fwd",
    "ps_roi_align_bwd",
    "ps_roi_align_box_grad",
    "roi_align_rotated_fwd",
    "roi_align_rotated_bwd",
    "roi_align_rotated_box_grad",
    "prroi_pool_fwd",
    "prroi_pool_bwd",
    "prroi_pool_box_grad",
  ):
    assert any(f"jax_roi_{op}_v1" in n for n in names), op


def _export_compat():
  """tests/scripts/export_compat.py, as a module."""
  import importlib.util

  path = pathlib.Path(__file__).parent / "scripts" / "export_compat.py"
  spec = importlib.util.spec_from_file_location("export_compat", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


FIXTURES = pathlib.Path(__file__).parent / "data" / "export_v1"


def test_checked_in_artifacts_keep_loading_and_give_the_same_results():
  """Artifacts serialized once (jax 0.10.2, jax_roi 0.1.0: tests/data/
  README.md) with the _v1 targets: every later jax and jax_roi must load
  and run them with the same results (README "Export")."""
  checked = _export_compat().check(FIXTURES)
  ops = ("roi_pool", "roi_align", "roi_align_max", "multi_scale")
  assert sorted(checked) == sorted(f"{op}_{kind}" for op in ops for kind in ("fwd", "grad", "poly"))


@pytest.mark.parametrize("op", list(MATRIX_OPS))
@pytest.mark.parametrize("fmt", ["indexed", "batched"])
def test_shape_polymorphic_export(op, fmt, assert_same_gradient):
  """One artifact, symbolic batch, RoI count and feature-map size, serves
  every shape (jax.export dimension variables are >= 1): forward and
  gradients equal the op at each shape."""
  fn = lambda x, r: MATRIX_OPS[op](x, r, layout="NHWC")
  grad = jax.grad(lambda x, r: jnp.sum(jnp.sin(fn(x, r))), argnums=(0, 1))
  dims = jax.export.symbolic_shape("n, h, w, 3, k" if fmt == "indexed" else "n, h, w, 3, r")
  rois_shape = (dims[4], 5) if fmt == "indexed" else (dims[0], dims[4], 4)
  specs = (jax.ShapeDtypeStruct(dims[:4], np.float32), jax.ShapeDtypeStruct(rois_shape, np.float32))
  for f in (fn, grad):
    exported = jax.export.export(
      jax.jit(f), platforms=("cpu", "cuda"), disabled_checks=jax_roi.export_safety_checks()
    )(*specs)
    exported = jax.export.deserialize(exported.serialize())
    assert "n" in str(exported.in_avals[0]) and "h" in str(exported.in_avals[0])
    for seed, (n, h, w, k) in enumerate([(1, 7, 12, 1), (3, 16, 9, 6)]):
      x, rois = random_case(seed, "NHWC", fmt, np.float32, np.float32, n=n, c=3, h=h, w=w, k=k)
      got, want = exported.call(x, rois), jax.jit(f)(x, rois)
      for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert g.shape == e.shape
        assert_same_gradient(g, e, err_msg=f"{f.__name__} n={n} h={h} w={w} k={k}")


def test_symbolic_shapes_with_the_pure_jax_version_are_refused():
  """implementation="xla" picks its algorithm from concrete shapes."""
  dims = jax.export.symbolic_shape("n, 3, 8, 8, n, r, 4")
  specs = (jax.ShapeDtypeStruct(dims[:4], np.float32), jax.ShapeDtypeStruct(dims[4:], np.float32))
  with pytest.raises(ValueError, match="symbolic"):
    jax.export.export(jax.jit(lambda x, r: jax_roi.roi_align(x, r, 2, implementation="xla")))(
      *specs
    )
