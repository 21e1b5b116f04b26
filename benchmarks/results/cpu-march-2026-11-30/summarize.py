"""Tables of README.md from runs/*.json: per case, the median and the best of
the five interleaved rounds of each build."""
import json
import pathlib
import statistics

HERE = pathlib.Path(__file__).parent
V = ["native", "x86-64-v3", "x86-64-v2"]
rows: dict = {}
for v in V:
  for r in (1, 2, 3, 4, 5):
    for x in json.loads((HERE / "runs" / f"{v}-{r}.json").read_text())["results"]:
      key = (x["case"].split(" K=")[0], x["layout"], x["pass"])
      rows.setdefault(key, {}).setdefault(v, []).append(x["median_ms"]["jax_roi"])
for name, stat in (("median", statistics.median), ("best", min)):
  print(f"\n{name} of 5 rounds, ms (v2 / native, v3 / native)\n")
  print("| case | layout | pass | native | x86-64-v3 | x86-64-v2 | v2 / native | v3 / native |")
  print("|---|---|---|---:|---:|---:|---:|---:|")
  ratios = []
  for key, t in rows.items():
    m = {v: stat(t[v]) for v in V}
    ratios.append(m["x86-64-v2"] / m["native"])
    print(f"| {key[0]} | {key[1]} | {key[2]} | {m['native']:.0f} | {m['x86-64-v3']:.0f} |"
          f" {m['x86-64-v2']:.0f} | {m['x86-64-v2'] / m['native']:.2f}x |"
          f" {m['x86-64-v3'] / m['native']:.2f}x |")
  print(f"\ngeometric mean of v2 / native: {statistics.geometric_mean(ratios):.2f}x")
