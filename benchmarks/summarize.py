"""Medians over the runs of a results folder (its runs/*/results.json, each
written by benchmarks/run.py): for each row (workload, case, layout, pass),
the median over the runs that timed it of jax_roi's time and of each
baseline's ratio (baseline time / jax_roi time, both from the same run), and
whether the median ratios meet issue 18's targets.

  python benchmarks/summarize.py benchmarks/results/cpu-2026-11-30 > medians.md
"""

from __future__ import annotations

import json
import pathlib
import statistics
import sys

BASELINES = ("torchvision", "onnxruntime", "openvino", "xla")


def main():
  if len(sys.argv) != 2:
    raise SystemExit("usage: python benchmarks/summarize.py RESULTS_FOLDER")
  runs = sorted(pathlib.Path(sys.argv[1]).glob("runs/*/results.json"))
  if not runs:
    raise SystemExit(f"no runs/*/results.json under {sys.argv[1]}")
  rows = {}
  for path in runs:
    for rec in json.loads(path.read_text())["results"]:
      key = (rec["workload"], rec["case"], rec["layout"], rec["pass"])
      rows.setdefault(key, []).append(rec)
  print(f"Medians over {len(runs)} runs ({', '.join(p.parent.name for p in runs)}).")
  print()
  print(
    "| workload | case | layout | pass | runs | jax_roi ms | vs torchvision | vs onnxruntime "
    "| vs openvino | vs pure JAX | roofline | sampled | targets missed (median ratios) |"
  )
  print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
  for (workload, case, layout, pass_), recs in rows.items():
    ms = statistics.median(r["median_ms"]["jax_roi"] for r in recs)
    ratio = {}
    for b in BASELINES:
      values = [r["speedup"][b] for r in recs if b in r.get("speedup", {})]
      if values:
        ratio[b] = statistics.median(values)
    roof = statistics.median(r["roofline_fraction"] for r in recs)
    sampled = [r["sampled_fraction"] for r in recs if "sampled_fraction" in r]
    missed = []
    if "torchvision" in ratio:
      need = 10 if layout == "NHWC" else 5
      if ratio["torchvision"] < need:
        missed.append(f"tv{need}x")
    if "xla" in ratio and ratio["xla"] < 20:
      missed.append("xla20x")
    peers = [b for b in ("torchvision", "onnxruntime", "openvino") if b in ratio]
    if pass_ == "fwd" and peers and min(ratio[b] for b in peers) <= 1:
      missed.append("peers")
    if pass_ == "fwd" and workload in ("faster-rcnn", "mask-rcnn") and roof < 0.5:
      missed.append("roof50")
    cell = lambda b: f"{ratio[b]:.1f}x" if b in ratio else "-"
    print(
      f"| {workload} | {case} | {layout} | {pass_} | {len(recs)} | {ms:.2f} | "
      f"{cell('torchvision')} | {cell('onnxruntime')} | {cell('openvino')} | {cell('xla')} | "
      f"{roof:.1%} | {statistics.median(sampled):.0%} | {', '.join(missed) or 'all met'} |"
      if sampled
      else f"| {workload} | {case} | {layout} | {pass_} | {len(recs)} | {ms:.2f} | "
      f"{cell('torchvision')} | {cell('onnxruntime')} | {cell('openvino')} | {cell('xla')} | "
      f"{roof:.1%} | - | {', '.join(missed) or 'all met'} |"
    )


if __name__ == "__main__":
  main()
