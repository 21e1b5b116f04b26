"""The CPU backward is deterministic: bit-identical gradients run after run
and whatever the number of threads (JAX_ROI_CPU_THREADS splits the work into
different numbers of tasks)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = r'''
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
'''


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
  subprocess.run([sys.executable, "-P", str(script), str(out)], check=True, env=env,
                 cwd=tmp_path)
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
