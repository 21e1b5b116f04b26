"""The CPU backward is deterministic: bit-identical gradients run after run
and whatever the number of threads (JAX_ROI_CPU_THREADS splits the work into
different numbers of tasks)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = r"""
import sys
import jax, jax.numpy as jnp, numpy as np
import jax_roi

rng = np.random.default_rng(0)
results = {}
for layout in ("NCHW", "NHWC"):
  shape = (2, 24, 30, 34) if layout == "NCHW" else (2, 30, 34, 24)
  x = rng.standard_normal(shape).astype(np.float32)
  levels = [x, x[:, :, ::2, ::2] if layout == "NCHW" else x[:, ::2, ::2, :]]
  k = 200
  xy = rng.uniform(-10, 120, (k, 2))
  wh = rng.uniform(1, 130, (k, 2))
  rois = np.concatenate([np.zeros((k, 1)), xy, xy + wh], 1).astype(np.float32)
  rois[::2, 0] = 1
  ops = {
      "roi_pool": lambda f, r: jax_roi.roi_pool(f, r, 5, spatial_scale=0.25, layout=layout),
      "roi_align": lambda f, r: jax_roi.roi_align(f, r, 5, spatial_scale=0.25,
                                                  sampling_ratio=2, layout=layout),
      "roi_align_adaptive": lambda f, r: jax_roi.roi_align(
          f, r, 5, spatial_scale=0.25, sampling_ratio=0, aligned=True, layout=layout),
      "roi_align_max": lambda f, r: jax_roi.roi_align(f, r, 5, spatial_scale=0.25,
                                                      sampling_ratio=2, mode="max",
                                                      layout=layout),
  }
  for name, op in ops.items():
    g = jax.grad(lambda f, r: jnp.sum(jnp.sin(op(f, r))), argnums=(0, 1))(x, rois)
    results[f"{name}_{layout}_features"] = np.asarray(g[0])
    if name != "roi_pool":
      results[f"{name}_{layout}_rois"] = np.asarray(g[1])
  ms = lambda fs, r: jnp.sum(jnp.sin(jax_roi.multi_scale_roi_align(
      fs, r, 5, spatial_scales=(0.25, 0.125), sampling_ratio=2, canonical_scale=16,
      layout=layout)))
  g = jax.grad(ms, argnums=(0, 1))(levels, rois)
  results[f"multi_{layout}_level0"] = np.asarray(g[0][0])
  results[f"multi_{layout}_level1"] = np.asarray(g[0][1])
  results[f"multi_{layout}_rois"] = np.asarray(g[1])
