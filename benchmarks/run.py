"""jax_roi benchmark suite.

Runs named workloads and prints, per op, layout, dtype and pass (forward;
forward+backward = the value and feature gradient of sum(out * cotangent)),
the median time of jax_roi's kernels and the ratios against baselines run in
the same process on the same inputs:

* jax_roi's pure-JAX implementation (implementation="xla");
* torchvision.ops, when importable. torchvision has NCHW kernels only: the
  NHWC rows time it on the NCHW features (as a user of it would run it);
* ONNX Runtime (MaxRoiPool, RoiAlign) and OpenVINO (ROIPooling, ROIAlign),
  when importable: CPU inference engines, so forward, float32, NCHW rows of
  roi_pool and roi_align only. Each engine row also records the largest
  absolute difference of the engine's output from jax_roi's ("agreement").

A roofline column gives the minimum bytes the op must move (features read
once, output written once; for forward+backward also the cotangent read and
the feature gradient written) over the time, as a fraction of the machine's
memory bandwidth: on the CPU the STREAM copy bandwidth (best of N; numpy's
copy and triad kernels on one thread per core, measured at the start of the
run), on the GPU an XLA elementwise pass on the device.

Each CPU row is checked against issue 18's targets: >= 10x torchvision for
NHWC rows, >= 5x for NCHW rows; >= 20x the pure-JAX version; forward rows
faster than every CPU peer timed in the same row (torchvision, ONNX Runtime,
OpenVINO); forward rows of faster-rcnn and mask-rcnn at >= 50% of the
roofline. Writes the table as Markdown and JSON and draws a PNG chart of the
ratios.

  python benchmarks/run.py                       # CPU suite -> benchmarks/out/
  python benchmarks/run.py --smoke               # seconds: every code path, tiny shapes
  python benchmarks/run.py --workloads mask-rcnn --impls jax_roi onnxruntime openvino
  python benchmarks/run.py --allocator keep      # freed memory kept (see README, "Fresh buffers")
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

# CPU inference engines timed as baselines (forward, float32, NCHW: the
# layout both take), for the ops they have (see _onnxruntime_fn, _openvino_fn).
ENGINES = ("onnxruntime", "openvino")
ENGINE_OPS = ("roi_pool", "roi_align")


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


def sampled_reads(case, rois):
  """How many (pixel, channel) values the forward reads when no cache keeps
  a pixel between reads: every window pixel of every bin (RoIPool), four
  neighbours per sample (RoIAlign), per channel it pools (the
  position-sensitive ops read C / bins channels per bin). A second bound
  beside the roofline's features-read-once: with more RoIs than fit in cache,
  these reads are the traffic. None for the ops not modelled here."""
  n, c, h, w = case.features
  out = case.output
  channels = c // out**2 if case.op.startswith("ps_") else c
  boxes = rois[:, 1:5].astype(np.float64) * case.scale
  if case.op in ("roi_pool", "ps_roi_pool"):
    start = np.floor(boxes[:, :2] + 0.5)  # round half away from zero (coordinates >= 0)
    size = np.maximum(np.floor(boxes[:, 2:] + 0.5) - start + 1, 1)
    bins = size / out
    p = np.arange(out)[None, :, None]
    lo = np.clip(np.floor(p * bins[:, None, :]) + start[:, None, :], 0, (w, h))
    hi = np.clip(np.ceil((p + 1) * bins[:, None, :]) + start[:, None, :], 0, (w, h))
    extent = np.maximum(hi - lo, 0).sum(axis=1)  # (K, 2): columns, rows over the bins
    return int((extent[:, 0] * extent[:, 1]).sum()) * channels
  if case.op in ("roi_align", "ps_roi_align", "roi_align_rotated"):
    if case.op == "roi_align_rotated":  # rows [index, cx, cy, w, h, angle]
      size = rois[:, 3:5].astype(np.float64) * case.scale
    else:
      size = boxes[:, 2:] - boxes[:, :2]
    if not case.aligned:
      size = np.maximum(size, 1.0)
    grid = (
      np.full_like(size, case.sampling_ratio)
      if case.sampling_ratio > 0
      else np.ceil(np.maximum(size, 0) / out)
    )
    samples = out * out * grid[:, 0] * grid[:, 1]
    return int(4 * samples.sum()) * channels
  return None


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


# Triad runs in blocks of this many float64 (512 KiB): a's block stays in the
# core's cache between the two ufunc passes (a = s*c, then a += b).
STREAM_BLOCK = 1 << 16


def stream_bandwidth(total_bytes, threads, repeat):
  """STREAM's copy (a[:] = b) and triad (a[:] = b + s*c) kernels in numpy.

  Three float64 arrays of total_bytes together, cut into one contiguous
  slice per thread; each thread runs the kernel on its slice (numpy releases
  the GIL inside np.copyto, np.multiply and np.add) and a kernel's time is
  the time until every thread is done. Bytes are counted as STREAM counts
  them: 2 arrays for copy, 3 for triad, no write-allocate traffic. Returns
  {"copy": (best, median), "triad": (best, median)} in bytes per second,
  best = the fastest of `repeat` runs, as STREAM reports.
  """
  from concurrent.futures import ThreadPoolExecutor

  n = total_bytes // (3 * 8)
  a, b, c = np.empty(n), np.empty(n), np.empty(n)
  edges = np.linspace(0, n, threads + 1).astype(int)
  slices = [(int(lo), int(hi)) for lo, hi in zip(edges[:-1], edges[1:])]
  scalar = 3.0

  def fill(lo, hi):
    # First touch by the thread that runs the slice: the page faults (and the
    # NUMA placement) happen here, not in the timed kernels.
    a[lo:hi], b[lo:hi], c[lo:hi] = 1.0, 2.0, 0.5

  def copy(lo, hi):
    np.copyto(a[lo:hi], b[lo:hi])

  def triad(lo, hi):
    # Whole-slice passes would read and write a twice; in cache-sized blocks
    # memory sees what STREAM's loop moves: b and c read once, a written once.
    for i in range(lo, hi, STREAM_BLOCK):
      j = min(i + STREAM_BLOCK, hi)
      np.multiply(c[i:j], scalar, out=a[i:j])
      np.add(a[i:j], b[i:j], out=a[i:j])

  times = {"copy": [], "triad": []}
  with ThreadPoolExecutor(threads) as pool:

    def timed(kernel):
      start = time.perf_counter()
      for future in [pool.submit(kernel, lo, hi) for lo, hi in slices]:
        future.result()
      return time.perf_counter() - start

    timed(fill)
    for i in range(repeat + 1):  # as STREAM: the kernels alternate; the first round is a warm-up
      for name, kernel in (("copy", copy), ("triad", triad)):
        seconds = timed(kernel)
        if i:
          times[name].append(seconds)
  if not (a[:: 1 << 12] == 2.0 + scalar * 0.5).all():  # STREAM checks its results too
    raise RuntimeError("STREAM triad computed wrong values")
  arrays = {"copy": 2, "triad": 3}
  return {
    name: (arrays[name] * n * 8 / min(t), arrays[name] * n * 8 / statistics.median(t))
    for name, t in times.items()
  }


def xla_copy_bandwidth(jax, jnp, device, nbytes):
  """Bytes per second of an XLA elementwise pass (read + write) on device:
  the GPU's bandwidth figure (host STREAM says nothing about the GPU)."""
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
  sampled_bytes: int | None = None  # forward rows: sampled_reads * itemsize + output
  agreement: dict = field(default_factory=dict)  # engine -> max |engine - jax_roi| (forward NCHW)
  targets: dict = field(default_factory=dict)  # target -> met (CPU rows; see _targets)


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
    default=["jax_roi", "xla", "torchvision", *ENGINES],
    choices=["jax_roi", "jax_roi_det", "xla", "torchvision", *ENGINES],
    help="jax_roi_det: the kernels with deterministic=True (passes with a "
    "backward, ops that have the option; reported as a ratio to jax_roi). "
    "onnxruntime, openvino: CPU engines, forward float32 NCHW roi_pool and roi_align rows only",
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
  parser.add_argument(
    "--stream-mib",
    type=int,
    default=384,
    help="MiB of the three STREAM arrays together (CPU bandwidth; --smoke: 16)",
  )
  parser.add_argument(
    "--allocator",
    default="default",
    choices=["default", "keep"],
    help="keep: tell glibc's malloc to serve every allocation from its heap and keep freed "
    "memory (mallopt: no mmap, no trim), so that each call's output buffers reuse the last "
    "call's pages instead of being mapped and zeroed afresh. What a deployment gets from "
    "MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=..., or tcmalloc / jemalloc; it applies to every "
    "implementation in the process",
  )
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out"))
  args = parser.parse_args(argv)
  if args.allocator == "keep":
    _keep_freed_memory()
  if args.smoke:  # every pass
    args.workloads, args.repeat, args.budget = ["smoke"], 1, 0.0
    args.passes = ["fwd", "fwd+bwd", "fwd+bwd+boxes"]

  # Before jax starts its threads: importing openvino forks a process.
  engines = {}  # name -> its modules
  for name in [e for e in ENGINES if e in args.impls]:
    if args.device != "cpu":
      print(f"{name}: a CPU baseline, skipped with --device {args.device}")
      continue
    try:
      engines[name] = _import_engine(name)
    except Exception as e:  # noqa: BLE001 - any import failure means "absent"
      print(f"{name} not importable ({type(e).__name__}: {e}): baseline skipped")

  import jax
  import jax.numpy as jnp

  import jax_roi
  from jax_roi._core import extension

  # jax_roi runs as users call it (implementation=None: the kernels this
  # platform picks, e.g. the CPU's roi_pool backward without an argmax),
  # so the kernels must be there: no silent pure-JAX fallback.
  if {"jax_roi", "jax_roi_det"} & set(args.impls) and not extension.AVAILABLE:
    raise SystemExit("jax_roi's compiled kernels are not importable: build the package first")

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

  bandwidth, bandwidth_record = _bandwidth(args, jax, jnp, device)
  print(
    f"jax {jax.__version__} on {device.device_kind} ({device.platform}); "
    f"{_bandwidth_text(bandwidth_record)}"
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
      reads = sampled_reads(case, rois)
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
          reference = None  # jax_roi's forward output, for the engines' agreement
          for pass_ in args.passes:
            row = Row(workload, case.label, case.op, layout, dtype, pass_)
            row.min_bytes = x.size * itemsize + out_bytes
            if pass_ != "fwd":
              row.min_bytes += out_bytes + x.size * itemsize
            elif reads is not None:
              row.sampled_bytes = reads * itemsize + out_bytes
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
              elif impl in ENGINES:
                fn = None
                if (
                  impl in engines
                  and case.op in ENGINE_OPS
                  and (layout, dtype, pass_) == ("NCHW", "float32", "fwd")
                ):
                  fn, engine_output = _engine_fn(impl, engines[impl], case, feats_nchw, rois)
                  if reference is None:
                    reference = np.asarray(
                      OPS[case.op][0](jax_roi, x, r, case, layout="NCHW", implementation="ffi")
                    )
                  # Recorded, never asserted: a baseline that disagrees is timed all the
                  # same. The engines need not agree: ONNX's MaxRoiPool does not specify
                  # how box corners and bins are rounded (ONNX Runtime's and OpenVINO's
                  # RoI pooling did match torchvision's rounding exactly on these
                  # proposals, half-pixel corners included), and OpenVINO's adaptive
                  # aligned ROIAlign gives NaN for zero-size boxes. RoIAlign with matching
                  # modes agrees to float rounding (~1e-6).
                  row.agreement[impl] = float(np.abs(engine_output() - reference).max())
              elif impl == "jax_roi_det":
                fn = (
                  _jax_fn(jax, jnp, jax_roi, case, x, r, g, layout, pass_, None, deterministic=True)
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
                  None if impl == "jax_roi" else "xla",
                )
              if fn is None:
                continue
              seconds, runs = median_seconds(fn, args.repeat, args.budget)
              row.times[impl], row.runs[impl] = seconds, runs
            if args.device == "cpu":  # issue 18's targets are CPU targets
              row.targets = _targets(row, bandwidth)
            rows.append(row)
            print(_format_row(row, bandwidth))
            sys.stdout.flush()

  os.makedirs(args.out, exist_ok=True)
  versions = {"torch": getattr(torch, "__version__", None)}
  versions.update({name: _engine_version(engines.get(name)) for name in ENGINES})
  meta = _machine(jax, device, versions, bandwidth_record, args.allocator)
  _write(rows, meta, args.out, bandwidth)


def _bandwidth(args, jax, jnp, device):
  """(bytes per second for the roofline, the machine record's fields)."""
  if args.device != "cpu":
    nbytes = 16 << 20 if args.smoke else 256 << 20
    bandwidth = xla_copy_bandwidth(jax, jnp, device, nbytes)
    return bandwidth, {
      "device_copy_gbps": bandwidth / 1e9,
      "device_copy_method": f"XLA jit(x * 2.0) on the {args.device}, {nbytes >> 20} MiB "
      "float32, read + write counted, median of 10",
      "roofline_bandwidth_gbps": bandwidth / 1e9,
    }
  threads = os.cpu_count() or 1
  nbytes = (16 if args.smoke else args.stream_mib) << 20
  repeat = 5 if args.smoke else 10
  stream = stream_bandwidth(nbytes, threads, repeat)
  return stream["copy"][0], {
    "stream_copy_gbps": stream["copy"][0] / 1e9,
    "stream_triad_gbps": stream["triad"][0] / 1e9,
    "stream_copy_median_gbps": stream["copy"][1] / 1e9,
    "stream_triad_median_gbps": stream["triad"][1] / 1e9,
    "stream_threads": threads,
    "stream_bytes": 3 * (nbytes // 24) * 8,
    "stream_method": f"numpy STREAM copy a=b and triad a=b+s*c on 3 float64 arrays of "
    f"{nbytes / 3 / 2**20:.0f} MiB, one contiguous slice per thread, best (and median) of "
    f"{repeat}; bytes as STREAM counts them (copy 2, triad 3 arrays, no write-allocate)",
    "roofline_bandwidth_gbps": stream["copy"][0] / 1e9,
  }


def _bandwidth_text(record):
  if "stream_copy_gbps" in record:
    return (
      f"STREAM ({record['stream_threads']} threads, 3 x "
      f"{record['stream_bytes'] / 3 / 2**20:.0f} MiB float64): copy "
      f"{record['stream_copy_gbps']:.1f} GB/s (median {record['stream_copy_median_gbps']:.1f}), "
      f"triad {record['stream_triad_gbps']:.1f} GB/s "
      f"(median {record['stream_triad_median_gbps']:.1f}); roofline against the copy's best"
    )
  return (
    f"device copy bandwidth {record['device_copy_gbps']:.1f} GB/s "
    "(XLA x * 2.0 on the device; the roofline's reference)"
  )


# The baselines, in table order, and the CPU peers a forward row must beat.
BASELINES = ("xla", "torchvision", *ENGINES)
CPU_PEERS = ("torchvision", *ENGINES)
# Workloads whose forward rows must reach this fraction of the roofline.
ROOFLINE_TARGET = (("faster-rcnn", "mask-rcnn"), 0.5)
# Markdown's short names of the targets.
TARGET_NAMES = {
  "vs_torchvision_10x": "tv10x",
  "vs_torchvision_5x": "tv5x",
  "vs_xla_20x": "xla20x",
  "fastest_cpu_peer": "peers",
  "roofline_50pct": "roof50",
}


def _roofline(row, bandwidth):
  return row.min_bytes / row.times["jax_roi"] / bandwidth


def _targets(row, bandwidth):
  """Issue 18's CPU targets for a row: name -> met. A target is evaluated
  only when its baseline was timed in this row. Peers are compared within
  the row: the engines only have NCHW rows; torchvision's time in an NHWC row
  is its time on the NCHW features (it has no NHWC kernels)."""
  t = row.times
  if "jax_roi" not in t:
    return {}
  mine, targets = t["jax_roi"], {}
  if "torchvision" in t:
    need = 10 if row.layout == "NHWC" else 5
    targets[f"vs_torchvision_{need}x"] = bool(t["torchvision"] / mine >= need)
  if "xla" in t:
    targets["vs_xla_20x"] = bool(t["xla"] / mine >= 20)
  if row.pass_ == "fwd":
    peers = [k for k in CPU_PEERS if k in t]
    if peers:
      targets["fastest_cpu_peer"] = all(mine < t[k] for k in peers)
    workloads, fraction = ROOFLINE_TARGET
    if row.workload in workloads:
      targets["roofline_50pct"] = bool(_roofline(row, bandwidth) >= fraction)
  return targets


def _missed(targets):
  """Markdown's cell: the short names of the targets missed."""
  if not targets:
    return "-"
  missed = [TARGET_NAMES[k] for k, met in targets.items() if not met]
  return ", ".join(missed) if missed else "all met"


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


def _import_engine(name):
  """The engine's modules, or an exception when it is not importable."""
  if name == "onnxruntime":
    import onnx  # builds the model
    import onnxruntime

    return onnx, onnxruntime
  import openvino

  return (openvino,)


def _engine_version(modules):
  return getattr(modules[-1], "__version__", None) if modules else None


def _engine_inputs(case, rois):
  """The engines' inputs after the features: (K, 5) [index, x1, y1, x2, y2]
  rows for RoI pooling; (K, 4) boxes and (K,) image indices for RoIAlign
  (int64 for ONNX; OpenVINO gets the same indices, as int32)."""
  if case.op == "roi_pool":
    return {"rois": rois}
  return {
    "rois": np.ascontiguousarray(rois[:, 1:5]),
    "batch_indices": rois[:, 0].astype(np.int64),
  }


def _engine_fn(name, modules, case, feats, rois):
  """(fn, output) for an engine: fn() runs one inference; output() runs one
  and returns its result as a numpy array."""
  if name == "onnxruntime":
    return _onnxruntime_fn(*modules, case, feats, rois)
  return _openvino_fn(*modules, case, feats, rois)


def _onnxruntime_fn(onnx, ort, case, feats, rois):
  from onnx import TensorProto, helper

  inputs = {"X": feats, **_engine_inputs(case, rois)}
  if case.op == "roi_pool":
    node = helper.make_node(
      "MaxRoiPool",
      list(inputs),
      ["Y"],
      pooled_shape=[case.output, case.output],
      spatial_scale=case.scale,
    )
  else:  # RoiAlign-16: aligned=True is "half_pixel" (a -0.5 pixel shift), False the legacy mode
    node = helper.make_node(
      "RoiAlign",
      list(inputs),
      ["Y"],
      mode="avg",
      output_height=case.output,
      output_width=case.output,
      sampling_ratio=case.sampling_ratio,
      spatial_scale=case.scale,
      coordinate_transformation_mode="half_pixel" if case.aligned else "output_half_pixel",
    )
  out_shape = (len(rois), feats.shape[1], case.output, case.output)
  graph = helper.make_graph(
    [node],
    case.op,
    [
      helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
      for k, v in inputs.items()
    ],
    [helper.make_tensor_value_info("Y", TensorProto.FLOAT, out_shape)],
  )
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)], ir_version=8)
  onnx.checker.check_model(model, full_check=True)
  options = ort.SessionOptions()
  options.intra_op_num_threads = os.cpu_count() or 1
  options.inter_op_num_threads = 1
  options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
  session = ort.InferenceSession(
    model.SerializeToString(), options, providers=["CPUExecutionProvider"]
  )
  feeds = {k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in inputs.items()}  # no copy per run
  run = lambda: session.run_with_ort_values(["Y"], feeds)
  return run, lambda: run()[0].numpy()


