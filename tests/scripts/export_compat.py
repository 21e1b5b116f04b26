"""jax.export artifacts of every op (helpers.MATRIX_OPS), forward and
gradient, that must keep loading and giving the same results across jax
and jax_roi versions.

  python -P tests/scripts/export_compat.py write DIR   # serialize, with expected results
  python -P tests/scripts/export_compat.py check DIR   # deserialize, run, compare
  python -P tests/scripts/export_compat.py check-reverse DIR
      # artifacts of a NEWER jax: jax guarantees an older jax can read them
      # only within weeks (StableHLO's forward-compatibility window), so a
      # refusal to deserialize is reported and passes; once deserialized,
      # they must run and give the same results.

Per op, three artifacts:
  <op>_fwd    the op on (K, 5) rows (fixed shapes)
  <op>_grad   gradients w.r.t. features and (N, R, 4) boxes (fixed shapes)
  <op>_poly   the op with symbolic batch, RoI count and feature-map size
              (jax.export shape polymorphism), run at two shapes

.ci/run writes with the oldest supported jax and checks with the newest
(and the reverse, where the older jax can read the newer serialization);
tests/data/export_v1/ holds artifacts written once with today's targets,
checked by tests/test_export.py in every environment.
"""

from __future__ import annotations

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # tests/: helpers

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from helpers import MATRIX_OPS  # noqa: E402

import jax_roi  # noqa: E402  (registers the FFI targets)

C = 3
FIXED = (2, 4, 10, 12)  # n, r, h, w
POLY_SHAPES = ((1, 3, 8, 14), (3, 5, 13, 9))  # (n, r, h, w) the _poly artifacts run at


def _inputs(seed, n, r, h, w):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, C, h, w)).astype(np.float32)
  xy = rng.uniform(-2, 2 * max(h, w), (n, r, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(1, 2 * max(h, w), (n, r, 2))], -1)
  boxes = boxes.astype(np.float32)
  index = np.repeat(np.arange(n, dtype=np.float32), r)
  rng.shuffle(index)
  rows = np.concatenate([index[:, None], boxes.reshape(-1, 4)], 1)
  return x, boxes, rows


def _functions(op):
  fwd = lambda x, r: op(x, r)
  grad = jax.grad(lambda x, r: jnp.sum(jnp.sin(op(x, r))), argnums=(0, 1))
  return fwd, grad


def write(out: pathlib.Path):
  out.mkdir(parents=True, exist_ok=True)
  data, manifest = {}, {"jax": jax.__version__, "jax_roi": jax_roi.__version__, "artifacts": {}}
  checks = jax_roi.export_safety_checks()
  for i, (name, op) in enumerate(MATRIX_OPS.items()):
    fwd, grad = _functions(op)
    x, boxes, rows = _inputs(i, *FIXED)
    poly = jax.export.symbolic_shape(f"n, {C}, h, w, n, r, 4")
    poly_args = (
      jax.ShapeDtypeStruct(poly[:4], np.float32),
      jax.ShapeDtypeStruct(poly[4:], np.float32),
    )
    artifacts = {
      f"{name}_fwd": (fwd, (x, rows), [(x, rows)]),
      f"{name}_grad": (grad, (x, boxes), [(x, boxes)]),
      f"{name}_poly": (
        fwd,
        poly_args,
        [_inputs(100 + 10 * i + j, *s)[:2] for j, s in enumerate(POLY_SHAPES)],
      ),
    }
    for key, (fn, spec, calls) in artifacts.items():
      exported = jax.export.export(jax.jit(fn), platforms=("cpu", "cuda"), disabled_checks=checks)(
        *spec
      )
      (out / f"{key}.bin").write_bytes(exported.serialize())
      for c, args in enumerate(calls):
        for a, v in enumerate(args):
          data[f"{key}.{c}.arg{a}"] = v
        for o, v in enumerate(jax.tree.leaves(jax.jit(fn)(*args))):
          data[f"{key}.{c}.out{o}"] = np.asarray(v)
      manifest["artifacts"][key] = {"calls": len(calls), "in_avals": str(exported.in_avals)}
      print("wrote", key, exported.in_avals, flush=True)
  np.savez_compressed(out / "data.npz", **data)
  (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


class Unreadable(Exception):
  """This jax cannot deserialize the artifact (a newer serialization)."""


def _deserialize(blob: bytes, reverse: bool):
  try:
    exported = jax.export.deserialize(bytearray(blob))
    exported.mlir_module()  # the StableHLO is read lazily: read it here
    return exported
  except Exception as e:
    if reverse and (
      "deserialize StableHLO" in str(e) or "expired" in str(e) or "serialization version" in str(e)
    ):
      raise Unreadable(f"{type(e).__name__}: {str(e).splitlines()[0]}") from e
    raise


def check(src: pathlib.Path, ops=None, reverse=False) -> list[str]:
  """Deserializes and runs every artifact in src; raises AssertionError on a
  difference (Unreadable when `reverse` and this jax cannot read them).
  Returns the artifact names checked."""
  manifest = json.loads((src / "manifest.json").read_text())
  gpu = jax.default_backend() == "gpu"
  checked = []
  with np.load(src / "data.npz") as npz:
    data = {k: npz[k] for k in npz.files}
  for key, info in sorted(manifest["artifacts"].items()):
    if ops is not None and key.rsplit("_", 1)[0] not in ops:
      continue
    exported = _deserialize((src / f"{key}.bin").read_bytes(), reverse)
    for c in range(info["calls"]):
      args = [data[f"{key}.{c}.arg{a}"] for a in range(2)]
      outs = jax.tree.leaves(exported.call(*args))
      assert len(outs) == sum(k.startswith(f"{key}.{c}.out") for k in data), key
      for o, got in enumerate(outs):
        want = data[f"{key}.{c}.out{o}"]
        assert got.shape == want.shape, (key, got.shape, want.shape)
        if gpu:  # a GPU backward sums with atomics; its forward is the CPU's to rounding
          np.testing.assert_allclose(
            np.asarray(got),
            want,
            rtol=1e-5,
            atol=1e-5 * float(np.abs(want).max(initial=1.0)),
            err_msg=f"{key} call {c} output {o}",
          )
        else:
          np.testing.assert_array_equal(np.asarray(got), want, err_msg=f"{key} call {c} output {o}")
    checked.append(key)
    print(
      f"ok {key} (written with jax {manifest['jax']}, jax_roi {manifest['jax_roi']};"
      f" run with jax {jax.__version__})",
      flush=True,
    )
  return checked


if __name__ == "__main__":
  mode, where = sys.argv[1], pathlib.Path(sys.argv[2])
  if mode == "write":
    write(where)
  elif mode in ("check", "check-reverse"):
    try:
      names = check(where, reverse=mode == "check-reverse")
    except Unreadable as e:
      written = json.loads((where / "manifest.json").read_text())["jax"]
      print(
        f"NOT SUPPORTED BY JAX: jax {jax.__version__} cannot read what jax {written}"
        f" serialized ({e}); jax promises this only within its forward-compatibility"
        " window (weeks)"
      )
      sys.exit(0)
    assert names, f"no artifact in {where}"
    print(f"ALL OK ({len(names)} artifacts)")
  else:
    sys.exit(f"unknown mode {mode!r}: write or check")