np.savez(sys.argv[1], **results)
"""


def _run(tmp_path, threads):
  out = tmp_path / f"grads_{threads}.npz"
  env = dict(os.environ)
  if threads is None:
    env.pop("JAX_ROI_CPU_THREADS", None)
  else:
    env["JAX_ROI_CPU_THREADS"] = str(threads)
  env["JAX_PLATFORMS"] = "cpu"
  script = tmp_path / "grads.py"
  script.write_text(SCRIPT)
  # -P: never import the source tree instead of the installed package.
  subprocess.run([sys.executable, "-P", str(script), str(out)], check=True, env=env, cwd=tmp_path)
  with np.load(out) as d:
    return {k: d[k] for k in d.files}


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="subprocess environment")
def test_gradients_bit_identical_across_runs_and_thread_counts(tmp_path):
  reference = _run(tmp_path, None)
  again = _run(tmp_path, None)
  for threads in (1, 3, 16):
    other = _run(tmp_path, threads)
    assert other.keys() == reference.keys()
    for key in reference:
      np.testing.assert_array_equal(other[key], reference[key], err_msg=f"{key} threads={threads}")
  for key in reference:
    np.testing.assert_array_equal(again[key], reference[key], err_msg=key)
    assert np.isfinite(reference[key]).all() and np.abs(reference[key]).sum() > 0, key


# ---------------------------------------------------------------------------
# deterministic=True: the deterministic backward targets (their CUDA kernels
# are checked bit for bit against the CPU under the emulation,
# tests/test_cuda_emulation.py; here the public switch and its CPU side).
# ---------------------------------------------------------------------------

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import jax_roi  # noqa: E402

DETERMINISTIC_OPS = {
  "roi_pool": (
    "jax_roi_roi_pool_bwd",
    lambda x, r, **kw: jax_roi.roi_pool(x, r, 3, spatial_scale=0.5, **kw),
  ),
  "roi_align": (
    "jax_roi_roi_align_bwd",
    lambda x, r, **kw: jax_roi.roi_align(x, r, 3, spatial_scale=0.5, sampling_ratio=2, **kw),
  ),
  "roi_align_max": (
    "jax_roi_roi_align_bwd",
    lambda x, r, **kw: jax_roi.roi_align(
      x, r, 3, spatial_scale=0.5, sampling_ratio=2, mode="max", **kw
    ),
  ),
  "multi_scale": (
    "jax_roi_multi_scale_roi_align_bwd",
    lambda x, r, **kw: jax_roi.multi_scale_roi_align(
      [x, x[:, :, ::2, ::2]], r, 3, spatial_scales=(0.5, 0.25), canonical_scale=8, **kw
    ),
  ),
}


def _det_inputs():
  rng = np.random.default_rng(5)
  x = rng.standard_normal((2, 3, 12, 14)).astype(np.float32)
  xy = rng.uniform(-2, 20, (9, 2))
  rois = np.concatenate(
    [rng.integers(0, 2, (9, 1)), xy, xy + rng.uniform(1, 12, (9, 2))], 1
  ).astype(np.float32)
  return x, rois


def _backward_targets(op, x, rois, **kw):
  text = jax.jit(jax.grad(lambda x: jnp.sum(op(x, rois, **kw) ** 2))).lower(x).as_text()
  return text


@pytest.mark.parametrize("name", list(DETERMINISTIC_OPS))
def test_deterministic_switch_picks_the_deterministic_backward(name, monkeypatch):
  target, op = DETERMINISTIC_OPS[name]
  x, rois = _det_inputs()
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  # roi_pool's CPU backward finds the winners again (no argmax saved).
  plain = f"{target}_from_features_v1" if name == "roi_pool" else f"{target}_v1"
  assert plain in _backward_targets(op, x, rois)
  assert f"{target}_deterministic_v1" not in _backward_targets(op, x, rois)
  assert f"{target}_deterministic_v1" in _backward_targets(op, x, rois, deterministic=True)
  assert f"{target}_deterministic_v1" not in _backward_targets(op, x, rois, deterministic=False)
  # None follows XLA's switch in the environment, read at trace time.
  monkeypatch.setenv(
    "XLA_FLAGS", "--xla_cpu_use_thunk_runtime=true --xla_gpu_deterministic_ops=true"
  )
  assert f"{target}_deterministic_v1" in _backward_targets(op, x, rois)
  assert f"{target}_deterministic_v1" not in _backward_targets(op, x, rois, deterministic=False)
  monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_deterministic_ops=false")
  assert f"{target}_deterministic_v1" not in _backward_targets(op, x, rois)


@pytest.mark.parametrize("name", list(DETERMINISTIC_OPS))
def test_deterministic_backward_equals_the_cpu_backward(name):
  """On the CPU both targets run the one (deterministic) CPU backward: the
  same bits; forward and box gradient are unchanged."""
  _, op = DETERMINISTIC_OPS[name]
  x, rois = _det_inputs()
  cot = np.random.default_rng(1).standard_normal(jax.eval_shape(op, x, rois).shape)

  def grads(det):
    out, vjp = jax.vjp(lambda x, r: op(x, r, deterministic=det), x, rois)
    return (out,) + vjp(cot.astype(np.float32))

  for a, b in zip(grads(True), grads(False)):
    np.testing.assert_array_equal(a, b)
  assert np.abs(np.asarray(grads(True)[1])).sum() > 0


@pytest.mark.parametrize("bad", ["yes", 1, np.float32(1.0)])
def test_deterministic_must_be_a_bool(bad):
  x, rois = _det_inputs()
  with pytest.raises(TypeError, match="deterministic"):
    jax_roi.roi_align(x, rois, 3, deterministic=bad)


def test_layers_take_deterministic():
  from jax_roi import linen

  x, rois = _det_inputs()
  layer = linen.RoIAlign(3, spatial_scale=0.5, sampling_ratio=2, layout="NCHW", deterministic=True)
  text = jax.jit(jax.grad(lambda x: jnp.sum(layer.apply({}, x, rois) ** 2))).lower(x).as_text()
  assert "jax_roi_roi_align_bwd_deterministic_v1" in text
