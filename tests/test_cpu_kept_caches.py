"""roi_align's CPU kernels keep the memory of their per-RoI sample caches
(positions and bilinear weights, 32 bytes a sample) between calls
(core/scratch.h, KeptObjectLease). Built afresh on every call, the caches
got memory that the OS had to fault in and zero again whenever glibc had
given it back in between. For the mask-rcnn mask head's NHWC forward that
was about 3,700 page faults a call, now about 900 (most of them in the
output's first and last 2 MiB, which XLA allocates); 30-36 ms became 27-31
ms on the 2-core dev machine.

Whether glibc gives memory back depends on its heuristics and on which
threads freed what, so the check runs in a child process where glibc maps
every block of 16 KiB or more by itself and unmaps it when freed
(MALLOC_MMAP_THRESHOLD_): there, memory that is not kept is faulted in again
on every call. Observed through the child's minor page faults (getrusage):
once warm, a call faults in far fewer pages than its caches span."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import pytest

pytestmark = pytest.mark.skipif(
  not sys.platform.startswith("linux") or jax.default_backend() != "cpu",
  reason="counts Linux page faults of the CPU kernels (glibc)",
)

# 512 RoIs x 14 x 14 bins x 4 samples: 12.8 MB of caches; one channel, so
# that the output (400 KB) and the gradient are small beside them.
K, P, SR = 512, 14, 2

CHILD = textwrap.dedent(
  f"""
  import json, resource
  import jax, jax.numpy as jnp, numpy as np
  import jax_roi

  K, P, SR = {K}, {P}, {SR}
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((1, 40, 40, 1)).astype(np.float32))
  xy = rng.uniform(0, 30, (K, 2)).astype(np.float32)
  wh = rng.uniform(4, 9, (K, 2)).astype(np.float32)
  rois = jnp.asarray(np.concatenate([np.zeros((K, 1), np.float32), xy, xy + wh], 1))
  op = lambda v: jax_roi.roi_align(v, rois, P, 1.0, SR, True, layout="NHWC")
  # The backward alone, on a cotangent made once: no XLA buffer the size of
  # the output is made afresh in the loop.
  g = jnp.asarray(rng.standard_normal((K, P, P, 1)).astype(np.float32))
  faults = {{}}
  for name, f, args in (
    ("forward", jax.jit(op), (x,)),
    ("backward", jax.jit(lambda v, g: jax.vjp(op, v)[1](g)[0]), (x, g)),
  ):
    for _ in range(3):
      f(*args).block_until_ready()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
      f(*args).block_until_ready()
    faults[name] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
  print(json.dumps(faults))
  """
)


def test_warm_calls_do_not_fault_their_sample_caches_in_again():
  env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="16384", JAX_PLATFORMS="cpu")
  run = subprocess.run(
    [sys.executable, "-P", "-c", CHILD], env=env, capture_output=True, text=True, timeout=300
  )
  assert run.returncode == 0, run.stderr
  faults = json.loads(run.stdout.strip().splitlines()[-1])
  cache_pages = K * P * P * SR * SR * 32 // 4096  # 3,136
  for name, per_call in faults.items():
    assert per_call < cache_pages / 4, (name, per_call, cache_pages)
