"""Multi-device checks, run by tests/test_sharding.py in a subprocess with 8
virtual CPU devices (XLA_FLAGS must be set before jax starts). Prints one
line per check; exits non-zero on the first failure."""

import os
import re
import sys

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P

import jax_roi  # noqa: E402

assert len(jax.devices()) == 8, jax.devices()
COLLECTIVE = re.compile(
  r"\b(all-gather|all-reduce|all-to-all|collective-permute|"
  r"reduce-scatter|collective-broadcast)"
)
mesh = Mesh(np.array(jax.devices()), ("x",))
rng = np.random.default_rng(0)
N, C, H, W, R = 8, 16, 24, 32, 6
x_nchw = rng.standard_normal((N, C, H, W)).astype(np.float32)
xy = rng.uniform(0, 90, (N, R, 2))
boxes = np.concatenate([xy, xy + rng.uniform(4, 60, (N, R, 2))], -1).astype(np.float32)
rows = np.concatenate(
  [np.repeat(np.arange(N.__float__()), R)[:, None], boxes.reshape(-1, 4)], 1
).astype(np.float32)
rows[::5, 0] = -1  # padding rows


def rotated(r):
  """xyxy boxes (or rows) -> oriented [cx, cy, w, h, angle] (or rows), elementwise."""
  x1, y1, x2, y2 = (r[..., i] for i in range(-4, 0))
  box = jnp.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, 40.0 - x1], axis=-1)
  return jnp.concatenate([r[..., :-4], box], axis=-1)


def put(a, spec, m=mesh):
  return jax.device_put(a, NamedSharding(m, spec))


def collectives(fn, *args):
  return sorted(set(COLLECTIVE.findall(jax.jit(fn).lower(*args).compile().as_text())))


def check(name, got, want, tol=1e-5):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    err = float(np.max(np.abs(np.asarray(g, np.float64) - np.asarray(w, np.float64)), initial=0.0))
    if not err <= tol:
      print(f"FAIL {name}: max error {err}")
      sys.exit(1)
  print(f"ok   {name}")


def expect_collectives(name, found, allowed=()):
  extra = [c for c in found if c not in allowed]
  if extra:
    print(f"FAIL {name}: unexpected collectives {extra}")
    sys.exit(1)
  print(f"ok   {name}: collectives {found or 'none'}")


for layout in ("NCHW", "NHWC"):
  x = x_nchw if layout == "NCHW" else np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))
  levels = [x, x[:, :, ::2, ::2] if layout == "NCHW" else x[:, ::2, ::2]]
  ops = {
    "roi_pool": lambda f, r: jax_roi.roi_pool(f, r, 3, spatial_scale=0.25, layout=layout),
    "roi_align": lambda f, r: jax_roi.roi_align(
      f, r, 3, spatial_scale=0.25, sampling_ratio=2, layout=layout
    ),
    "roi_align_max": lambda f, r: jax_roi.roi_align(
      f, r, 3, spatial_scale=0.25, mode="max", layout=layout
    ),
    "multi_scale": lambda f, r: jax_roi.multi_scale_roi_align(
      [f, f[:, :, ::2, ::2] if layout == "NCHW" else f[:, ::2, ::2]],
      r,
      3,
      spatial_scales=(0.25, 0.125),
      canonical_scale=32,
      sampling_ratio=2,
      layout=layout,
    ),
  }
  ops["roi_align_rotated"] = lambda f, r: jax_roi.roi_align_rotated(
    f, rotated(r), 3, 0.25, 2, layout=layout
  )
  ops["prroi_pool"] = lambda f, r: jax_roi.prroi_pool(f, r, 3, 0.25, layout=layout)
  for name, op in ops.items():
    box_grad = name != "roi_pool"
    argnums = (0, 1) if box_grad else (0,)
    grad = jax.grad(lambda f, r: jnp.sum(op(f, r) ** 2), argnums=argnums)
    # Batch-sharded features and (N, R, 4) boxes: shard-local, no collective.
    xs, bs = put(x, P("x")), put(boxes, P("x"))
    check(f"{layout} {name} batch-sharded forward", jax.jit(op)(xs, bs), op(x, boxes))
    check(f"{layout} {name} batch-sharded backward", jax.jit(grad)(xs, bs), grad(x, boxes), 1e-4)
    expect_collectives(f"{layout} {name} batch-sharded forward HLO", collectives(op, xs, bs))
    expect_collectives(f"{layout} {name} batch-sharded backward HLO", collectives(grad, xs, bs))
    # (K, 5) rows with a sharded batch: correct, at the cost of gathering features.
    rs = put(rows, P())
    check(f"{layout} {name} (K, 5) with sharded batch", jax.jit(op)(xs, rs), op(x, rows))
    expect_collectives(
      f"{layout} {name} (K, 5) with sharded batch HLO",
      collectives(op, xs, rs),
      allowed=("all-gather",),
    )
    # RoI-axis sharding, features replicated: no collective in the forward; the
    # feature gradient of replicated features is summed across shards.
    xr, rk = put(x, P()), put(rows, P("x"))
    check(f"{layout} {name} RoI-sharded forward", jax.jit(op)(xr, rk), op(x, rows))
    check(f"{layout} {name} RoI-sharded backward", jax.jit(grad)(xr, rk), grad(x, rows), 1e-4)
    expect_collectives(f"{layout} {name} RoI-sharded forward HLO", collectives(op, xr, rk))
    expect_collectives(
      f"{layout} {name} RoI-sharded backward HLO",
      collectives(grad, xr, rk),
      allowed=("all-reduce",),
    )
    # Channel sharding.
    xc = put(x, P(None, "x") if layout == "NCHW" else P(None, None, None, "x"))
    check(f"{layout} {name} channel-sharded forward", jax.jit(op)(xc, rs), op(x, rows))
    expect_collectives(f"{layout} {name} channel-sharded forward HLO", collectives(op, xc, rs))

