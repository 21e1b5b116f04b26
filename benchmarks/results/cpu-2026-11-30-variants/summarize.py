"""The tables of README.md from FOLDER/runs/<build>-<round>/results.json
(FOLDER: the first argument, default this folder): per row, the median over
rounds of each build's jax_roi time and of its ratio to torchvision
measured in the same run.

  python summarize.py              # runs/: before the roi_pool SSE fix
  python summarize.py roi-pool-sse # roi-pool-sse/runs/: after it"""

import json
import pathlib
import statistics
import sys

HERE = pathlib.Path(__file__).parent
if len(sys.argv) > 1:
  HERE = HERE / sys.argv[1]
BUILDS = ["baseline", "x86-64-v3", "x86-64-v4", "native"]
NAMES = {"baseline": "x86-64-v2 (wheel baseline)", "x86-64-v3": "x86-64-v3 (wheel)",
         "x86-64-v4": "x86-64-v4 (wheel)", "native": "-march=native (source build)"}
times: dict = {}
ratios: dict = {}
arch = {}
for build in BUILDS:
  for run in sorted((HERE / "runs").glob(f"{build}-*")):
    data = json.loads((run / "results.json").read_text())
    arch.setdefault(build, set()).add(data["machine"].get("jax_roi_cpu_arch"))
    for x in data["results"]:
      key = (x["workload"], x["case"], x["layout"], x["pass"])
      times.setdefault(key, {}).setdefault(build, []).append(x["median_ms"]["jax_roi"])
      tv = x.get("speedup", {}).get("torchvision")
      if tv is not None:
        ratios.setdefault(key, {}).setdefault(build, []).append(tv)
print("-march reported by each build's runs:", {b: sorted(map(str, a)) for b, a in arch.items()})
print()
print("| workload | case | layout | pass | " + " | ".join(NAMES[b] for b in BUILDS)
      + " | v2 / v4 |")
print("|---|---|---|---|" + "---:|" * (len(BUILDS) + 1))
slow = []
for key, t in times.items():
  cells = []
  for b in BUILDS:
    ms = statistics.median(t[b])
    r = ratios.get(key, {}).get(b)
    cells.append(f"{ms:.2f} ms" + (f" ({statistics.median(r):.1f}x)" if r else ""))
  v2_v4 = statistics.median(t["baseline"]) / statistics.median(t["x86-64-v4"])
  slow.append(v2_v4)
  print(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | " + " | ".join(cells)
        + f" | {v2_v4:.2f}x |")
print()
geo = lambda a, b: statistics.geometric_mean(
  statistics.median(t[a]) / statistics.median(t[b]) for t in times.values())
for a, b in (("baseline", "x86-64-v4"), ("x86-64-v3", "x86-64-v4"), ("x86-64-v4", "native"),
             ("baseline", "native")):
  print(f"geometric mean of time({a}) / time({b}) over the rows: {geo(a, b):.2f}x")
