"""Time-bounded differential fuzzing of the kernels against the float64 loop
reference (tests/loop_reference.py), with hostile boxes.

Each case draws an op configuration (layout, box format and order, dtype,
spatial scale, output size, sampling ratio, aligned, mode), a small feature
map, and boxes that are mostly reasonable and partly hostile (NaN, +-inf,
1e30, inverted, zero-size, outside, padding rows with bad batch indices). It
checks the forward output and both gradients against the reference and that
every output is finite wherever the features are. Failing cases are written
to --out as .npz files with their configuration.

  python tools/fuzz.py --op roi_align --minutes 10 --out /tmp/fuzz
  python tools/fuzz.py --op all --minutes 1        # a quick smoke run

Exit status 1 if any case failed.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
import zlib
from collections.abc import Callable
from typing import NamedTuple

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
import loop_reference as ref  # noqa: E402
from helpers import (  # noqa: E402
  indexed_rois,
  random_boxes,
  random_features,
  rotated_rois,  # noqa: E402
)

import jax_roi  # noqa: E402


def draw_case(rng: np.random.Generator, op: str) -> dict:
  """A random case of `op`: the parameters every op shares, then the op's own
  (OPS[op].draw)."""
  n = int(rng.integers(1, 4))
  cfg = dict(
    op=op,
    layout=str(rng.choice(["NCHW", "NHWC"])),
    fmt=str(rng.choice(["indexed", "batched"])),
    box_order=str(rng.choice(["xyxy", "yxyx"])),
    dtype=str(rng.choice(["float32", "float64"])),
    n=n,
    c=int(rng.integers(1, 5)),
    h=int(rng.integers(1, 20)),
    w=int(rng.integers(1, 20)),
    k=int(rng.integers(0, 12)),
    spatial_scale=float(rng.choice([1.0, 0.5, 0.25, 0.0625, rng.uniform(0.05, 2.0)])),
    output_size=(int(rng.integers(1, 6)), int(rng.integers(1, 6))),
    hostile=bool(rng.random() < 0.5),
    seed=int(rng.integers(2**31)),
  )
  OPS[op].draw(rng, cfg)
  return cfg


def draw_roi_align(rng, cfg):
  cfg.update(
    sampling_ratio=int(rng.choice([-1, 0, 1, 2, 3])),
    aligned=bool(rng.random() < 0.5),
    mode=str(rng.choice(["avg", "max"])),
  )


def draw_multi_scale(rng, cfg):
  levels = int(rng.integers(1, 5))
  first = int(rng.integers(1, 4))  # the finest level's stride is 2**first
  cfg.update(
    levels=levels,
    spatial_scale=2.0**-first,
    h=int(rng.integers(2 ** (levels - 1), 18)),
    w=int(rng.integers(2 ** (levels - 1), 18)),
    canonical_scale=float(rng.choice([224.0, 32.0, 16.0, rng.uniform(4, 64)])),
    canonical_level=float(first + int(rng.integers(0, levels))),
    sampling_ratio=int(rng.choice([-1, 0, 1, 2])),
    aligned=bool(rng.random() < 0.5),
    mode="avg",
  )


def levels_of(cfg: dict, x: np.ndarray) -> list[np.ndarray]:
  """The FPN levels: x, then random maps of half the size (rounded up) each."""
  rng = np.random.default_rng(cfg["seed"] + 1)
  out = [x]
  for l in range(1, cfg["levels"]):
    h, w = -(-cfg["h"] // 2**l), -(-cfg["w"] // 2**l)
    out.append(random_features(rng, cfg["n"], cfg["c"], h, w, cfg["layout"], x.dtype))
  return out


def level_index(cfg: dict, rois: np.ndarray) -> np.ndarray:
  """torchvision's LevelMapper in the boxes' dtype, written from its formula."""
  b = rois[..., -4:]
  if cfg["box_order"] == "yxyx":
    b = b[..., [1, 0, 3, 2]]
  ct = b.dtype.type
  with np.errstate(all="ignore"):
    area = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    k = np.floor(
      ct(cfg["canonical_level"]) + np.log2(np.sqrt(area) / ct(cfg["canonical_scale"])) + ct(1e-6)
    )
  k_min = int(-np.log2(cfg["spatial_scale"]))
  k = np.where(np.isnan(k), k_min, np.clip(k, k_min, k_min + cfg["levels"] - 1))
  return (k - k_min).astype(int)


def make_inputs(cfg: dict):
  if OPS[cfg["op"]].inputs is not None:
    return OPS[cfg["op"]].inputs(cfg)
  rng = np.random.default_rng(cfg["seed"])
  x = random_features(
    rng, cfg["n"], cfg["c"], cfg["h"], cfg["w"], cfg["layout"], np.dtype(cfg["dtype"])
  )
  if cfg["fmt"] == "indexed":
    boxes = random_boxes(rng, cfg["k"], cfg["h"], cfg["w"], cfg["spatial_scale"], cfg["hostile"])
    rois = indexed_rois(rng, boxes, cfg["n"], padding=0.2 if cfg["hostile"] else 0.0)
  else:
    boxes = random_boxes(
      rng, cfg["n"] * cfg["k"], cfg["h"], cfg["w"], cfg["spatial_scale"], cfg["hostile"]
    )
    rois = boxes.reshape(cfg["n"], cfg["k"], 4)
  if cfg["box_order"] == "yxyx":
    rois = rois.copy()
    rois[..., -4:] = rois[..., -4:][..., [1, 0, 3, 2]]
  return x, rois.astype(cfg["dtype"])


NEAR_TIES = [0]  # float32 max-mode cases accepted as near ties (see check_case)


def check_case(cfg: dict) -> str | None:
  """None if the kernel agrees with the reference, else a description."""
  x, rois = make_inputs(cfg)
  f32 = cfg["dtype"] == "float32"
  tol = 2e-5 if f32 else 1e-12
  cot = np.cos(np.arange(np.prod(ref_shape(cfg)))).reshape(ref_shape(cfg)).astype(cfg["dtype"])
  return OPS[cfg["op"]].check(cfg, x, rois, cot, tol)


def expect_roi_pool(cfg, x, rois, cot):
  """(op(x, rois, **kw), reference output, feature and box gradients, whether
  the output must match exactly)."""
  # The reference takes xyxy: give it the boxes reordered.
  rois_xyxy = to_xyxy(cfg, rois)
  fn = lambda x, r, **kw: jax_roi.roi_pool(
    x,
    r,
    cfg["output_size"],
    box_order=cfg["box_order"],
    spatial_scale=cfg["spatial_scale"],
    layout=cfg["layout"],
    **kw,
  )
  expected, argmax = ref.roi_pool(
    x, rois_xyxy, cfg["output_size"], cfg["spatial_scale"], cfg["layout"]
  )
  exp_gx = ref.roi_pool_grad(x.shape, rois_xyxy, cot, argmax, layout=cfg["layout"])
  return fn, expected, exp_gx, np.zeros(rois.shape), True


def expect_roi_align(cfg, x, rois, cot):
  rois_xyxy = to_xyxy(cfg, rois)
  kw = dict(
    spatial_scale=cfg["spatial_scale"],
    layout=cfg["layout"],
    sampling_ratio=cfg["sampling_ratio"],
    aligned=cfg["aligned"],
    mode=cfg["mode"],
  )
  fn = lambda x, r, **extra: jax_roi.roi_align(
    x, r, cfg["output_size"], box_order=cfg["box_order"], **kw, **extra
  )
  expected, _ = ref.roi_align(x, rois_xyxy, cfg["output_size"], **kw)
  exp_gx, exp_gr = ref.roi_align_grad(x, rois_xyxy, cot, cfg["output_size"], **kw)
  # The permutation is its own inverse: the box gradient back in the input order.
  exact = cfg["dtype"] != "float32" and cfg["mode"] == "avg"
  return fn, expected, exp_gx, to_xyxy(cfg, exp_gr), exact


def draw_ps(rng, cfg):
  """Position-sensitive ops: C = C_out * PH * PW input channels."""
  c_out = int(rng.integers(1, 4))
  ph, pw = cfg["output_size"]
  cfg.update(c_out=c_out, c=c_out * ph * pw, sampling_ratio=int(rng.choice([-1, 0, 1, 2, 3])))


def expect_ps_roi_pool(cfg, x, rois, cot):
  rois_xyxy = to_xyxy(cfg, rois)
  fn = lambda x, r, **kw: jax_roi.ps_roi_pool(
    x,
    r,
    cfg["output_size"],
    cfg["spatial_scale"],
    box_order=cfg["box_order"],
    layout=cfg["layout"],
    **kw,
  )
  expected = ref.ps_roi_pool(x, rois_xyxy, cfg["output_size"], cfg["spatial_scale"], cfg["layout"])
  exp_gx = ref.ps_roi_pool_grad(
    x.shape, rois_xyxy, cot, cfg["output_size"], cfg["spatial_scale"], cfg["layout"]
  )
  # Exact in float64 (the reference sums in float64; float32 sums round).
  return fn, expected, exp_gx, np.zeros(rois.shape), cfg["dtype"] != "float32"


def expect_ps_roi_align(cfg, x, rois, cot):
  rois_xyxy = to_xyxy(cfg, rois)
  fn = lambda x, r, **kw: jax_roi.ps_roi_align(
    x,
    r,
    cfg["output_size"],
    cfg["spatial_scale"],
    cfg["sampling_ratio"],
    box_order=cfg["box_order"],
    layout=cfg["layout"],
    **kw,
  )
  args = (cfg["output_size"], cfg["spatial_scale"], cfg["sampling_ratio"], cfg["layout"])
  expected = ref.ps_roi_align(x, rois_xyxy, *args)
  exp_gx, exp_gr = ref.ps_roi_align_grad(x, rois_xyxy, cot, *args)
  return fn, expected, exp_gx, to_xyxy(cfg, exp_gr), cfg["dtype"] != "float32"


def check_single(expect):
  """The check of a single-map op from its expectations (expect_*)."""
  return lambda cfg, x, rois, cot, tol: check_against(
    cfg, x, rois, cot, tol, *expect(cfg, x, rois, cot)
  )


def check_against(
  cfg, x, rois, cot, tol, fn, expected, exp_gx, exp_gr, exact, box_tol=None
) -> str | None:
  f32 = cfg["dtype"] == "float32"
  out = np.asarray(fn(x, rois), np.float64)
  if out.shape != expected.shape:
    return f"shape {out.shape} != {expected.shape}"
  if not np.isfinite(out).all():
    return "non-finite output from finite features"
  if exact:
    if not np.array_equal(out, expected):
      return f"forward differs: max |d| {np.abs(out - expected).max():.3g}"
  elif not np.allclose(out, expected, rtol=tol, atol=tol):
    return f"forward differs: max |d| {np.abs(out - expected).max():.3g}"
  loss = lambda x, r: jnp.sum(fn(x, r) * cot)
  gx, gr = jax.grad(loss, argnums=(0, 1))(jnp.asarray(x), jnp.asarray(rois))
  gx, gr = np.asarray(gx, np.float64), np.asarray(gr, np.float64)
  if not np.allclose(gx, exp_gx, rtol=tol, atol=tol):
    return f"feature gradient differs: max |d| {np.abs(gx - exp_gx).max():.3g}"
  if not np.isfinite(gr).all():
    return "non-finite box gradient"
  box_tol = tol if box_tol is None else box_tol
  bad = ~np.isclose(gr, exp_gr, rtol=box_tol, atol=box_tol)
  if bad.any() and f32 and cfg.get("mode") == "max":
    # Max mode in float32 can pick another winner than the float64 reference
    # among samples within float32 rounding of each other. Accepted when the
    # pure-JAX version (an independent float32 formulation) agrees with the
    # kernel and the same case in float64 agrees with the reference.
    xla = lambda x, r: jnp.sum(fn(x, r, implementation="xla") * cot)
    gr_xla = np.asarray(jax.grad(xla, argnums=1)(jnp.asarray(x), jnp.asarray(rois)), np.float64)
    if (
      np.allclose(gr, gr_xla, rtol=tol, atol=tol) and check_case(dict(cfg, dtype="float64")) is None
    ):
      NEAR_TIES[0] += 1
      return None
  if bad.any():
    return (
      f"box gradient differs at {np.argwhere(bad)[:3].tolist()}: max |d| "
      f"{np.abs(gr - exp_gr).max():.3g}"
    )
  return None


def to_xyxy(cfg: dict, a: np.ndarray) -> np.ndarray:
  """yxyx <-> xyxy on the last four columns (an involution); xyxy unchanged."""
  if cfg["box_order"] == "xyxy":
    return a
  a = a.copy()
  a[..., -4:] = a[..., -4:][..., [1, 0, 3, 2]]
  return a


def check_multi_scale(cfg, x, rois, cot, tol) -> str | None:
  """Each RoI pooled by the reference roi_align from its torchvision level."""
  levels = levels_of(cfg, x)
  scales = [cfg["spatial_scale"] / 2**l for l in range(cfg["levels"])]
  kw = dict(sampling_ratio=cfg["sampling_ratio"], aligned=cfg["aligned"], layout=cfg["layout"])
  fn = lambda fs, r: jax_roi.multi_scale_roi_align(
    fs,
    r,
    cfg["output_size"],
    spatial_scales=scales,
    canonical_scale=cfg["canonical_scale"],
    canonical_level=cfg["canonical_level"],
    box_order=cfg["box_order"],
    **kw,
  )
  lvl = level_index(cfg, rois)
  rois_xyxy = to_xyxy(cfg, rois)
  expected = np.zeros(ref_shape(cfg))
  exp_gl = [np.zeros(f.shape) for f in levels]
  exp_gr = np.zeros(rois.shape)
  for l, f in enumerate(levels):
    mask = (lvl == l).reshape(lvl.shape + (1, 1, 1))
    out_l, _ = ref.roi_align(f, rois_xyxy, cfg["output_size"], spatial_scale=scales[l], **kw)
    expected += np.where(mask, out_l, 0)
    gl, gr = ref.roi_align_grad(
      f,
      rois_xyxy,
      np.where(mask, cot, 0).astype(cot.dtype),
      cfg["output_size"],
      spatial_scale=scales[l],
      **kw,
    )
    exp_gl[l] += gl
    exp_gr += to_xyxy(cfg, gr)
  out = np.asarray(fn(levels, rois), np.float64)
  if not np.isfinite(out).all():
    return "non-finite output from finite features"
  if cfg["dtype"] == "float64" and not np.array_equal(out, expected):
    return f"forward differs: max |d| {np.abs(out - expected).max():.3g}"
  if not np.allclose(out, expected, rtol=tol, atol=tol):
    return f"forward differs: max |d| {np.abs(out - expected).max():.3g}"
  loss = lambda fs, r: jnp.sum(fn(fs, r) * cot)
  gls, gr = jax.grad(loss, argnums=(0, 1))([jnp.asarray(f) for f in levels], jnp.asarray(rois))
  for l, (g, e) in enumerate(zip(gls, exp_gl)):
    if not np.allclose(np.asarray(g, np.float64), e, rtol=tol, atol=tol):
      return f"level {l} feature gradient differs"
  gr = np.asarray(gr, np.float64)
  if not np.allclose(gr, exp_gr, rtol=tol, atol=tol):
    return f"box gradient differs: max |d| {np.abs(gr - exp_gr).max():.3g}"
  return None


# --- roi_align_rotated -------------------------------------------------------


def draw_roi_align_rotated(rng, cfg):
  cfg.update(
    box_order="xyxy",
    sampling_ratio=int(rng.choice([-1, 0, 1, 2, 3])),
    aligned=bool(rng.random() < 0.5),
    angle_unit=str(rng.choice(["degrees", "radians"])),
    clockwise=bool(rng.random() < 0.5),
  )


def rotated_inputs(cfg: dict):
  """Features and oriented boxes; hostile cases add NaN/inf/negative sizes,
  NaN/inf/huge angles and huge centres (sizes stay small enough for the
  reference to visit every sample)."""
  rng = np.random.default_rng(cfg["seed"])
  x = random_features(
    rng, cfg["n"], cfg["c"], cfg["h"], cfg["w"], cfg["layout"], np.dtype(cfg["dtype"])
  )
  rois = rotated_rois(
    rng,
    cfg["fmt"],
    cfg["n"],
    cfg["k"],
    cfg["h"],
    cfg["w"],
    cfg["spatial_scale"] or 1.0,
    degrees=cfg["angle_unit"] == "degrees",
    padding=0.2 if cfg["hostile"] else 0.0,
  )
  if cfg["hostile"]:
    boxes = rois[..., -5:].reshape(-1, 5)
    for col, values in (
      (0, (1e30, -1e30, np.nan)),
      (1, (np.inf, -3e9)),
      (2, (np.nan, np.inf, -2.5)),
      (3, (-np.inf, -0.5, 0.0)),
      (4, (np.nan, np.inf, 1e30, -1e30, 720.5)),
    ):
      rows = rng.random(len(boxes)) < 0.06
      boxes[rows, col] = rng.choice(values, rows.sum())
    rois[..., -5:] = boxes.reshape(rois.shape[:-1] + (5,))
  return x, rois.astype(cfg["dtype"])


def check_roi_align_rotated(cfg, x, rois, cot, tol) -> str | None:
  """Forward and feature gradient against the float64 loop reference; the
  box gradient (analytic, in the kernels) against the pure-JAX version's
  (JAX autodiff or forward-mode derivatives)."""
  kw = dict(
    sampling_ratio=cfg["sampling_ratio"],
    aligned=cfg["aligned"],
    angle_unit=cfg["angle_unit"],
    clockwise=cfg["clockwise"],
  )
  fn = lambda x, r, **extra: jax_roi.roi_align_rotated(
    x, r, cfg["output_size"], cfg["spatial_scale"], layout=cfg["layout"], **kw, **extra
  )
  expected = ref.roi_align_rotated(
    x, rois, cfg["output_size"], cfg["spatial_scale"], layout=cfg["layout"], **kw
  )
  exp_gx = ref.roi_align_rotated_grad(
    x.shape, rois, cot, cfg["output_size"], cfg["spatial_scale"], layout=cfg["layout"], **kw
  )
  xla = lambda x, r: jnp.sum(fn(x, r, implementation="xla") * cot)
  exp_gr = np.asarray(jax.grad(xla, argnums=1)(jnp.asarray(x), jnp.asarray(rois)), np.float64)
  box_tol = 1e-3 if cfg["dtype"] == "float32" else 1e-8
  return check_against(cfg, x, rois, cot, tol, fn, expected, exp_gx, exp_gr, False, box_tol=box_tol)


# --- prroi_pool ---------------------------------------------------------------


def expect_prroi_pool(cfg, x, rois, cot):
  """Forward against the float64 quadrature reference; both gradients (the
  kernels' analytic ones) against the pure-JAX version's (JAX autodiff of
  the closed form)."""
  fn = lambda x, r, **kw: jax_roi.prroi_pool(
    x,
    r,
    cfg["output_size"],
    cfg["spatial_scale"],
    box_order=cfg["box_order"],
    layout=cfg["layout"],
    **kw,
  )
  expected = ref.prroi_pool(
    x, to_xyxy(cfg, rois), cfg["output_size"], cfg["spatial_scale"], cfg["layout"]
  )
  xla = lambda x, r: jnp.sum(fn(x, r, implementation="xla") * cot)
  exp_gx, exp_gr = jax.grad(xla, argnums=(0, 1))(jnp.asarray(x), jnp.asarray(rois))
  return fn, expected, np.asarray(exp_gx, np.float64), np.asarray(exp_gr, np.float64), False


class FuzzOp(NamedTuple):
  draw: Callable  # draw(rng, cfg): adds the op's own parameters to cfg
  check: Callable  # check(cfg, x, rois, cot, tol) -> None or what differs
  inputs: Callable | None = None  # inputs(cfg) -> (x, rois); None: make_inputs' boxes


# The fuzzed ops. Adding an op is one entry (its draw and check functions).
OPS = {
  "roi_pool": FuzzOp(lambda rng, cfg: None, check_single(expect_roi_pool)),
  "roi_align": FuzzOp(draw_roi_align, check_single(expect_roi_align)),
  "multi_scale": FuzzOp(draw_multi_scale, check_multi_scale),
  "ps_roi_pool": FuzzOp(draw_ps, check_single(expect_ps_roi_pool)),
  "ps_roi_align": FuzzOp(draw_ps, check_single(expect_ps_roi_align)),
}
OPS["roi_align_rotated"] = FuzzOp(draw_roi_align_rotated, check_roi_align_rotated, rotated_inputs)
OPS["prroi_pool"] = FuzzOp(lambda rng, cfg: None, check_single(expect_prroi_pool))


def ref_shape(cfg: dict) -> tuple[int, ...]:
  lead = (cfg["k"],) if cfg["fmt"] == "indexed" else (cfg["n"], cfg["k"])
  ph, pw = cfg["output_size"]
  c = cfg.get("c_out", cfg["c"])  # position-sensitive ops: C / (PH * PW) output channels
  tail = (c, ph, pw) if cfg["layout"] == "NCHW" else (ph, pw, c)
  return lead + tail


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--op", choices=[*OPS, "all"], default="all")
  parser.add_argument("--minutes", type=float, default=1.0, help="time budget per op")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("fuzz-failures"))
  args = parser.parse_args(argv)
  ops = list(OPS) if args.op == "all" else [args.op]
  summary = {}
  failures = 0
  for op in ops:
    rng = np.random.default_rng([args.seed, zlib.crc32(op.encode())])
    deadline = time.monotonic() + 60 * args.minutes
    cases = hostile = 0
    while time.monotonic() < deadline:
      cfg = draw_case(rng, op)
      cases += 1
      hostile += cfg["hostile"]
      try:
        problem = check_case(cfg)
      except Exception as e:  # a crash or an unexpected exception is a finding
        problem = f"{type(e).__name__}: {e}"
      if problem:
        failures += 1
        args.out.mkdir(parents=True, exist_ok=True)
        x, rois = make_inputs(cfg)
        name = args.out / f"{op}-{failures}.npz"
        np.savez(name, features=x, rois=rois, config=json.dumps(cfg))
        print(f"FAIL {op} {json.dumps(cfg)}: {problem} -> {name}", flush=True)
    summary[op] = dict(
      cases=cases, hostile_cases=hostile, minutes=args.minutes, float32_near_ties=NEAR_TIES[0]
    )
    NEAR_TIES[0] = 0
    print(f"{op}: {cases} cases ({hostile} with hostile boxes) in {args.minutes:g} min", flush=True)
  print(json.dumps(dict(jax=jax.__version__, failures=failures, ops=summary)))
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