# shard_map: the ops inside, on per-device blocks.
op = lambda f, b: jax_roi.roi_align(f, b, 3, spatial_scale=0.25, sampling_ratio=2)
sm = jax.shard_map(op, mesh=mesh, in_specs=(P("x"), P("x")), out_specs=P("x"))
check("shard_map forward", jax.jit(sm)(x_nchw, boxes), op(x_nchw, boxes))
smg = jax.grad(lambda f, b: jnp.sum(sm(f, b) ** 2), argnums=(0, 1))
check(
  "shard_map backward",
  jax.jit(smg)(x_nchw, boxes),
  jax.grad(lambda f, b: jnp.sum(op(f, b) ** 2), argnums=(0, 1))(x_nchw, boxes),
  1e-4,
)
sm_rows = jax.shard_map(
  lambda f, r: jax_roi.roi_pool(f, r, 3, spatial_scale=0.25),
  mesh=mesh,
  in_specs=(P(None, "x"), P()),
  out_specs=P(None, "x"),
)
check(
  "shard_map channel-split with replicated rows",
  jax.jit(sm_rows)(x_nchw, rows),
  jax_roi.roi_pool(x_nchw, rows, 3, spatial_scale=0.25),
)

# Explicit-axes mesh (jax.make_mesh + jax.set_mesh): shard by shard.
explicit = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Explicit,))
with jax.set_mesh(explicit):
  xe, be = put(x_nchw, P("x"), explicit), put(boxes, P("x"), explicit)
  check("explicit mesh forward", jax.jit(op)(xe, be), op(x_nchw, boxes))
  g = jax.grad(lambda f, b: jnp.sum(op(f, b) ** 2), argnums=(0, 1))
  check("explicit mesh backward", jax.jit(g)(xe, be), g(x_nchw, boxes), 1e-4)
  expect_collectives("explicit mesh forward HLO", collectives(op, xe, be))
  expect_collectives("explicit mesh backward HLO", collectives(g, xe, be))
  re_ = put(rows, P(), explicit)
  pool = lambda f, r: jax_roi.roi_pool(f, r, 3, spatial_scale=0.25)
  check("explicit mesh (K, 5)", jax.jit(pool)(xe, re_), pool(x_nchw, rows))

# Data-parallel training step of the Flax layer: the same loss as on one device.
import optax  # noqa: E402
from flax import linen as nn  # noqa: E402

from jax_roi import linen as roi_linen  # noqa: E402


class Head(nn.Module):
  @nn.compact
  def __call__(self, images, boxes):
    f = nn.relu(nn.Conv(8, (3, 3))(images))
    pooled = roi_linen.RoIAlign(
      4, spatial_scale=0.25, sampling_ratio=2, aligned=True, layout="NHWC"
    )(f, boxes)
    return nn.Dense(3)(pooled.reshape(pooled.shape[:2] + (-1,)))


images = np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))[..., :3]
labels = rng.integers(0, 3, (N, R))
model = Head()
params = model.init(jax.random.key(0), images, boxes)
tx = optax.sgd(0.1)


def train_step(params, opt_state, images, boxes, labels):
  def loss_fn(p):
    logits = model.apply(p, images, boxes)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, opt_state = tx.update(grads, opt_state)
  return optax.apply_updates(params, updates), opt_state, loss


step = jax.jit(train_step)
single = [params, tx.init(params)]
sharded = [
  jax.device_put(params, NamedSharding(mesh, P())),
  jax.device_put(tx.init(params), NamedSharding(mesh, P())),
]
batch = (put(images, P("x")), put(boxes, P("x")), put(labels, P("x")))
for i in range(3):
  single[0], single[1], loss_1 = step(*single, images, boxes, labels)
  sharded[0], sharded[1], loss_8 = step(*sharded, *batch)
  check(f"data-parallel training step {i}: loss {float(loss_1):.6f}", loss_8, loss_1, 1e-5)
expect_collectives(
  "data-parallel training step HLO (features, boxes, outputs)",
  [c for c in collectives(train_step, *sharded, *batch) if c != "all-reduce"],
)
print("ALL OK")