def _openvino_fn(ov, case, feats, rois):
  inputs = {"data": feats, **_engine_inputs(case, rois)}
  if "batch_indices" in inputs:
    inputs["batch_indices"] = inputs["batch_indices"].astype(np.int32)
  params = [ov.opset9.parameter(v.shape, v.dtype, name=k) for k, v in inputs.items()]
  if case.op == "roi_pool":
    node = ov.opset2.roi_pooling(
      *params, output_roi=[case.output, case.output], spatial_scale=case.scale, method="max"
    )
  else:
    # ROIAlign-9's modes: "half_pixel_for_nn" is x * scale - 0.5, torchvision's
    # aligned=True; "half_pixel" is (x + 0.5) * scale - 0.5, a different box;
    # "asymmetric" is x * scale with the box at least 1x1, aligned=False.
    node = ov.opset9.roi_align(
      *params,
      case.output,
      case.output,
      case.sampling_ratio,
      case.scale,
      "avg",
      aligned_mode="half_pixel_for_nn" if case.aligned else "asymmetric",
    )
  model = ov.Model([node], params, case.op)
  compiled = ov.Core().compile_model(
    model,
    "CPU",
    {
      "INFERENCE_NUM_THREADS": os.cpu_count() or 1,
      "INFERENCE_PRECISION_HINT": "f32",  # not bf16 on CPUs that have it
      "PERFORMANCE_HINT": "LATENCY",  # one stream: every thread on the one request
    },
  )
  request = compiled.create_infer_request()
  # The tensors share the arrays (no copy per run) but do not keep them
  # alive (freed arrays gave garbage boxes): run() holds them.
  arrays = tuple(inputs.values())
  for i, v in enumerate(arrays):
    request.set_input_tensor(i, ov.Tensor(v, shared_memory=True))

  def run(_arrays=arrays):
    request.infer()

  def output():
    run()
    return request.get_output_tensor(0).data.copy()

  return run, output


