"""jax_roi benchmark suite.

Runs named workloads and prints, per op, layout, dtype and pass (forward;
forward+backward = the value and feature gradient of sum(out * cotangent)),
the median time of jax_roi's kernels and the ratios against baselines run in
the same process on the same inputs: jax_roi's pure-JAX implementation
(implementation="xla") and, when importable, torchvision.ops. A roofline
column gives the minimum bytes the op must move (features read once, output
written once; for forward+backward also the cotangent read and the feature
gradient written) over the time, as a fraction of a copy bandwidth measured
in the same run. Writes the table as Markdown and JSON and draws a PNG chart
of the ratios.

  python benchmarks/run.py                       # CPU suite -> benchmarks/out/
  python benchmarks/run.py --smoke               # seconds: every code path, tiny shapes
  python benchmarks/run.py --device gpu --workloads mask-rcnn-b8 --dtypes float32 bfloat16
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field

import numpy as np

# How each benchmarked op is called on a Case: (jax_roi call, torchvision
# call). Adding an op to the benchmarks is one entry here plus its workloads.
OPS = {
  "roi_pool": (
    lambda jax_roi, x, r, case, **kw: jax_roi.roi_pool(
      x, r, case.output, spatial_scale=case.scale, **kw
    ),
    lambda tv_ops, x, r, case: tv_ops.roi_pool(x, r, case.output, case.scale),
  ),
  "roi_align": (
    lambda jax_roi, x, r, case, **kw: jax_roi.roi_align(
      x,
      r,
      case.output,
      spatial_scale=case.scale,
      sampling_ratio=case.sampling_ratio,
      aligned=case.aligned,
      **kw,
    ),
    lambda tv_ops, x, r, case: tv_ops.roi_align(
      x, r, case.output, case.scale, case.sampling_ratio, case.aligned
    ),
  ),
  # Position-sensitive ops (R-FCN): features have C_out * output**2 channels.
  "ps_roi_pool": (
    lambda jax_roi, x, r, case, **kw: jax_roi.ps_roi_pool(x, r, case.output, case.scale, **kw),
    lambda tv_ops, x, r, case: tv_ops.ps_roi_pool(x, r, case.output, case.scale),
  ),
  "ps_roi_align": (
    lambda jax_roi, x, r, case, **kw: jax_roi.ps_roi_align(
      x, r, case.output, case.scale, case.sampling_ratio, **kw
    ),
    lambda tv_ops, x, r, case: tv_ops.ps_roi_align(
      x, r, case.output, case.scale, case.sampling_ratio
    ),
  ),
}
OPS["roi_align_rotated"] = (  # detectron2's ROIAlignRotated; no torchvision baseline
  lambda jax_roi, x, r, case, **kw: jax_roi.roi_align_rotated(
    x, r, case.output, case.scale, case.sampling_ratio, aligned=case.aligned, **kw
  ),
  None,
)
OPS["prroi_pool"] = (  # IoU-Net's / mmcv's PrRoIPool; no torchvision baseline
  lambda jax_roi, x, r, case, **kw: jax_roi.prroi_pool(x, r, case.output, case.scale, **kw),
  None,
)


@dataclass(frozen=True)
class Case:
  op: str  # a key of OPS
  features: tuple  # NCHW shape
  image: tuple  # input image (H, W) the boxes live in
  scale: float
  output: int
  rois: int
  sampling_ratio: int = 2
  aligned: bool = False
  label: str = ""


WORKLOADS = {
  # VGG16 conv5 of a ~600x800 image, Fast/Faster R-CNN RoI head.
  "faster-rcnn": [
    Case("roi_pool", (1, 512, 38, 50), (608, 800), 1 / 16, 7, 128, label="K=128"),
    Case("roi_pool", (1, 512, 38, 50), (608, 800), 1 / 16, 7, 300, label="K=300"),
    # The same head with Precise RoI Pooling (IoU-Net), against its pure-JAX version.
    Case("prroi_pool", (1, 512, 38, 50), (608, 800), 1 / 16, 7, 300, label="prroi K=300"),
  ],
  # FPN P2 of two 800x1216 images: the box head and the mask head.
  "mask-rcnn": [
    Case(
      "roi_align",
      (2, 256, 200, 304),
      (800, 1216),
      1 / 4,
      7,
      1024,
      2,
      True,
      label="box head 7x7 K=1024",
    ),
    Case(
      "roi_align",
      (2, 256, 200, 304),
      (800, 1216),
      1 / 4,
      14,
      256,
      2,
      True,
      label="mask head 14x14 K=256",
    ),
  ],
  "adaptive": [
    Case(
      "roi_align",
      (2, 256, 200, 304),
      (800, 1216),
      1 / 4,
      7,
      1024,
      0,
      True,
      label="sampling_ratio=0 K=1024",
    ),
  ],
  "mask-rcnn-b8": [
    Case(
      "roi_align",
      (8, 256, 200, 304),
      (800, 1216),
      1 / 4,
      7,
      8 * 512,
      2,
      True,
      label="batch 8, K=8x512",
    ),
  ],
  # R-FCN head: ResNet conv5 of a ~600x800 image, 7x7 bins x 21 classes
  # (1029 position-sensitive score maps), 300 proposals.
  "r-fcn": [
    Case("ps_roi_pool", (1, 1029, 38, 50), (608, 800), 1 / 16, 7, 300, label="K=300"),
    Case(
      "ps_roi_align",
      (1, 1029, 38, 50),
      (608, 800),
      1 / 16,
      7,
      300,
      2,
      label="K=300 sampling_ratio=2",
    ),
  ],
  # DOTA-like aerial images: a 1024x1024 image at stride 8, 2000 oriented
  # proposals, detectron2's defaults (aligned, adaptive sampling) and sr=2.
  "dota": [
    Case(
      "roi_align_rotated",
      (1, 256, 128, 128),
      (1024, 1024),
      1 / 8,
      7,
      2000,
      2,
      True,
      label="rotated 7x7 K=2000 sr=2",
    ),
    Case(
      "roi_align_rotated",
      (1, 256, 128, 128),
      (1024, 1024),
      1 / 8,
      7,
      2000,
      0,
      True,
      label="rotated 7x7 K=2000 adaptive",
    ),
  ],
  "smoke": [
    Case("roi_pool", (1, 8, 12, 16), (192, 256), 1 / 16, 3, 5, label="smoke"),
    Case("roi_align", (2, 8, 12, 16), (48, 64), 1 / 4, 3, 6, 2, True, label="smoke"),
    Case("roi_align", (2, 8, 12, 16), (48, 64), 1 / 4, 3, 6, 0, True, label="smoke adaptive"),
    Case("ps_roi_pool", (1, 18, 12, 16), (192, 256), 1 / 16, 3, 5, label="smoke"),
    Case("ps_roi_align", (2, 18, 12, 16), (48, 64), 1 / 4, 3, 6, 0, label="smoke adaptive"),
    Case(
      "roi_align_rotated", (2, 8, 12, 16), (48, 64), 1 / 4, 3, 6, 0, True, label="smoke rotated"
    ),
    Case("prroi_pool", (2, 8, 12, 16), (48, 64), 1 / 4, 3, 6, label="smoke prroi"),
  ],
}


def proposals(rng, k, n, image):
  """(k, 5) rows like region proposals: sizes log-uniform from 16 px to 90%
  of the image, aspect ratios from 1:2 to 2:1, inside the image, images
  assigned in contiguous blocks (as a detector emits them)."""
  img_h, img_w = image
  size = np.exp(rng.uniform(np.log(16), np.log(0.9 * min(img_h, img_w)), k))
  aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0), k))
  w = np.minimum(size * np.sqrt(aspect), img_w - 1)
  h = np.minimum(size / np.sqrt(aspect), img_h - 1)
  x1 = rng.uniform(0, img_w - w)
  y1 = rng.uniform(0, img_h - h)
  index = np.repeat(np.arange(n), -(-k // n))[:k]
  return np.stack([index, x1, y1, x1 + w, y1 + h], 1).astype(np.float32)


def rotated_proposals(rng, rows):
  """(k, 6) oriented rows [index, cx, cy, w, h, angle in degrees] from (k, 5)
  proposals: their centres and sizes, angles uniform in [-90, 90)."""
  x1, y1, x2, y2 = rows[:, 1], rows[:, 2], rows[:, 3], rows[:, 4]
  angle = rng.uniform(-90, 90, len(rows))
  return np.stack([rows[:, 0], (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, angle], 1).astype(
    np.float32
  )


# Ops whose RoIs are not (k, 5) proposals: op -> fn(rng, proposals) -> rois.
ROIS = {"roi_align_rotated": rotated_proposals}


def median_seconds(fn, repeat, budget):
  """Median wall time of fn() (which must block), after one warm-up call;
  stops early when the budget (seconds) is spent, after >= 3 runs."""
  fn()
  times = []
  start = time.perf_counter()
  for i in range(repeat):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
    if i >= 2 and time.perf_counter() - start > budget:
      break
  return statistics.median(times), len(times)


def copy_bandwidth(jax, jnp, device, nbytes):
  """Bytes per second of an XLA elementwise pass (read + write) on device."""
  x = jax.device_put(jnp.ones(nbytes // 4, jnp.float32), device)
  f = jax.jit(lambda x: x * 2.0)
  seconds, _ = median_seconds(lambda: f(x).block_until_ready(), 10, 5.0)
  return 2 * nbytes / seconds


@dataclass
class Row:
  workload: str
  case: str
  op: str
  layout: str
  dtype: str
  pass_: str
  times: dict = field(default_factory=dict)  # impl -> seconds
  runs: dict = field(default_factory=dict)
  min_bytes: int = 0


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--workloads",
    nargs="+",
    default=["faster-rcnn", "mask-rcnn", "adaptive", "dota"],
    choices=list(WORKLOADS),
  )
  parser.add_argument("--layouts", nargs="+", default=["NCHW", "NHWC"], choices=["NCHW", "NHWC"])
  parser.add_argument(
    "--dtypes",
    nargs="+",
    default=["float32"],
    choices=["float32", "float16", "bfloat16", "float64"],
  )
  parser.add_argument(
    "--passes",
    nargs="+",
    default=["fwd", "fwd+bwd"],
    choices=["fwd", "fwd+bwd", "fwd+bwd+boxes"],
    help="fwd+bwd+boxes: the gradient w.r.t. the boxes too (no torchvision "
    "baseline: torchvision does not differentiate its boxes)",
  )
  parser.add_argument(
    "--impls",
    nargs="+",
    default=["jax_roi", "xla", "torchvision"],
    choices=["jax_roi", "jax_roi_det", "xla", "torchvision"],
    help="jax_roi_det: the kernels with deterministic=True (passes with a "
    "backward, ops that have the option; reported as a ratio to jax_roi)",
  )
  parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
  parser.add_argument("--repeat", type=int, default=10)
  parser.add_argument(
    "--budget",
    type=float,
    default=20.0,
    help="seconds per measurement after which fewer runs are made",
  )
  parser.add_argument(
    "--smoke", action="store_true", help="tiny shapes, one run each: checks that every path works"
  )
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out"))
  args = parser.parse_args(argv)
  if args.smoke:  # every pass
    args.workloads, args.repeat, args.budget = ["smoke"], 1, 0.0
    args.passes = ["fwd", "fwd+bwd", "fwd+bwd+boxes"]

  import jax
  import jax.numpy as jnp

  import jax_roi

  platform_name = "cuda" if args.device == "gpu" else "cpu"
  device = jax.devices(platform_name)[0]
  torch = tv_ops = None
  if "torchvision" in args.impls:
    try:
      import torch
      import torchvision.ops as tv_ops
    except Exception as e:  # noqa: BLE001 - any import failure means "absent"
      print(f"torchvision not importable ({type(e).__name__}): baseline skipped")
  torch_device = "cuda" if args.device == "gpu" else "cpu"
  if torch is not None:
    torch.set_num_threads(os.cpu_count() or 1)

  def sync_torch():
    if torch is not None and torch_device == "cuda":
      torch.cuda.synchronize()

  bandwidth = copy_bandwidth(jax, jnp, device, 16 << 20 if args.smoke else 256 << 20)
  print(
    f"jax {jax.__version__} on {device.device_kind} ({device.platform}); "
    f"copy bandwidth {bandwidth / 1e9:.1f} GB/s"
  )

  rows = []
  rng = np.random.default_rng(0)
  for workload in args.workloads:
    for case in WORKLOADS[workload]:
      n, c, h, w = case.features
      feats_nchw = rng.standard_normal(case.features).astype(np.float32)
      rois = proposals(rng, case.rois, n, case.image)
      if case.op in ROIS:
        rois = ROIS[case.op](rng, rois)
      c_out = c // case.output**2 if case.op.startswith("ps_") else c  # position-sensitive
      cot_nchw = rng.standard_normal((case.rois, c_out, case.output, case.output)).astype(
        np.float32
      )
      for dtype in args.dtypes:
        for layout in args.layouts:
          feats = (
            feats_nchw
            if layout == "NCHW"
            else np.ascontiguousarray(feats_nchw.transpose(0, 2, 3, 1))
          )
          cot = (
            cot_nchw if layout == "NCHW" else np.ascontiguousarray(cot_nchw.transpose(0, 2, 3, 1))
          )
          x = jax.device_put(jnp.asarray(feats, dtype), device)
          r = jax.device_put(jnp.asarray(rois), device)
          g = jax.device_put(jnp.asarray(cot, dtype), device)
          itemsize = x.dtype.itemsize
          out_bytes = cot.size * itemsize
          for pass_ in args.passes:
            row = Row(workload, case.label, case.op, layout, dtype, pass_)
            row.min_bytes = x.size * itemsize + out_bytes
            if pass_ != "fwd":
              row.min_bytes += out_bytes + x.size * itemsize
            for impl in args.impls:
              if impl == "torchvision":
                fn = _torch_fn(
                  torch,
                  tv_ops,
                  case,
                  feats_nchw,
                  rois,
                  cot_nchw,
                  dtype,
                  pass_,
                  torch_device,
                  sync_torch,
                )
              elif impl == "jax_roi_det":
                fn = (
                  _jax_fn(
                    jax, jnp, jax_roi, case, x, r, g, layout, pass_, "ffi", deterministic=True
                  )
                  if pass_ != "fwd" and case.op in DETERMINISTIC_OPS
                  else None
                )
              else:
                fn = _jax_fn(
                  jax,
                  jnp,
                  jax_roi,
                  case,
                  x,
                  r,
                  g,
                  layout,
                  pass_,
                  "ffi" if impl == "jax_roi" else "xla",
                )
              if fn is None:
                continue
              seconds, runs = median_seconds(fn, args.repeat, args.budget)
              row.times[impl], row.runs[impl] = seconds, runs
            rows.append(row)
            print(_format_row(row, bandwidth))
            sys.stdout.flush()

  os.makedirs(args.out, exist_ok=True)
  meta = _machine(jax, device, torch, bandwidth)
  _write(rows, meta, args.out, bandwidth)


# The ops with a deterministic=True backward.
DETERMINISTIC_OPS = ("roi_pool", "roi_align")


def _jax_fn(jax, jnp, jax_roi, case, x, r, g, layout, pass_, implementation, **options):
  call = lambda jax_roi, x, r, case, **kw: OPS[case.op][0](jax_roi, x, r, case, **kw, **options)
  op = lambda x: call(jax_roi, x, r, case, layout=layout, implementation=implementation)
  if pass_ == "fwd":
    f = jax.jit(op)
  elif pass_ == "fwd+bwd":
    f = jax.jit(jax.value_and_grad(lambda x: jnp.sum((op(x) * g).astype(jnp.float32))))
  else:  # fwd+bwd+boxes
    loss = lambda x, r: jnp.sum(
      (call(jax_roi, x, r, case, layout=layout, implementation=implementation) * g).astype(
        jnp.float32
      )
    )
    f_xr = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    return lambda: jax.block_until_ready(f_xr(x, r))
  return lambda: jax.block_until_ready(f(x))


def _torch_fn(torch, tv_ops, case, feats, rois, cot, dtype, pass_, device, sync):
  if torch is None or pass_ == "fwd+bwd+boxes" or OPS[case.op][1] is None:
    return None
  tdtype = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
  }[dtype]
  if device == "cpu" and dtype == "bfloat16":
    return None  # torchvision's CPU kernels do not implement bfloat16
  x = torch.tensor(feats, dtype=tdtype, device=device)
  r = torch.tensor(rois, dtype=tdtype, device=device)
  ct = torch.tensor(cot, dtype=tdtype, device=device)
  call = OPS[case.op][1]
  op = lambda x: call(tv_ops, x, r, case)
  if pass_ == "fwd":

    def fn():
      with torch.no_grad():
        op(x)
      sync()
  else:
    x.requires_grad_(True)

    def fn():
      x.grad = None
      (op(x) * ct).sum().backward()
      sync()

  return fn


def _format_row(row, bandwidth):
  t = row.times
  parts = [f"{row.workload:12s} {row.case:26s} {row.layout} {row.dtype:8s} {row.pass_:8s}"]
  for impl in ("jax_roi", "xla", "torchvision"):
    parts.append(f"{impl} {t[impl] * 1e3:9.2f} ms" if impl in t else f"{impl} {'-':>9s}   ")
  if "jax_roi" in t:
    for impl in ("xla", "torchvision"):
      if impl in t:
        parts.append(f"{t[impl] / t['jax_roi']:7.1f}x vs {impl}")
    parts.append(f"roofline {row.min_bytes / t['jax_roi'] / bandwidth:6.1%}")
    if "jax_roi_det" in t:
      parts.append(
        f"deterministic {t['jax_roi_det'] * 1e3:9.2f} ms = "
        f"{t['jax_roi_det'] / t['jax_roi']:.2f}x jax_roi"
      )
  return "  ".join(parts)


def _machine(jax, device, torch, bandwidth):
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return {
    "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
    "device": device.device_kind,
    "platform": device.platform,
    "cpu": cpu,
    "cpu_count": os.cpu_count(),
    "python": platform.python_version(),
    "jax": jax.__version__,
    "torch": getattr(torch, "__version__", None),
    "copy_bandwidth_gbps": bandwidth / 1e9,
  }


def _write(rows, meta, out, bandwidth):
  records = []
  for row in rows:
    rec = {
      "workload": row.workload,
      "case": row.case,
      "op": row.op,
      "layout": row.layout,
      "dtype": row.dtype,
      "pass": row.pass_,
      "min_bytes": row.min_bytes,
      "median_ms": {k: v * 1e3 for k, v in row.times.items()},
      "runs": row.runs,
    }
    if "jax_roi" in row.times:
      rec["speedup"] = {k: v / row.times["jax_roi"] for k, v in row.times.items() if k != "jax_roi"}
      rec["roofline_fraction"] = row.min_bytes / row.times["jax_roi"] / bandwidth
    records.append(rec)
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"machine": meta, "results": records}, f, indent=1)

  lines = [
    f"Machine: {meta['cpu']} ({meta['cpu_count']} cores), device {meta['device']}; "
    f"jax {meta['jax']}, torch {meta['torch']}; {meta['date']}. "
    f"Copy bandwidth {meta['copy_bandwidth_gbps']:.1f} GB/s. Median times; ratios are "
    "baseline time / jax_roi time (higher is better for jax_roi).",
    "",
    "| workload | case | layout | dtype | pass | jax_roi ms | pure JAX ms | torchvision ms "
    "| vs pure JAX | vs torchvision | roofline |",
    "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|",
  ]
  for rec in records:
    ms = rec["median_ms"]
    sp = rec.get("speedup", {})
    cell = lambda d, k, fmt: fmt.format(d[k]) if k in d else "-"
    roofline = f"{rec['roofline_fraction']:.1%}" if "roofline_fraction" in rec else "-"
    lines.append(
      f"| {rec['workload']} | {rec['case']} | {rec['layout']} | {rec['dtype']} | "
      f"{rec['pass']} | {cell(ms, 'jax_roi', '{:.2f}')} | {cell(ms, 'xla', '{:.1f}')} | "
      f"{cell(ms, 'torchvision', '{:.1f}')} | {cell(sp, 'xla', '{:.1f}x')} | "
      f"{cell(sp, 'torchvision', '{:.1f}x')} | {roofline} |"
    )
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  _chart(records, meta, os.path.join(out, "speedup.png"))
  print(f"wrote {out}/results.md, results.json, speedup.png")


def _chart(records, meta, path):
  try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print("matplotlib not importable: no chart")
    return
  labels, vs_xla, vs_tv = [], [], []
  for rec in records:
    if "speedup" not in rec:
      continue
    labels.append(f"{rec['workload']} {rec['case']}\n{rec['layout']} {rec['dtype']} {rec['pass']}")
    vs_xla.append(rec["speedup"].get("xla", np.nan))
    vs_tv.append(rec["speedup"].get("torchvision", np.nan))
  if not labels:
    return
  y = np.arange(len(labels))
  fig, ax = plt.subplots(figsize=(10, 0.45 * len(labels) + 1.5))
  ax.barh(y - 0.2, vs_xla, 0.4, label="vs pure JAX (implementation='xla')")
  ax.barh(y + 0.2, vs_tv, 0.4, label="vs torchvision.ops")
  ax.set_yticks(y, labels, fontsize=7)
  ax.set_xscale("log")
  ax.axvline(1.0, color="black", linewidth=0.8)
  ax.set_xlabel("speed-up of jax_roi (baseline time / jax_roi time)")
  ax.set_title(
    f"jax_roi on {meta['device']} ({meta['cpu_count']} CPU cores), {meta['date']}", fontsize=9
  )
  ax.legend(fontsize=8)
  ax.invert_yaxis()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


if __name__ == "__main__":
  main()
