"""Runs cases of the sharding matrix (tests/test_sharding_matrix.py) on 8
virtual CPU devices: XLA_FLAGS must be set before jax starts, so the tests
talk to this process over a pipe. Reads one JSON case per line on stdin,
writes one JSON result per line on stdout:

  case:   {"op", "axes": "explicit"|"auto", "context": "set_mesh"|"none",
           "placement": "device_put"|"jit"|"shard_map",
           "sharding": "batch"|"roi"|"channel", "fmt": "indexed"|"batched",
           "layout": "NCHW"|"NHWC"}
  result: {"ok": bool, "error": str, "collectives": {"forward": [...], "backward": [...]}}

Each case runs the op forward and its gradient (features and boxes) on
sharded operands, compares them with the op on one device, and lists the
collectives of both compiled HLO modules.
"""

import contextlib
import json
import os
import pathlib
import re
import sys
import traceback

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # tests/: helpers

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from helpers import MATRIX_OPS, nchw_to  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P

N, C, H, W, R = 8, 8, 12, 10, 8
DEVICES = 8
COLLECTIVE = re.compile(
  r"\b(all-gather|all-reduce|all-to-all|collective-permute|"
  r"reduce-scatter|collective-broadcast)\b"
)
MESHES = {
  name: jax.make_mesh((DEVICES,), ("x",), axis_types=(t,))
  for name, t in (("explicit", AxisType.Explicit), ("auto", AxisType.Auto))
}

rng = np.random.default_rng(16)
X = rng.standard_normal((N, C, H, W)).astype(np.float32)
# Position-sensitive ops read blocks of PH * PW = 3 input channels (the
# helpers' (3, 1) / (1, 3) bins): 3 * C input channels, C output channels,
# so that channel sharding gives each device whole blocks.
X_PS = rng.standard_normal((N, 3 * C, H, W)).astype(np.float32)


def features(op):
  return X_PS if op.startswith("ps_") else X


