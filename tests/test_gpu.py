"""On a GPU backend only (marker `gpu`; skipped elsewhere by conftest.py):
the CUDA kernels run, by default, and agree with the CPU kernels. The wide
GPU-vs-CPU comparison is tools/gpu_compare.py (run by tools/gpu_check.sh)."""

from __future__ import annotations

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import OPS, indexed_rois, random_boxes, random_features

pytestmark = pytest.mark.gpu


def test_module_has_machine_code_for_this_gpu():
  """No "no kernel image is available": SASS of this GPU's architecture,
  or of an older minor revision of its major version."""
  import jax_roi._jax_roi as ext

  assert ext.with_cuda, "jax_roi was built without CUDA kernels"
  tool = pathlib.Path(__file__).resolve().parents[1] / "tools" / "fatbin_archs.py"
  if not tool.exists():
    pytest.skip("tools/fatbin_archs.py not found")
  spec = importlib.util.spec_from_file_location("fatbin_archs", tool)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  sass, ptx = module.archs(ext.__file__)
  cc = getattr(jax.devices()[0], "compute_capability", None)
  if cc is None:
    pytest.skip("the device reports no compute capability")
  major, minor = (int(v) for v in str(cc).split("."))
  arch = 10 * major + minor
  assert any(a // 10 == major and a <= arch for a in sass), (
    f"no SASS for sm_{arch} in {sass} (PTX {ptx}): the driver must JIT or fail"
  )


@pytest.mark.parametrize("op", list(OPS))
def test_default_implementation_is_the_cuda_kernel(op):
  x = random_features(np.random.default_rng(0), 2, 3, 9, 10)
  rois = indexed_rois(
    np.random.default_rng(1), random_boxes(np.random.default_rng(2), 5, 9, 10, 0.5), 2
  ).astype(np.float32)
  text = jax.jit(lambda x, r: OPS[op](x, r)).lower(x, rois).compile().as_text()
  assert 'custom_call_target="jax_roi_' in text


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_gpu_matches_cpu(op, layout):
  """Forward identical (no FMA contraction on either side); feature and
  box gradients equal to float rounding (atomics on the GPU)."""
  rng = np.random.default_rng(3)
  x = random_features(rng, 2, 6, 11, 13, layout)  # 6: divisible by the ps ops' 3 bins
  rois = indexed_rois(rng, random_boxes(rng, 24, 11, 13, 0.5, hostile=True), 2, padding=0.2).astype(
    np.float32
  )
  loss = lambda x, r: jnp.sum(jnp.sin(OPS[op](x, r, layout=layout)))
  results = []
  for device in (jax.devices()[0], jax.devices("cpu")[0]):
    xd, rd = jax.device_put((x, rois), device)
    out = OPS[op](xd, rd, layout=layout)
    grads = jax.grad(loss, argnums=(0, 1))(xd, rd)
    results.append([np.asarray(out)] + [np.asarray(g) for g in grads])
  (out_g, gx_g, gr_g), (out_c, gx_c, gr_c) = results
  np.testing.assert_array_equal(out_g, out_c)
  np.testing.assert_allclose(gx_g, gx_c, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.nan_to_num(gr_g), np.nan_to_num(gr_c), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", ["roi_pool", "roi_align", "roi_align_max"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_deterministic_backward_gives_the_cpu_bits(op, layout):
  """deterministic=True: the GPU feature gradient equals the CPU's bit for
  bit, run after run (the same summation order, no atomics)."""
  rng = np.random.default_rng(4)
  x = random_features(rng, 2, 37, 23, 29, layout)
  rois = indexed_rois(
    rng, random_boxes(rng, 150, 23, 29, 0.5, hostile=True), 2, padding=0.2
  ).astype(np.float32)
  cot = rng.standard_normal(
    jax.eval_shape(lambda x, r: OPS[op](x, r, layout=layout), x, rois).shape
  )
  cot = cot.astype(np.float32)
  grads = []
  for device in (jax.devices()[0], jax.devices()[0], jax.devices("cpu")[0]):
    xd, rd, cd = jax.device_put((x, rois, cot), device)
    f = jax.jit(
      lambda x, r, c: jax.vjp(lambda x: OPS[op](x, r, layout=layout, deterministic=True), x)[1](c)[
        0
      ]
    )
    grads.append(np.asarray(f(xd, rd, cd)))
  assert np.abs(grads[2]).sum() > 0
  np.testing.assert_array_equal(grads[0], grads[1])
  np.testing.assert_array_equal(grads[0], grads[2])