def _format_row(row, bandwidth):
  t = row.times
  parts = [f"{row.workload:12s} {row.case:26s} {row.layout} {row.dtype:8s} {row.pass_:8s}"]
  for impl in ("jax_roi", *BASELINES):
    if impl in t or impl in ("jax_roi", "xla", "torchvision"):  # the engines only where run
      parts.append(f"{impl} {t[impl] * 1e3:9.2f} ms" if impl in t else f"{impl} {'-':>9s}   ")
  if "jax_roi" in t:
    for impl in BASELINES:
      if impl in t:
        parts.append(f"{t[impl] / t['jax_roi']:7.1f}x vs {impl}")
    parts.append(f"roofline {_roofline(row, bandwidth):6.1%}")
    if row.sampled_bytes is not None:
      parts.append(f"sampled {row.sampled_bytes / t['jax_roi'] / bandwidth:6.1%}")
    if "jax_roi_det" in t:
      parts.append(
        f"deterministic {t['jax_roi_det'] * 1e3:9.2f} ms = "
        f"{t['jax_roi_det'] / t['jax_roi']:.2f}x jax_roi"
      )
  if row.targets:
    parts.append(f"targets missed: {_missed(row.targets)}")
  if row.agreement:
    parts.append(
      "max |engine - jax_roi|: " + ", ".join(f"{k} {v:.2g}" for k, v in row.agreement.items())
    )
  return "  ".join(parts)