xy = rng.uniform(-2, 20, (N, R, 2))
BOXES = np.concatenate([xy, xy + rng.uniform(1, 14, (N, R, 2))], -1).astype(np.float32)
# (K, 5) rows grouped by image (R rows per image, in image order, one image
# per device): a shard_map over the rows then sees its own image's rows.
INDEX = np.repeat(np.arange(N, dtype=np.float32), R)
INDEX[::7] = -1  # padding rows
ROWS = np.concatenate([INDEX[:, None], BOXES.reshape(-1, 4)], 1)
LOCAL_ROWS = ROWS.copy()  # shard_map: image indices local to each shard
LOCAL_ROWS[:, 0] = np.where(INDEX >= 0, INDEX % (N // DEVICES), -1)


def loss(op, layout):
  return lambda f, r: jnp.sum(jnp.sin(op(f, r, layout=layout)))


_oracles = {}


def oracle(case):
  """The op on one device (no mesh): forward, gradients."""
  key = (case["op"], case["fmt"], case["layout"])
  if key not in _oracles:
    op, layout = MATRIX_OPS[case["op"]], case["layout"]
    x = nchw_to(features(case["op"]), layout)
    r = ROWS if case["fmt"] == "indexed" else BOXES
    fwd = jax.jit(lambda f, r: op(f, r, layout=layout))(x, r)
    grads = jax.jit(jax.grad(loss(op, layout), argnums=(0, 1)))(x, r)
    _oracles[key] = (np.asarray(fwd), [np.asarray(g) for g in grads])
  return _oracles[key]


def specs(case):
  """(features, rois, output) PartitionSpecs of the case."""
  sharding, fmt, layout = case["sharding"], case["fmt"], case["layout"]
  indexed = fmt == "indexed"
  c_feat = 1 if layout == "NCHW" else 3
  c_out = (0 if indexed else 1) + (1 if layout == "NCHW" else 3)
  on = lambda dim: P(*([None] * dim + ["x"]))
  if sharding == "batch":
    if indexed:
      # rows name their image by value: replicated, except under shard_map,
      # where each shard gets the rows of its own images (local indices).
      rows = P("x") if case["placement"] == "shard_map" else P()
      return P("x"), rows, rows
    return P("x"), P("x"), P("x")
  if sharding == "roi":
    return P(), on(0 if indexed else 1), on(0 if indexed else 1)
  return on(c_feat), P(), on(c_out)


def collectives(compiled_text):
  return sorted(set(COLLECTIVE.findall(compiled_text)))


def run(case):
  mesh = MESHES[case["axes"]]
  op, layout = MATRIX_OPS[case["op"]], case["layout"]
  f_spec, r_spec, o_spec = specs(case)
  fs, rs, os_ = (NamedSharding(mesh, s) for s in (f_spec, r_spec, o_spec))
  x = nchw_to(features(case["op"]), layout)
  indexed = case["fmt"] == "indexed"
  r = ROWS if indexed else BOXES
  fwd = lambda f, r: op(f, r, layout=layout)
  placement = case["placement"]
  context = jax.set_mesh(mesh) if case["context"] == "set_mesh" else contextlib.nullcontext()
  with context:
    if placement == "device_put":
      args = (jax.device_put(x, fs), jax.device_put(r, rs))
      f_fwd, f_bwd = jax.jit(fwd), jax.jit(jax.grad(loss(op, layout), argnums=(0, 1)))
    elif placement == "jit":
      # numpy arguments, placed by in_shardings; but under jax.set_mesh with
      # Explicit axes jax types numpy arguments as replicated whatever
      # in_shardings say (then even jnp.sin all-gathers its result): there,
      # arguments placed with those shardings, as users of explicit meshes pass.
      explicit_context = case["axes"] == "explicit" and case["context"] == "set_mesh"
      args = (jax.device_put(x, fs), jax.device_put(r, rs)) if explicit_context else (x, r)
      f_fwd = jax.jit(fwd, in_shardings=(fs, rs), out_shardings=os_)
      f_bwd = jax.jit(
        jax.grad(loss(op, layout), argnums=(0, 1)), in_shardings=(fs, rs), out_shardings=(fs, rs)
      )
    else:  # shard_map over device_put operands (an Explicit mesh requires them placed)
      if indexed and case["sharding"] == "batch":
        r = LOCAL_ROWS
      args = (jax.device_put(x, fs), jax.device_put(r, rs))
      sm = jax.shard_map(fwd, mesh=mesh, in_specs=(f_spec, r_spec), out_specs=o_spec)
      f_fwd = jax.jit(sm)
      f_bwd = jax.jit(jax.grad(lambda f, r: jnp.sum(jnp.sin(sm(f, r))), argnums=(0, 1)))
    out = f_fwd(*args)
    grads = f_bwd(*args)
    found = {
      "forward": collectives(f_fwd.lower(*args).compile().as_text()),
      "backward": collectives(f_bwd.lower(*args).compile().as_text()),
    }
    shardings = {"forward": str(out.sharding), "feature_grad": str(grads[0].sharding)}
  want_out, want_grads = oracle(case)
  np.testing.assert_allclose(np.asarray(out), want_out, rtol=1e-6, atol=1e-6, err_msg="forward")
  for name, g, w in zip(("feature", "box"), grads, want_grads):
    np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-5, err_msg=f"{name} gradient")
  return found, shardings


def main():
  assert len(jax.devices()) == DEVICES, jax.devices()
  print(json.dumps({"ready": True}), flush=True)
  for line in sys.stdin:
    case = json.loads(line)
    try:
      found, shardings = run(case)
      result = {"ok": True, "error": "", "collectives": found, "shardings": shardings}
    except Exception:  # reported to the test, which fails with it
      result = {"ok": False, "error": traceback.format_exc()[-4000:], "collectives": {}}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
