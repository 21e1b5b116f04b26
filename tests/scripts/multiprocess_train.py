"""One process of a 2-process jax.distributed job on localhost (run by
tests/test_multiprocess.py): CPU collectives through gloo, 4 devices per
process, a jitted training step through roi_align and
multi_scale_roi_align with the batch sharded over all 8 devices. Each
process checks its own shards (and the replicated loss and parameters)
against the same step run on one device, without jax.distributed's mesh.

  python -P multiprocess_train.py PROCESS_ID NUM_PROCESSES PORT AXIS_TYPE
"""

import os
import re
import sys

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P

import jax_roi  # noqa: E402

pid, nproc, port, axis_type = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(
  f"127.0.0.1:{port}", num_processes=nproc, process_id=pid, initialization_timeout=120
)
assert jax.process_count() == nproc and jax.local_device_count() == 4, (
  jax.process_count(),
  jax.local_devices(),
)
GATHERING = re.compile(r"\b(all-gather|all-to-all|collective-permute)\b")

# The whole batch, the same in every process (seeded); each process feeds its
# own slice of it.
N, H, W, C_IN, C, R = 8, 16, 20, 3, 4, 5
rng = np.random.default_rng(0)
images = rng.standard_normal((N, H, W, C_IN)).astype(np.float32)
xy = rng.uniform(0, 60, (N, R, 2))
boxes = np.concatenate([xy, xy + rng.uniform(4, 40, (N, R, 2))], -1).astype(np.float32)
targets = rng.standard_normal((N, R, 2)).astype(np.float32)
params = {
  "conv": 0.3 * rng.standard_normal((3, 3, C_IN, C)).astype(np.float32),
  "dense": 0.1 * rng.standard_normal((2 * C * 3 * 3, 2)).astype(np.float32),
}


def forward(params, images, boxes):
  f = jax.lax.conv_general_dilated(
    images, params["conv"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  f = jax.nn.relu(f)
  coarse = jax.lax.reduce_window(f, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4
  a = jax_roi.roi_align(
    f, boxes, 3, spatial_scale=0.25, sampling_ratio=2, aligned=True, layout="NHWC"
  )
  m = jax_roi.multi_scale_roi_align(
    [f, coarse],
    boxes,
    3,
    spatial_scales=(0.25, 0.125),
    canonical_scale=32,
    sampling_ratio=2,
    layout="NHWC",
  )
  pooled = jnp.concatenate([a, m], -1)  # (N, R, 3, 3, 2C)
  return pooled, pooled.reshape(N, R, -1) @ params["dense"]


def train_step(params, images, boxes, targets):
  def loss_fn(p):
    pooled, out = forward(p, images, boxes)
    return jnp.mean((out - targets) ** 2), pooled

  (loss, pooled), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  new = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
  return new, loss, pooled


# The reference: the same step on one (local) device, no sharding.
local = jax.local_devices()[0]
ref_params, ref_loss, ref_pooled = jax.jit(train_step)(
  *jax.device_put((params, images, boxes, targets), local)
)
ref_params, ref_pooled = jax.tree.map(np.asarray, (ref_params, ref_pooled))

# The distributed step: the batch over all 8 devices of both processes.
mesh = jax.make_mesh(
  (jax.device_count(),),
  ("data",),
  axis_types=(AxisType.Explicit if axis_type == "explicit" else AxisType.Auto,),
)
batch = NamedSharding(mesh, P("data"))
replicated = NamedSharding(mesh, P())
per_process = N // nproc
mine = slice(pid * per_process, (pid + 1) * per_process)
g_images, g_boxes, g_targets = (
  jax.make_array_from_process_local_data(batch, a[mine]) for a in (images, boxes, targets)
)
g_params = jax.tree.map(lambda a: jax.make_array_from_process_local_data(replicated, a), params)
step = jax.jit(train_step, out_shardings=(replicated, replicated, batch))
for i in range(2):  # two steps: the updated parameters feed the next
  new_params, loss, pooled = step(g_params, g_images, g_boxes, g_targets)
  if i == 0:
    hlo = step.lower(g_params, g_images, g_boxes, g_targets).compile().as_text()
    found = sorted(set(GATHERING.findall(hlo)))
    assert not found, f"unexpected collectives: {found}"
    # Each process holds its 4 shards of the pooled features: equal to the
    # reference rows of its images.
    assert len(pooled.addressable_shards) == 4
    for shard in pooled.addressable_shards:
      np.testing.assert_allclose(
        np.asarray(shard.data),
        ref_pooled[shard.index],
        rtol=1e-5,
        atol=1e-6,
        err_msg=f"pooled shard {shard.index}",
      )
      assert shard.index[0].stop - shard.index[0].start == 1
      assert mine.start <= shard.index[0].start < mine.stop
    np.testing.assert_allclose(float(loss.addressable_data(0)), float(ref_loss), rtol=1e-5)
    for name in params:
      for shard in new_params[name].addressable_shards:
        np.testing.assert_allclose(
          np.asarray(shard.data), ref_params[name], rtol=1e-4, atol=1e-6, err_msg=f"updated {name}"
        )
  g_params = new_params
print(
  f"process {pid}: OK ({axis_type} mesh, loss {float(loss.addressable_data(0)):.6f})", flush=True
)
jax.distributed.shutdown()
