"""Compares every op on the GPU against the CPU, through the public API:
roi_pool, roi_align (avg and max, fixed and adaptive sampling, aligned or
not) and multi_scale_roi_align, in every feature dtype (float32, float16,
bfloat16, float64), both layouts (NCHW, NHWC) and both box formats
(indexed (K, 5) rows, batched (N, R, 4) boxes), in both box orders (xyxy,
yxyx), hostile rows included (NaN boxes, out-of-range image indices).

Forward outputs must be identical (the kernels share the <op>_math.h headers and both
sides compile without FMA contraction); the feature and box gradients (of
sum(out * cotangent)) equal to float rounding, because the GPU backward
sums with atomics in another order; with deterministic=True (the
*_deterministic cases) the feature gradient must be bit-identical too. NaN
positions must agree too.

  JAX_PLATFORMS=cuda,cpu python tools/gpu_compare.py            # the matrix below
  ... --all-combinations     # box format x box order crossed (twice the cases)
  ... --small                # one tiny case (for compute-sanitizer)
  ... --dtypes float32 --ops roi_align multi_scale --json out.json
  JAX_PLATFORMS=cpu python tools/gpu_compare.py --platform cpu   # tests this script

By default each (op, dtype, layout) runs twice: indexed rows with xyxy and
batched boxes with yxyx, so every format and order is covered.
Exit status: 0 if every case agrees, 1 otherwise, 2 if there is no GPU.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)  # float64 cases; explicit dtypes elsewhere

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jax_roi  # noqa: E402

SCALES = (0.25, 0.125, 0.0625)  # multi_scale: three FPN levels


def _align(**kw):
  return lambda x, r, **k: jax_roi.roi_align(x, r, (7, 5), spatial_scale=0.25, **kw, **k)


def _ps_size(x, kw):
  """(7, 5) when the channels divide by 35, else (1, 1)."""
  c = x.shape[1] if kw.get("layout", "NCHW") == "NCHW" else x.shape[3]
  return (7, 5) if c % 35 == 0 else (1, 1)


OPS = {
  "roi_pool": lambda x, r, **kw: jax_roi.roi_pool(x, r, (7, 5), spatial_scale=0.25, **kw),
  "roi_align": _align(sampling_ratio=2, aligned=True),
  "roi_align_adaptive": _align(sampling_ratio=0, aligned=False),
  "roi_align_max": _align(sampling_ratio=2, mode="max"),
  "roi_align_max_adaptive": _align(sampling_ratio=0, aligned=True, mode="max"),
  "multi_scale": lambda xs, r, **kw: jax_roi.multi_scale_roi_align(
    list(xs),
    r,
    (7, 5),
    spatial_scales=SCALES,
    sampling_ratio=2,
    canonical_scale=56,
    canonical_level=4,
    **kw,
  ),
  # Position-sensitive: (7, 5) bins read C / 35 channels each (features
  # whose C is not a multiple of 35 use the 1x1 form below).
  "ps_roi_pool": lambda x, r, **kw: jax_roi.ps_roi_pool(x, r, _ps_size(x, kw), 0.25, **kw),
  "ps_roi_align": lambda x, r, **kw: jax_roi.ps_roi_align(x, r, _ps_size(x, kw), 0.25, 0, **kw),
}
# roi_align_rotated: oriented boxes (no box order: the rows are [index, cx,
# cy, w, h, angle]). Its forward is compared to float rounding, not bit for
# bit: the GPU's cosf/sinf (cos/sin) may differ from the host libm's by an
# ulp or two, which moves the samples.
OPS["roi_align_rotated"] = lambda x, r, box_order=None, **kw: jax_roi.roi_align_rotated(
  x, r, (7, 5), 0.25, 0, **kw
)
INEXACT_FORWARD = {"roi_align_rotated"}
OPS["prroi_pool"] = lambda x, r, **kw: jax_roi.prroi_pool(x, r, (7, 5), 0.25, **kw)
# deterministic=True: the GPU backward follows the CPU's summation order
# without atomics, so its feature gradient must equal the CPU's bit for bit.
for _name in ("roi_pool", "roi_align", "roi_align_max_adaptive", "multi_scale"):
  OPS[_name + "_deterministic"] = lambda x, r, _op=OPS[_name], **kw: _op(
    x, r, deterministic=True, **kw
  )
EXACT_FEATURE_GRAD = {name for name in OPS if name.endswith("_deterministic")}


def rotated_boxes(rng, n, k, h, w):
  """(n * k, 5) oriented boxes [cx, cy, w, h, degrees], hostile rows included."""
  centre = rng.uniform(-20, 4 * max(h, w), (n * k, 2))
  size = rng.uniform(-5, 3 * max(h, w), (n * k, 2))
  angle = rng.uniform(-360, 360, (n * k, 1))
  boxes = np.concatenate([centre, size, angle], 1)
  boxes[::7] = np.nan
  boxes[3::11, 4] = np.inf
  return boxes


DTYPES = ("float32", "float16", "bfloat16", "float64")
LAYOUTS = ("NCHW", "NHWC")
FORMATS = (("indexed", "xyxy"), ("batched", "yxyx"))
ALL_FORMATS = tuple(itertools.product(("indexed", "batched"), ("xyxy", "yxyx")))


def case(rng, op, layout, fmt, order, dtype, n, c, h, w, k):
  """Features (one array, or the levels of multi_scale), RoIs in the
  format/order asked for, in float32 (float64 with float64 features)."""

  def level(hh, ww):
    x = rng.standard_normal((n, c, hh, ww)).astype(dtype)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if layout == "NHWC" else x

  if op.startswith("multi_scale"):
    x = tuple(level(-(-h // 2**i), -(-w // 2**i)) for i in range(len(SCALES)))
  else:
    x = level(h, w)
  x1 = rng.uniform(-20, 4 * w, (n * k, 1))
  y1 = rng.uniform(-20, 4 * h, (n * k, 1))
  wh = rng.uniform(-5, 3 * max(h, w), (n * k, 2))
  boxes = np.concatenate([x1, y1, x1 + wh[:, :1], y1 + wh[:, 1:]], 1)
  boxes[::7] = np.nan  # hostile rows
  boxes[3::11, 2] = np.inf
  if op == "roi_align_rotated":
    boxes = rotated_boxes(rng, n, k, h, w)
  elif order == "yxyx":
    boxes = boxes[:, [1, 0, 3, 2]]
  if fmt == "indexed":
    index = rng.integers(-1, n + 1, (n * k, 1)).astype(np.float64)  # some out of range
    index[1:3] = 0  # never all padding (the --small case has 4 rows)
    rois = np.concatenate([index, boxes], 1)
  else:
    rois = boxes.reshape(n, k, boxes.shape[1])
  return x, rois.astype(np.float64 if dtype == np.float64 else np.float32)


def run(op, x, rois, layout, order, device):
  """Forward output and the gradients w.r.t. features and rois of
  sum(out * cotangent), all on `device`, as float64 numpy arrays."""
  x, rois = jax.device_put((x, rois), device)
  f = lambda x, r: OPS[op](x, r, layout=layout, box_order=order, implementation="ffi")

  # The cotangent is made on the host: the same bits on both devices (a
  # device's cos may differ in the last bit, which would hide or fake a
  # difference of the deterministic gradients).
  shape = jax.eval_shape(f, x, rois)
  cot = jax.device_put(
    np.cos(np.arange(shape.size, dtype=np.float32)).reshape(shape.shape).astype(shape.dtype), device
  )

  @jax.jit
  def both(x, r, cot):
    out, vjp = jax.vjp(f, x, r)
    return out, vjp(cot)

  out, (gx, gr) = both(x, rois, cot)
  assert out.devices() == {device}, (out.devices(), device)
  flat = lambda t: np.concatenate([np.asarray(a, np.float64).ravel() for a in jax.tree.leaves(t)])
  return flat(out), flat(gx), flat(gr)


def grad_error(g, c):
  """Largest |g - c| / (1 + |c|), and whether the NaN positions agree."""
  same_nan = np.array_equal(np.isnan(g), np.isnan(c))
  g, c = np.nan_to_num(g), np.nan_to_num(c)
  err = float(np.max(np.abs(g - c) / (1 + np.abs(c)))) if c.size else 0.0
  return err, same_nan


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--small", action="store_true", help="one tiny float32 case")
  parser.add_argument("--ops", nargs="+", choices=list(OPS), default=list(OPS))
  parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES))
  parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
  parser.add_argument(
    "--all-combinations",
    action="store_true",
    help="cross box format and box order (default: two pairs)",
  )
  parser.add_argument("--json", help="write every case's result to this file")
  parser.add_argument(
    "--platform",
    default="cuda",
    help="the platform under test (default: cuda; 'cpu' compares the CPU "
    "with itself, to test this script on a machine without a GPU)",
  )
  args = parser.parse_args()
  try:
    gpu = jax.devices(args.platform)[0]
  except RuntimeError as e:
    print(f"gpu_compare: no CUDA device ({e}); run with JAX_PLATFORMS=cuda,cpu on a GPU machine")
    sys.exit(2)
  cpu = jax.devices("cpu")[0]
  from jax_roi._core import extension

  print(
    f"GPU: {gpu.device_kind}; jax {jax.__version__}; jax_roi {jax_roi.__version__}, "
    f"CUDA kernels: {extension.WITH_CUDA}"
  )
  if args.small:
    size = (1, 3, 9, 11, 4)
    grid = [
      ("roi_align", "NCHW", ("indexed", "xyxy"), "float32"),
      ("roi_pool", "NCHW", ("indexed", "xyxy"), "float32"),
      ("roi_align_deterministic", "NHWC", ("batched", "yxyx"), "float32"),
      ("roi_pool_deterministic", "NHWC", ("indexed", "xyxy"), "float32"),
      ("multi_scale_deterministic", "NCHW", ("indexed", "xyxy"), "float32"),
    ]
  else:
    size = (2, 64, 50, 68, 200)
    formats = ALL_FORMATS if args.all_combinations else FORMATS
    grid = list(itertools.product(args.ops, args.layouts, formats, args.dtypes))
  failures = 0
  results = []
  rng = np.random.default_rng(0)
  start = time.perf_counter()
  for op, layout, (fmt, order), dtype in grid:
    t = time.perf_counter()
    np_dtype = jnp.dtype(dtype).type
    x, rois = case(rng, op, layout, fmt, order, np_dtype, *size)
    out_g, gx_g, gr_g = run(op, x, rois, layout, order, gpu)
    out_c, gx_c, gr_c = run(op, x, rois, layout, order, cpu)
    same = np.array_equal(out_g, out_c, equal_nan=True)
    mismatches = int(np.sum(~((out_g == out_c) | (np.isnan(out_g) & np.isnan(out_c)))))
    tol = 1e-5 if dtype in ("float32", "float64") else 2e-2
    gx_err, gx_nan = grad_error(gx_g, gx_c)
    gr_err, gr_nan = grad_error(gr_g, gr_c)
    nonzero = bool(np.any(np.nan_to_num(gx_c) != 0))  # else the comparison proves little
    if op in EXACT_FEATURE_GRAD and not np.array_equal(gx_g, gx_c, equal_nan=True):
      gx_err = max(gx_err, float("inf"))  # must be bit-identical
    if op in INEXACT_FORWARD:
      # The sample positions differ by an ulp or so (cosf/sinf): the box
      # gradient, a sum of value differences over those positions, moves
      # by more than float32 rounding of one sum.
      tol = max(tol, 1e-4)
      if not same:
        out_err, out_nan = grad_error(out_g, out_c)
        same = out_nan and out_err <= tol
    ok = same and gx_nan and gr_nan and gx_err <= tol and gr_err <= tol and nonzero
    failures += not ok
    results.append(
      dict(
        op=op,
        layout=layout,
        format=fmt,
        box_order=order,
        dtype=dtype,
        ok=ok,
        forward_identical=same,
        forward_mismatches=mismatches,
        feature_grad_error=gx_err,
        box_grad_error=gr_err,
        nan_positions_agree=gx_nan and gr_nan,
        tolerance=tol,
        seconds=round(time.perf_counter() - t, 2),
      )
    )
    print(
      f"{'OK  ' if ok else 'FAIL'} {op:22s} {layout} {fmt:7s} {order} {dtype:8s} "
      f"forward identical: {same}"
      f"{'' if same else f' ({mismatches} of {out_c.size} differ)'}, "
      f"feature grad {gx_err:.1e}, box grad {gr_err:.1e}"
      f"{'' if gx_nan and gr_nan else ', NaN positions differ'}"
      f"{'' if nonzero else ', feature gradient all zero'}",
      flush=True,
    )
  seconds = time.perf_counter() - start
  print(
    f"gpu_compare: {len(grid) - failures}/{len(grid)} cases agree in {seconds:.0f} s:",
    "FAILED" if failures else "all equal",
  )
  if args.json:
    with open(args.json, "w") as f:
      json.dump(
        dict(
          gpu=gpu.device_kind,
          jax=jax.__version__,
          seconds=seconds,
          failures=failures,
          cases=results,
        ),
        f,
        indent=1,
      )
  sys.exit(1 if failures else 0)


if __name__ == "__main__":
  main()