def _keep_freed_memory():
  """glibc's mallopt: M_MMAP_MAX = 0 (no allocation gets its own mapping,
  so none is unmapped when freed) and M_TRIM_THRESHOLD = 2 GiB - 1 (the
  heap's free top is not given back to the OS)."""
  import ctypes

  try:
    mallopt = ctypes.CDLL(None).mallopt
  except AttributeError:
    raise SystemExit("--allocator keep needs glibc's mallopt (Linux with glibc)") from None
  m_trim_threshold, m_mmap_max = -1, -4
  if not (mallopt(m_mmap_max, 0) and mallopt(m_trim_threshold, 2**31 - 1)):
    raise SystemExit("--allocator keep: mallopt refused the settings")


def _machine(jax, device, versions, bandwidth_record, allocator):
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  from jax_roi._core import extension  # noqa: PLC0415

  return {
    "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
    # The CPU kernels' module in use (the portable wheel carries several):
    # its -march, e.g. native, x86-64-v2, x86-64-v4.
    "jax_roi_cpu_arch": extension.CPU_ARCH,
    "device": device.device_kind,
    "platform": device.platform,
    "cpu": cpu,
    "cpu_count": os.cpu_count(),
    "python": platform.python_version(),
    "jax": jax.__version__,
    "allocator": {
      "default": "the C library's default",
      "keep": "glibc mallopt M_MMAP_MAX=0 M_TRIM_THRESHOLD=2^31-1 (--allocator keep)",
    }[allocator],
    **versions,
    **bandwidth_record,
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
      "sampled_bytes": row.sampled_bytes,
      "median_ms": {k: v * 1e3 for k, v in row.times.items()},
      "runs": row.runs,
    }
    if "jax_roi" in row.times:
      rec["speedup"] = {k: v / row.times["jax_roi"] for k, v in row.times.items() if k != "jax_roi"}
      rec["roofline_fraction"] = _roofline(row, bandwidth)
      if row.sampled_bytes is not None:
        rec["sampled_fraction"] = row.sampled_bytes / row.times["jax_roi"] / bandwidth
    if row.targets:
      rec["targets"] = row.targets
    if row.agreement:
      rec["agreement"] = row.agreement
    records.append(rec)
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"machine": meta, "results": records}, f, indent=1)

  engines = ", ".join(f"{k} {meta[k]}" for k in ENGINES if meta.get(k))
  lines = [
    f"Machine: {meta['cpu']} ({meta['cpu_count']} cores), device {meta['device']}; "
    f"jax {meta['jax']}, torch {meta['torch']}{', ' + engines if engines else ''}; "
    f"{meta['date']}. {_bandwidth_text(meta)}. Memory allocator: {meta['allocator']}. "
    f"jax_roi CPU kernels: -march={meta.get('jax_roi_cpu_arch') or 'the compiler default'}. "
    "Median times; ratios are baseline time / "
    "jax_roi time (higher is better for jax_roi). torchvision runs on NCHW input in the "
    "NHWC rows too; ONNX Runtime and OpenVINO run forward, float32, NCHW only.",
    "",
    "Targets (issue 18, evaluated in CPU runs only): tv10x / tv5x = at least 10x (NHWC) / "
    "5x (NCHW) torchvision; xla20x = at least 20x pure JAX; peers = forward faster than "
    "every CPU peer in the row; roof50 = forward faster-rcnn and mask-rcnn rows at 50% of "
    "the roofline or more. roofline: the features read once and the output written once "
    "(forward+backward: also the cotangent read and the gradient written) at the bandwidth; "
    "sampled: forward rows, every sampled value read from memory (RoIPool: each window "
    "pixel of each bin; RoIAlign: four neighbours per sample; per channel) plus the output, "
    "at the bandwidth: the traffic when no cache keeps a pixel between its reads.",
    "",
    "| workload | case | layout | dtype | pass | jax_roi ms | pure JAX ms | torchvision ms "
    "| onnxruntime ms | openvino ms | vs pure JAX | vs torchvision | vs onnxruntime "
    "| vs openvino | roofline | sampled | targets missed |",
    "|---|---|---|---|---|" + "---:|" * 11 + "---|",
  ]
  for rec in records:
    ms = rec["median_ms"]
    sp = rec.get("speedup", {})
    cell = lambda d, k, fmt: fmt.format(d[k]) if k in d else "-"
    roofline = f"{rec['roofline_fraction']:.1%}" if "roofline_fraction" in rec else "-"
    sampled = f"{rec['sampled_fraction']:.1%}" if "sampled_fraction" in rec else "-"
    lines.append(
      f"| {rec['workload']} | {rec['case']} | {rec['layout']} | {rec['dtype']} | "
      f"{rec['pass']} | {cell(ms, 'jax_roi', '{:.2f}')} | {cell(ms, 'xla', '{:.1f}')} | "
      f"{cell(ms, 'torchvision', '{:.1f}')} | {cell(ms, 'onnxruntime', '{:.1f}')} | "
      f"{cell(ms, 'openvino', '{:.1f}')} | {cell(sp, 'xla', '{:.1f}x')} | "
      f"{cell(sp, 'torchvision', '{:.1f}x')} | {cell(sp, 'onnxruntime', '{:.1f}x')} | "
      f"{cell(sp, 'openvino', '{:.1f}x')} | {roofline} | {sampled} | "
      f"{_missed(rec.get('targets'))} |"
    )
  agreement = [rec for rec in records if "agreement" in rec]
  if agreement:
    lines += ["", "Agreement of the engines' outputs with jax_roi's (max absolute difference):", ""]
    for rec in agreement:
      diffs = ", ".join(f"{k} {v:.2g}" for k, v in rec["agreement"].items())
      lines.append(f"* {rec['workload']} {rec['case']} ({rec['op']}): {diffs}")
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  _chart(records, meta, os.path.join(out, "speedup.png"))
  print(f"wrote {out}/results.md, results.json, speedup.png")


CHART_SERIES = {
  "xla": "vs pure JAX (implementation='xla')",
  "torchvision": "vs torchvision.ops",
  "onnxruntime": "vs ONNX Runtime",
  "openvino": "vs OpenVINO",
}


def _chart(records, meta, path):
  try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print("matplotlib not importable: no chart")
    return
  records = [rec for rec in records if "speedup" in rec]
  series = [k for k in CHART_SERIES if any(k in rec["speedup"] for rec in records)]
  if not series:
    return
  labels = [
    f"{rec['workload']} {rec['case']}\n{rec['layout']} {rec['dtype']} {rec['pass']}"
    for rec in records
  ]
  y = np.arange(len(labels))
  height = 0.8 / len(series)
  fig, ax = plt.subplots(figsize=(10, 0.2 * len(series) * len(labels) + 1.5))
  for i, k in enumerate(series):
    ratios = [rec["speedup"].get(k, np.nan) for rec in records]
    color = f"C{list(CHART_SERIES).index(k)}"  # the same colour in every chart
    offset = (i - (len(series) - 1) / 2) * height
    ax.barh(y + offset, ratios, height, color=color, label=CHART_SERIES[k])
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
